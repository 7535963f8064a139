"""`mimo-launch -m hydra/launcher=submitit_slurm ...`: Hydra's submitit launcher plugin runs each
point as one Slurm job, every task one rank (mimo_launch/app/submitit_sweep.py).

The refusals need no Slurm (nothing is submitted); the sweeps run on the real local cluster
(marker `slurm`, conftest's `slurm_cluster`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import MIMO_LAUNCH, run_cli

PLUGIN = "hydra/launcher=submitit_slurm"


def _summary(sweep_dir: Path) -> list[dict]:
    return json.loads((sweep_dir / "sweep.json").read_text())["points"]


def test_a_cluster_that_is_not_slurm_is_refused_in_one_line(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("-m", PLUGIN, "mimo=vlm_8,single_8", f"hydra.sweep.dir={sweep_dir}",
                   cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "mimo-launch: error: hydra/launcher=submitit_slurm runs each point as a Slurm job: give "
        "a Slurm cluster config (cluster=slurm, local_slurm or your own), not cluster=local"]
    assert not sweep_dir.exists()


def test_another_launcher_plugin_is_refused_in_one_line(tmp_path):
    proc = run_cli("-m", "hydra/launcher=submitit_local", "cluster=local_slurm",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "mimo-launch: error: hydra/launcher=submitit_local is not supported: use "
        "hydra/launcher=submitit_slurm (each point a Slurm job) or none (the points run one "
        "after another from here)"]


@pytest.mark.parametrize("overrides,message", [
    (["hydra.launcher.tasks_per_node=3"],
     "hydra.launcher.nodes=1 x hydra.launcher.tasks_per_node=3 = 3 tasks but the layout's world "
     "size is 8: leave them out (they come from the layout and cluster.*)"),
    (["cluster.nodes=3"],
     "cluster.nodes=3 x cluster.tasks_per_node=4 = 12 tasks but the layout's world size is 8"),
    (["cluster.python=/opt/venv/bin/python"],
     "cluster.python=/opt/venv/bin/python: with hydra/launcher=submitit_slurm the tasks run this "
     "interpreter; leave it null"),
    (["hydra.launcher.partition=gpu"],
     "hydra.launcher.partition=gpu but cluster.partition=debug: set cluster.partition instead"),
])
def test_a_point_of_the_wrong_world_or_allocation_is_refused_before_submitting(
        tmp_path, overrides, message):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("-m", PLUGIN, "cluster=local_slurm", *overrides, f"hydra.sweep.dir={sweep_dir}",
                   cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [f"mimo-launch: error: {message}"]
    [point] = _summary(sweep_dir)
    assert point["exit_code"] == 2 and point["error"] == message
    assert not (sweep_dir / "0" / "submitit").exists()  # nothing submitted


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_each_point_is_one_job_whose_tasks_are_the_ranks(slurm_cluster, tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("-m", PLUGIN, "cluster=local_slurm", "mimo=vlm_8,single_8",
                   f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    points = _summary(sweep_dir)
    assert [(p["overrides"], p["verdict"], p["exit_code"]) for p in points] == [
        (["cluster=local_slurm", f"mimo={m}"], "passed", 0) for m in ("vlm_8", "single_8")]
    md = (sweep_dir / "sweep.md").read_text()
    assert "mimo=vlm_8 | passed | 0" in md and "mimo=single_8 | passed | 0" in md
    for num in (0, 1):
        run_dir = sweep_dir / str(num)
        report = json.loads((run_dir / "report.json").read_text())
        assert report["passed"] and report["world_size"] == 8
        hosts = report["hosts"]  # 2 nodes x 4 tasks (local_slurm), ranks in node order
        assert len(set(hosts[:4])) == len(set(hosts[4:])) == 1 and hosts[0] != hosts[4], hosts
        assert sorted(p.name for p in (run_dir / "logs").iterdir()) == [
            f"rank{r}.log" for r in range(8)]
        assert any((run_dir / "submitit").iterdir())  # the plugin's job files, per point
    assert proc.stdout.count("PASSED") == 2, proc.stdout
    assert "sweep point #1: cluster=local_slurm mimo=single_8" in proc.stdout


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_a_failing_point_makes_the_sweep_exit_1(slurm_cluster, tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("-m", PLUGIN, "cluster=local_slurm", "mimo=colocated_8",
                   "verify_against=null,vlm_8", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path,
                   timeout=280)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert [(p["verdict"], p["exit_code"]) for p in _summary(sweep_dir)] == [
        ("passed", 0), ("mismatch", 1)]
    report = json.loads((sweep_dir / "1" / "report.json").read_text())
    assert not report["passed"] and report["verify_against"] == "vlm_8"


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_a_killed_rank_leaves_no_result_and_its_point_is_a_failure_from_the_report(
        slurm_cluster, tmp_path):
    """The killed task leaves no submitit result (the plugin's launch raises): the point's code
    comes from the diagnosis rank 0 wrote to report.json."""
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("-m", PLUGIN, "cluster=local_slurm", "fault.kill_rank=3", "fault.phase=grids",
                   f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=280)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert [(p["verdict"], p["exit_code"]) for p in _summary(sweep_dir)] == [("failure", 3)]
    assert "rank(s) 3 did not arrive" in proc.stdout
    assert proc.stderr.strip() == ("mimo-launch: the job of point #0 ended without every task's "
                                   "result (UncompletedJobError); reading rank 0's report")


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_sigterm_while_a_job_runs_cancels_it_and_writes_the_summary(slurm_cluster, tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.Popen(
        [str(MIMO_LAUNCH), "-m", PLUGIN, "cluster=local_slurm", "fault.hang_rank=null,3",
         "fault.phase=grids", "timeout_s=120", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path,
        env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    log = sweep_dir / "1" / "logs" / "rank3.log"
    deadline = time.monotonic() + 200
    while not (log.exists() and "hangs" in log.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None, "rank 3 never hung"
        time.sleep(0.5)
    jobs = [p.name.split("_")[0] for p in (sweep_dir / "1" / "submitit").glob("*_submitted.pkl")]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, out + err
    assert f"cancelling job {jobs[0]}" in out
    assert [(p["verdict"], p["exit_code"]) for p in _summary(sweep_dir)] == [("passed", 0)]
    deadline = time.monotonic() + 20
    while subprocess.run(["squeue", "-h", "-j", jobs[0]], capture_output=True,
                         text=True).stdout.strip():
        assert time.monotonic() < deadline, f"job {jobs[0]} still queued"
        time.sleep(0.5)
