"""Run a bash script as if on a machine of its own: private PID, mount and network namespaces
(`unshare`), a fresh /tmp, a private HOME (also root's home in a private /etc/passwd, so SSH logins
land there), and a loopback of its own.

Why: `ray stop` (in `ray up`'s start commands, `ray down`, AutoscalingCluster.start/shutdown) kills
every Ray process it can see, `ray start` leaves an address file in /tmp/ray that other drivers on
the machine then join, and clusters want fixed ports (6379, 8265, 22). In here `ps` sees only the
script's processes, /tmp/ray is its own, and its ports are on a network stack nobody else uses, so
nothing it starts can stop, join or be joined by another Ray on the machine.

`work` (any folder, under /tmp too) is visible inside at the same path: results come back through it.
The test's interpreter folder is read-only inside, so nothing in there can change that environment.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

# Brings `lo` up in the new network namespace (SIOCGIFFLAGS / SIOCSIFFLAGS), without needing iproute2.
_LOOPBACK_UP = ("import fcntl, socket, struct; s = socket.socket(); "
                "f = struct.unpack('16sH', fcntl.ioctl(s, 0x8913, struct.pack('16sH', b'lo', 0)))[1]; "
                "fcntl.ioctl(s, 0x8914, struct.pack('16sH', b'lo', f | 1))")

# A machine of its own (also what a second "machine" inside the first runs, $DLA_MACHINE: it shares
# the first one's network). $DLA_KEEP (the work folder, the checkout, the interpreter: a CI clone may
# live under /tmp) is carried across the fresh /tmp through /mnt (a mount point that exists on
# Debian/Ubuntu; mounts made here are private to the namespace).
MACHINE = r"""
set -euo pipefail
mkdir -p /mnt
mount --rbind /tmp /mnt
mount -t tmpfs tmpfs /tmp
for keep in $DLA_KEEP; do  # what lives under the host's /tmp and must stay visible (work, repo, venv)
  case "$keep" in /tmp/*) mkdir -p "$keep" && mount --bind "/mnt/${keep#/tmp/}" "$keep" ;; esac
done
umount -l /mnt
export HOME=/tmp/home
mkdir -p "$HOME" && chmod 700 "$HOME"
sed "s#^root:\([^:]*\):0:0:\([^:]*\):[^:]*:#root:\1:0:0:\2:$HOME:#" /etc/passwd > /tmp/passwd
mount --bind /tmp/passwd /etc/passwd
cd "$DLA_WORK"
"""
PRELUDE = MACHINE + r"""
mount --bind "$DLA_RO" "$DLA_RO" && mount -o remount,bind,ro "$DLA_RO"
"$DLA_PYTHON" -c "$DLA_LOOPBACK_UP"
"""


# What Ray writes into this process's environment for itself (not settings a test chose).
_PROCESS_LOCAL = frozenset({"RAY_AUTH_MODE"})


def unavailable(*tools: str) -> str | None:
    """Why isolated runs cannot happen here (a reason to print with pytest.skip), or None."""
    if sys.platform != "linux":
        return "private namespaces need Linux"
    for tool in ("unshare", *tools):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed (.ci/run installs openssh-server and rsync with apt)"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--mount", "--net", "--kill-child",
                            "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create private namespaces here (needs root): {probe.stderr.strip()[:200]}"
    return None


def run_isolated(script: str, work: Path, timeout_s: float, env: dict[str, str] | None = None,
                 log: Path | None = None) -> subprocess.CompletedProcess:
    """Runs `script` (bash) after PRELUDE in a namespace of its own; when the script ends or times out
    every process in there dies with it (--kill-child). Output goes to `log` (default work/isolated.log)."""
    work.mkdir(parents=True, exist_ok=True)
    log = log or work / "isolated.log"
    bin_dir = str(Path(sys.executable).parent)
    keep = " ".join(str(p) for p in (work, Path(__file__).resolve().parents[1], Path(sys.prefix)))
    # A machine of its own starts with Ray's defaults: ray.init() in this process (the ray_local fixture)
    # sets RAY_AUTH_MODE=token in os.environ, and a `ray start` in here would then look for a token in
    # the private HOME, find none and refuse to start.
    inherited = {k: v for k, v in os.environ.items() if k not in _PROCESS_LOCAL}
    full_env = {**inherited, "DLA_WORK": str(work), "DLA_KEEP": keep, "DLA_PYTHON": sys.executable, "DLA_LOOPBACK_UP": _LOOPBACK_UP,
                "DLA_MACHINE": MACHINE,
                "DLA_RO": sysconfig.get_paths()["purelib"], "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
                **(env or {})}
    with open(log, "w") as out:
        return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--mount", "--net", "--kill-child",
                               "bash", "-c", PRELUDE + script], env=full_env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout_s)
