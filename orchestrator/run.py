"""Entry point: `python orchestrator/run.py lab1`, or on a cluster `ray submit cluster.yaml orchestrator/run.py lab1`.

`ray submit` uploads only this file (as ~/run.py); the project itself is installed on every node
(see cluster.yaml). Run from a checkout, the repository root is put on the path.
"""
import sys
from pathlib import Path

_root = Path(__file__).resolve().parents[1]
if (_root / "orchestrator" / "__init__.py").exists() and str(_root) not in sys.path:
    sys.path.insert(0, str(_root))

from orchestrator.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
