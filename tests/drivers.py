"""`run.py` started from a test on a busy machine.

Ray gives its own node 30 s to register with its GCS (hard-coded in ray/_private/node.py); on an
overloaded 2-core machine that start-up sometimes times out ("The current node timed out during
startup") before run.py has done anything. That failure is the machine's, not the code's under
test: a test starts the driver again (a few times), and any other failure stays a failure.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

RAY_START_TIMEOUT = "The current node timed out during startup"
ATTEMPTS = 3


def ray_did_not_start(proc: subprocess.Popen, log: Path) -> bool:
    """The driver ended because its private Ray did not come up in time."""
    return proc.poll() not in (None, 0) and log.exists() and RAY_START_TIMEOUT in log.read_text(errors="replace")


def run_to_end(start: Callable[[], subprocess.Popen], log: Path, timeout: float = 900) -> int:
    """Starts the driver (`start()` writes its output to `log`) and waits for its exit code, starting
    it again when its Ray did not come up."""
    for _ in range(ATTEMPTS):
        proc = start()
        try:
            rc = proc.wait(timeout=timeout)
        finally:
            proc.kill()
        if not ray_did_not_start(proc, log):
            return rc
    return rc
