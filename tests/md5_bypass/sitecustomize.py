"""The md5 bypass of tests/fixture_data.py for every Python process of a `run.py` under test.

Python imports `sitecustomize` at start-up from the first folder on its path that has one. A test
that starts `run.py` with this folder and the repository root on PYTHONPATH and DLA_TEST_SKIP_MD5=1
gets the bypass in the driver (its pre-flight opens the fixture files) and in every Ray worker
process, trials included: a local Ray's workers inherit the driver's environment. Nothing else
changes: without DLA_TEST_SKIP_MD5=1 this file does nothing.

The bypass is installed when `torchvision.datasets` is first imported, not here: Ray starts several
Python processes that never touch torchvision (dashboard, log monitor, ...), and importing it in
each would cost seconds of CPU on a small machine.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

WATCHED = "torchvision.datasets"  # its __init__ imports .cifar, .svhn and .utils: the modules patched


class _BypassAfterImport(importlib.abc.MetaPathFinder):
    """Finds `torchvision.datasets` as the other finders do and installs the bypass right after the
    module has run."""

    def find_spec(self, fullname, path, target=None):
        if fullname != WATCHED:
            return None
        sys.meta_path.remove(self)  # once, and no recursion in the find_spec below
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def run_then_bypass(module):
            run_module(module)
            from tests.fixture_data import install_md5_bypass

            install_md5_bypass()

        spec.loader.exec_module = run_then_bypass
        return spec


if os.environ.get("DLA_TEST_SKIP_MD5") == "1":
    if WATCHED in sys.modules:  # imported before site ran (never in practice): patch now
        from tests.fixture_data import install_md5_bypass

        install_md5_bypass()
    else:
        sys.meta_path.insert(0, _BypassAfterImport())
