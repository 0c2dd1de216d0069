"""One module per lab, each with STUDIES: list[Study] in running order (found by orchestrator.studies)."""
