"""tests/faults.py's injected failures in every Python process of a `run.py` under test: Python
imports `sitecustomize` at start-up from the first folder on its path that has one. Installed when
`orchestrator.execution` is first imported (Ray's other processes never import it); without
DLA_TEST_FAIL_STUDY or DLA_TEST_EPOCH_PACE this file does nothing."""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

WATCHED = "orchestrator.execution"


class _InstallAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != WATCHED:
            return None
        sys.meta_path.remove(self)  # once, and no recursion in the find_spec below
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def run_then_install(module):
            run_module(module)
            sys.modules[fullname] = module
            from tests.faults import install

            install()

        spec.loader.exec_module = run_then_install
        return spec


if os.environ.get("DLA_TEST_FAIL_STUDY") or os.environ.get("DLA_TEST_EPOCH_PACE"):
    sys.meta_path.insert(0, _InstallAfterImport())
