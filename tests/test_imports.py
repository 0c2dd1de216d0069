"""Layering the import-linter contracts (pyproject.toml, tests/test_architecture.py, which also
rules out import cycles) do not say: only the CLI reads argparse, and the catalogs are data (they
reach neither MLflow, the file system, nor the orchestrator's wiring). Read from the import graph
(grimp, which import-linter is built on): function-level imports count, `if TYPE_CHECKING:` ones not."""
from __future__ import annotations

import grimp
import pytest


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("orchestrator", include_external_packages=True, exclude_type_checking_imports=True)


def test_only_the_cli_reads_argparse_and_the_session_does_not_import_it(graph):
    importers = {m for m in graph.find_modules_that_directly_import("argparse") if m.startswith("orchestrator")}
    assert importers <= {"orchestrator.cli"}
    assert not graph.chain_exists(importer="orchestrator.session", imported="orchestrator.cli")


def test_catalogs_are_data(graph):
    labs = graph.find_children("orchestrator.catalog")
    assert {"orchestrator.catalog.lab1", "orchestrator.catalog.lab3", "orchestrator.catalog.lab4"} <= labs
    for lab in labs:
        imported = graph.find_modules_directly_imported_by(lab)
        assert {m for m in imported if m.startswith("orchestrator.")} == {"orchestrator.study"}, lab
        for forbidden in ("mlflow", "ray", "shutil", "os", "pathlib", "tempfile"):
            assert forbidden not in imported, f"{lab} imports {forbidden}"
