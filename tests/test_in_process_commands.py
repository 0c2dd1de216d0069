"""The "In-process:" command in each trainable module's docstring runs as written: its imports give
every name it uses and its config builds (train itself is replaced by a stub: no training here)."""
from __future__ import annotations

import importlib
import re

import pytest

MODULES = ["trainables.lab1.classifier", "trainables.lab1.transfer", "trainables.lab1.cam",
           "trainables.lab3.sentiment", "trainables.lab3.clip", "trainables.lab4.robustness"]


def in_process_command(module: str) -> str:
    doc = importlib.import_module(module).__doc__
    found = re.search(r'In-process:\s+python -c "(.*?)"\n', doc, re.S)
    assert found, f"{module}: no In-process command in its docstring"
    return " ".join(line.strip() for line in found.group(1).splitlines())


@pytest.mark.parametrize("module", MODULES)
def test_the_in_process_command_names_only_what_it_imports(module):
    *setup, last = [s.strip() for s in in_process_command(module).split(";")]
    assert f"from {module} import *" in setup
    names: dict = {}
    exec("\n".join(setup), names)
    assert callable(names["train"])
    names.update(train=lambda cfg, ctx: (cfg, ctx), print=lambda *args: None)  # no training, no output
    exec(last, names)
