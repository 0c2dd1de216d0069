"""Runs inside a private namespace (tests/isolation.py; started by tests/test_launcher.py): the
README's cluster commands through Ray's real cluster launcher, on two "machines" of this one:

- the head: this namespace, sshd on 127.0.0.1:22;
- a worker: a namespace inside it (its own processes, /tmp and HOME; the same network), sshd on
  127.0.0.2:22;
- "your machine", from which the commands run: this namespace too, with a HOME and temp folder of
  its own (/tmp/laptop), so the launcher's state files are not the head's.

    python -m tests.launcher_cluster WORK      # WORK/checkout: a git checkout of the project
    python -m tests.launcher_cluster machine IP   # (inside the worker namespace) set up a node

The nodes' "image": a python3.11 on the PATH, the project's heavy dependencies preinstalled (the
test interpreter's site-packages, less the project itself, on PYTHONPATH: there is no network in
here), pip told to stay offline. Everything else is cluster-local.yaml's own setup: the venv, the PATH line, `pip install -e`.
The config is cluster-local.yaml with the edit its header asks for (addresses, SSH user and key), plus
what two machines on one network stack need (the worker's own address and ports). What happened goes
to WORK/results.json.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import yaml

HEAD_IP, WORKER_IP = "127.0.0.1", "127.0.0.2"
LAPTOP = Path("/tmp/laptop")
SSHD = "/usr/sbin/sshd"


def sh(cmd: str | list[str], **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=isinstance(cmd, str), check=True, capture_output=True, text=True, **kw)


def keys(work: Path) -> Path:
    """A throwaway SSH key: its public half for the nodes (in WORK, seen by both), its private half on the laptop."""
    (work / "keys").mkdir(exist_ok=True)
    sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "keys" / "id_ed25519")])
    (LAPTOP / ".ssh").mkdir(parents=True, exist_ok=True)
    key = LAPTOP / ".ssh" / "id_ed25519"
    key.write_bytes((work / "keys" / "id_ed25519").read_bytes())
    key.chmod(0o600)
    return key


def machine(work: Path, ip: str) -> Path:
    """Makes this namespace a node: the image (see the module docstring) and an sshd config for `ip`."""
    home = Path.home()
    (home / ".ssh").mkdir(mode=0o700, exist_ok=True)
    (home / ".ssh" / "authorized_keys").write_text((work / "keys" / "id_ed25519.pub").read_text())
    (home / ".ssh" / "authorized_keys").chmod(0o600)
    image = home / "image-bin"
    image.mkdir(exist_ok=True)
    (image / "python3.11").symlink_to(getattr(sys, "_base_executable", sys.executable))
    # `ray` as the first `python` on the PATH runs it: after setup, the venv's (one interpreter).
    (image / "ray").write_text('#!/bin/sh\nexec python -m ray.scripts.scripts "$@"\n')
    (image / "ray").chmod(0o755)
    # The dependencies, not the project: the test interpreter's own install of it (an editable finder
    # module of the same name as the one `pip install -e ~/dla` writes) would shadow the node's.
    site = home / "image-site"
    site.mkdir(exist_ok=True)
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(("__editable__", "dla_orchestrator")):
            (site / entry.name).symlink_to(entry)
    (home / ".bashrc").write_text(
        f'export PATH="$HOME/image-bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"\n'
        f'export PYTHONPATH="{site}"\n'
        "export PIP_NO_INDEX=1 PIP_NO_BUILD_ISOLATION=0 PIP_DISABLE_PIP_VERSION_CHECK=1\n")
    sshd = Path("/tmp/sshd")
    sshd.mkdir(exist_ok=True)
    sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(sshd / "host_key")])
    (sshd / "config").write_text(
        f"ListenAddress {ip}:22\nHostKey {sshd / 'host_key'}\nPidFile {sshd / 'pid'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"UsePAM no\nStrictModes no\nAuthorizedKeysFile {home / '.ssh' / 'authorized_keys'}\n")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation folder
    return sshd / "config"


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.5)
    return False


def cluster_config(work: Path, key: Path) -> Path:
    config = yaml.safe_load((work / "checkout" / "cluster-local.yaml").read_text())
    # The edit cluster-local.yaml's header asks of every user: addresses, SSH user and key.
    config["provider"].update(head_ip=HEAD_IP, worker_ips=[WORKER_IP])
    config["auth"] = {"ssh_user": "root", "ssh_private_key": str(key)}
    # Only because both "machines" share one network stack: the worker's own address and ports.
    config["worker_start_ray_commands"][-1] += (f" --node-ip-address={WORKER_IP} --dashboard-agent-listen-port=52366"
                                                " --min-worker-port=20000 --max-worker-port=29999")
    path = work / "cluster-test.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def laptop_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTHON"))}
    (LAPTOP / "tmp").mkdir(parents=True, exist_ok=True)
    return {**env, "HOME": str(LAPTOP), "TMPDIR": str(LAPTOP / "tmp"), "RAY_TMPDIR": str(LAPTOP / "tmp"),
            "SHARED": str(work / "shared")}


def run_commands(commands: list[str], config: Path, work: Path, checks: dict[str, Any]) -> list[dict[str, Any]]:
    """The README's commands, in order, from the checkout: `cluster.yaml` is the test's config, `export
    SHARED=...` is WORK/shared, a command ending in `&` runs in the background until `kill %1`.
    Before `ray down`, `checks["interpreter"]` gets what the head's `python` is."""
    env, cwd, done, background = laptop_env(work), work / "checkout", [], None
    for command in commands:
        if command.startswith("export SHARED="):
            continue  # laptop_env sets it
        if command.startswith("ray down"):
            checks["interpreter"] = one_interpreter(config, work)
        line = command.replace("cluster.yaml", str(config))
        t0 = time.monotonic()
        if line.endswith("&"):
            background = subprocess.Popen(line[:-1], shell=True, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
            port = int(line.split("--port", 1)[1].split()[0]) if "--port" in line else None
            up = wait_for_port("127.0.0.1", port, 120) if port else True
            done.append({"command": command, "rc": 0 if up else 1, "output": "", "seconds": time.monotonic() - t0})
            continue
        if line == "kill %1":
            os.killpg(background.pid, signal.SIGTERM)  # its own session: the shell and what it started
            output = background.communicate(timeout=60)[0]
            done.append({"command": command, "rc": 0, "output": output[-3000:], "seconds": time.monotonic() - t0})
            continue
        out = subprocess.run(line, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
        log = work / f"command-{len(done)}.log"
        log.write_text(out.stdout + out.stderr)
        done.append({"command": command, "rc": out.returncode, "output": (out.stdout + out.stderr)[-6000:],
                     "log": str(log), "seconds": time.monotonic() - t0})
        if out.returncode != 0:
            break
    return done


def main(work: Path) -> None:
    results: dict[str, Any] = {}
    key = keys(work)
    sh([SSHD, "-f", str(machine(work, HEAD_IP)), "-E", "/tmp/sshd/log"])
    # The worker machine: a namespace of its own processes, /tmp and HOME, on this network.
    worker = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--mount", "--kill-child", "bash", "-c",
         os.environ["DLA_MACHINE"] + f'cd "{Path(__file__).resolve().parents[1]}" && '
         f'"$DLA_PYTHON" -m tests.launcher_cluster machine {WORKER_IP} && '
         f'exec {SSHD} -D -f /tmp/sshd/config -E "$DLA_WORK/worker-sshd.log"'])
    try:
        assert wait_for_port(HEAD_IP, 22, 60) and wait_for_port(WORKER_IP, 22, 60), "sshd did not start"
        config = cluster_config(work, key)
        commands = json.loads((work / "commands.json").read_text())
        t0 = time.monotonic()
        results["commands"] = run_commands(commands, config, work, results)
        results["total_s"] = time.monotonic() - t0
        ran = {c["command"].split()[1] for c in results["commands"] if c["command"].startswith("ray ")}
        if "down" not in ran:  # a failure stopped the list: take the cluster down anyway
            subprocess.run(["ray", "down", "-y", str(config)], env=laptop_env(work), cwd=work / "checkout",
                           capture_output=True, timeout=300)
        # Not in the README, checked here: what the nodes run, and that nothing of Ray is left.
        # (zombies are dead: this script, the namespace's first process, inherits and never reaps them)
        results["ray_processes_left"] = sh("ps -eo stat=,args= | grep -v '^Z' | grep -E '[r]aylet|[g]cs_server' "
                                           "|| true").stdout
        results["head_files"] = sorted(str(p.relative_to(Path.home())) for p in Path.home().glob("dla-runs/*"))
    finally:
        (work / "results.json").write_text(json.dumps(results, indent=1))
        worker.kill()


def one_interpreter(config: Path, work: Path) -> str:
    """What the head's `python` is and where it imports the project from (ray exec, as a user would)."""
    out = subprocess.run(["ray", "exec", str(config), "python -c 'import sys, orchestrator; "
                          "print(\"INTERPRETER\", sys.executable, orchestrator.__file__)'"],
                         env=laptop_env(work), cwd=work / "checkout", capture_output=True, text=True, timeout=300)
    return out.stdout + out.stderr


if __name__ == "__main__":
    if sys.argv[1] == "machine":
        machine(Path(os.environ["DLA_WORK"]), sys.argv[2])
    else:
        main(Path(sys.argv[1]))
