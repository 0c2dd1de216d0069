"""run.py's launch folder: the folder it starts in, except Ray's temporary copy of a job's working dir."""
from __future__ import annotations

import os

from orchestrator.launch import in_ray_package, launch_dir


def test_a_normal_folder_is_the_launch_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert launch_dir() == tmp_path and not in_ray_package(tmp_path)


def test_rays_package_folder_is_replaced_by_a_lasting_one(tmp_path, monkeypatch, capsys):
    package = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    package.mkdir(parents=True)
    monkeypatch.chdir(package)
    monkeypatch.setenv("DLA_RUNS_DIR", str(tmp_path / "runs"))
    assert in_ray_package(package)
    assert launch_dir() == tmp_path / "runs" and os.getcwd() == str(tmp_path / "runs")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(f"go to {tmp_path / 'runs'} (DLA_RUNS_DIR)")
