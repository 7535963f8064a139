"""Slurm states and edge cases on the real local cluster (marker `slurm`, see test_slurm.py):
paths Slurm would change, jobs that cannot or do not start, collecting a job later, a
wrong-sized sbatch allocation, and who is blamed when a job ends early."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_slurm import _cli, _gone, _job_id, _last_job_id

from conftest import MIMO_LAUNCH, REPO
from mimo_launch.launchers.slurm_report import blame_dead
from mimo_launch.launchers.slurm_watch import final_state
from mimo_launch.slurm_task import WARNING_SIGNAL

SBATCH_SCRIPT = REPO / "slurm" / "mimo_launch.sbatch"


def _launch_until_tasks_started(run_dir: Path, tasks: int):
    """Start `mimo-launch cluster=local_slurm` in the background; return (process, job id)
    once `tasks` tasks have written their status file."""
    proc = subprocess.Popen([str(MIMO_LAUNCH), "cluster=local_slurm", f"hydra.run.dir={run_dir}"],
                            cwd=run_dir.parent, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    job_id = _job_id(proc.stdout.readline())
    deadline = time.monotonic() + 90
    while len(list((run_dir / "status").glob("rank*.json"))) < tasks:
        assert time.monotonic() < deadline and proc.poll() is None, "the tasks never started"
        time.sleep(0.1)
    return proc, job_id


def _one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mimo-launch: error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


@pytest.mark.slurm
@pytest.mark.timeout(60)
def test_a_run_dir_slurm_would_rewrite_is_refused_before_submitting(slurm_cluster, tmp_path):
    """sbatch expanded `%x` in the log paths: the job failed at once, its logs elsewhere."""
    before = _last_job_id()
    proc = _cli("cluster=local_slurm", f"hydra.run.dir={tmp_path}/r_%x", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert _one_error_line(proc) == (
        f"mimo-launch: error: hydra.run.dir {tmp_path}/r_%x holds '%', which Slurm cannot take: "
        f"sbatch and srun expand '%' in log paths (%j, %x...); use letters, digits and "
        f"+,-./:=@_~")
    assert _last_job_id() == before and not (tmp_path / "r_%x").exists()


@pytest.mark.slurm
@pytest.mark.timeout(90)
@pytest.mark.parametrize("case", ["refused", "no controller"])
def test_a_failed_sbatch_is_one_line_exit_2_when_refused_3_when_slurm_does_not_answer(
        slurm_cluster, case, tmp_path):
    """sbatch refusing the job is bad input (exit 2); Slurm's controller not answering (a copy
    of the cluster's slurm.conf pointing at a port nobody listens on) is not (exit 3). Either
    way one line, sbatch's words once, and no job."""
    env, args = {}, ["cluster.partition=nosuch"]
    if case == "no controller":
        conf = Path(os.environ.get("MIMO_SLURM_DIR", "/tmp/mimo-slurm")) / "etc" / "slurm.conf"
        dead = re.sub(r"(?m)^SlurmctldPort=.*$", "SlurmctldPort=1", conf.read_text())
        (tmp_path / "slurm.conf").write_text(dead)
        env, args = {"SLURM_CONF": str(tmp_path / "slurm.conf")}, []
    proc = _cli("cluster=local_slurm", *args, f"hydra.run.dir={tmp_path / 'run'}",
                cwd=tmp_path, timeout=80, **env)
    line = _one_error_line(proc)
    if case == "refused":
        assert proc.returncode == 2 and "sbatch refused the job: " in line, line
        assert "nvalid partition" in line, line
    else:
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "Slurm did not answer sbatch, nothing was submitted" in line, line
        assert line.count("Unable to contact slurm controller") == 1, line
    assert "submitted job" not in proc.stdout and not (tmp_path / "run").exists()  # no trace


@pytest.mark.slurm
@pytest.mark.timeout(90)
def test_a_job_that_can_never_start_is_cancelled_with_exit_2(slurm_cluster, tmp_path):
    """8 CPUs per task on nodes of 4: Slurm keeps it PENDING (PartitionConfig) forever."""
    proc = _cli("cluster=local_slurm", "cluster.cpus_per_task=8",
                f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=80)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = _one_error_line(proc)
    assert "can never start" in line and "PartitionConfig" in line and "cancelled" in line
    job_id = _job_id(proc.stdout)
    assert f"job {job_id} PENDING (PartitionConfig)" in proc.stdout
    assert _gone(job_id, tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert not report["passed"] and "PartitionConfig" in report["failure"]


@pytest.mark.slurm
@pytest.mark.timeout(120)
def test_a_job_pending_past_its_bound_is_cancelled_with_exit_5(slurm_cluster, tmp_path):
    blocker = subprocess.run(["sbatch", "--parsable", "-N", "4", "--ntasks-per-node=4",
                              "-p", "debug", "--time=5", f"--output={tmp_path / 'b.out'}",
                              "--wrap=sleep 100"], capture_output=True, text=True,
                             check=True).stdout.strip()
    try:
        start = time.monotonic()
        proc = _cli("cluster=local_slurm", "cluster.pending_timeout_min=0.1",
                    f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=90)
        elapsed = time.monotonic() - start
    finally:
        subprocess.run(["scancel", blocker])
    assert proc.returncode == 5, proc.stdout + proc.stderr
    job_id = _job_id(proc.stdout)
    assert re.search(rf"job {job_id} PENDING \((Resources|Priority)\)", proc.stdout), proc.stdout
    line = _one_error_line(proc)
    assert re.fullmatch(rf"mimo-launch: error: job {job_id} still PENDING \(\w+\) after "
                        rf"cluster.pending_timeout_min=0.1; cancelled", line), line
    assert 6 <= elapsed < 40, elapsed
    assert _gone(job_id, tmp_path / "run")


@pytest.mark.slurm
@pytest.mark.timeout(150)
def test_collect_reports_a_job_submitted_without_waiting(slurm_cluster, tmp_path):
    """wait=false, then rank 0 dies: `mimo-launch collect` follows the job and writes the
    report, naming rank 0 and its phase (from rank 0's own status file: it wrote nothing
    else)."""
    run_dir = tmp_path / "run"
    proc = _cli("cluster=local_slurm", "wait=no", "fault.kill_rank=0", "fault.phase=grids",
                "timeout_s=20", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"run `mimo-launch collect {run_dir}`" in proc.stdout
    job_id = _job_id(proc.stdout)
    collected = _cli("collect", str(run_dir), cwd=tmp_path, timeout=120)
    assert collected.returncode == 3, collected.stdout + collected.stderr
    report = json.loads((run_dir / "report.json").read_text())
    assert report["failed_ranks"] == [0] and report["failed_phase"] == "grids", report
    assert f"slurm: job {job_id} FAILED" in report["failure"]
    assert f"last lines of {run_dir}/logs/rank0.log" in report["failure"]
    assert "fault injection: rank 0 kills itself in phase 'grids'" in report["failure"]
    again = _cli("collect", str(run_dir), cwd=tmp_path, timeout=60)  # concluded: same report
    assert again.returncode == 3 and json.loads((run_dir / "report.json").read_text()) == report
    missing = _cli("collect", str(tmp_path / "nothing"), cwd=tmp_path, timeout=60)
    assert missing.returncode == 2
    assert "cannot collect" in _one_error_line(missing)


@pytest.mark.slurm
@pytest.mark.timeout(150)
def test_collect_uses_the_config_the_job_was_submitted_with(slurm_cluster, tmp_path):
    """A site's cluster from --config-dir, collected from another directory without it: collect
    must not compose the config anew (the site's folder is not on its search path)."""
    site = tmp_path / "site" / "cluster"
    site.mkdir(parents=True)
    (site / "mysite.yaml").write_text("defaults: [local_slurm, _self_]\nname: mysite\n"
                                      "job_name: mysite-job\n")
    run_dir = tmp_path / "run"
    proc = _cli("--config-dir", str(tmp_path / "site"), "cluster=mysite", "wait=false",
                f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    collected = _cli("collect", str(run_dir), cwd=elsewhere, timeout=120)
    assert collected.returncode == 0, collected.stdout + collected.stderr
    report = json.loads((run_dir / "report.json").read_text())
    assert report["passed"] and report["world_size"] == 8, report
    assert "#SBATCH --job-name=mysite-job" in next(
        (run_dir / "submitit").glob("*_submission.sh")).read_text()


@pytest.mark.slurm
@pytest.mark.timeout(150)
def test_rank_0_leaving_early_with_exit_0_is_the_one_blamed(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    proc = _cli("cluster=local_slurm", "entrypoint=tests.handoff_entrypoints:exit_0_on_rank_0",
                "timeout_s=20", f"hydra.run.dir={run_dir}", cwd=REPO)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    report = json.loads((run_dir / "report.json").read_text())
    assert report["failed_ranks"] == [0] and report["failed_phase"] == "entrypoint", report
    assert report["failure"].startswith("rank(s) 0 ended without an error (exit code 0) in "
                                        "phase 'entrypoint'"), report["failure"]


@pytest.mark.slurm
@pytest.mark.timeout(120)
def test_an_early_scancel_blames_no_rank(slurm_cluster, tmp_path):
    """Cancelled while the tasks start: nobody failed, so nobody is named."""
    run_dir = tmp_path / "run"
    proc, job_id = _launch_until_tasks_started(run_dir, 1)
    subprocess.run(["scancel", job_id], check=True)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 3, out + err
    report = json.loads((run_dir / "report.json").read_text())
    assert report["failed_ranks"] == [], report
    assert report["failure"].startswith(f"job {job_id} was cancelled from outside"), report
    assert _gone(job_id, run_dir)


@pytest.mark.slurm
@pytest.mark.timeout(120)
def test_sbatch_with_the_wrong_size_exits_2(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, MIMO_PYTHON=sys.executable, MIMO_RUN_DIR=str(run_dir))
    job_id = subprocess.run(["sbatch", "--parsable", "--nodes=1", str(SBATCH_SCRIPT),
                             "cluster=local_slurm"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, check=True).stdout.strip()
    while subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True,
                         text=True).stdout.strip():
        time.sleep(0.5)
    # accounting lags the queue: wait for sacct's final state, as the launcher does
    assert final_state(job_id, tries=60) == ("FAILED", "2:0")
    output = (tmp_path / f"mimo-launch-{job_id}.out").read_text()
    assert ("mimo_launch.slurm_task: error: the allocation has 4 tasks (SLURM_NTASKS: nodes x "
            "ntasks-per-node) but the layout's world size is 8") in output, output
    assert not (run_dir / "logs" / "rank0.log").exists()  # no task was started


@pytest.mark.slurm
@pytest.mark.timeout(150)
def test_slurms_time_limit_warning_does_not_end_a_healthy_job(slurm_cluster, tmp_path):
    """submitit's USR2 warning (at min(90 s, limit/4) before the limit) ended every task that
    got it; with `cluster.time_min=1` a slow start got it. The job's own warning signal and
    submitit's USR2 (a site's) are sent by hand here, mid-run: each task logs them, no more.
    Both at once, as soon as the tasks run: a USR2 that reaches a task after Python has begun
    to exit meets the default action again (the interpreter resets its handlers), which is
    why the job's own warning is a signal whose default is to be ignored."""
    run_dir = tmp_path / "run"
    proc, job_id = _launch_until_tasks_started(run_dir, 8)
    for sig in (signal.SIGUSR2, WARNING_SIGNAL):  # to the steps, as sbatch --signal does
        subprocess.run(["scancel", f"--signal={sig.name.removeprefix('SIG')}", job_id],
                       check=True)

    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "PASSED" in out
    log = (run_dir / "logs" / "rank0.log").read_text()
    for sig in (WARNING_SIGNAL, signal.SIGUSR2):
        assert f"time-limit warning ({sig.name}); going on" in log, log


def test_a_job_stopped_from_outside_blames_no_task_slurm_signalled():
    """scancel (or the launcher's cancel) makes Slurm signal every task; a task too busy to end
    on SIGTERM is SIGKILLed after KillWait ('Killed'), which is Slurm's doing, not a death."""
    errors = [("n1", [0, 1, 2, 3], "Terminated"), ("n2", [6], "Exited with exit code 3"),
              ("n2", [7], "Killed")]
    statuses = {r: {"rank": r, "phase": None, "ended": None} for r in range(8)}
    assert blame_dead(errors, statuses, stopped=True) is None
    found = blame_dead(errors, statuses, stopped=False)
    assert (found.ranks, found.phase) == ([7], None)
    assert found.message == "rank(s) 7 died on n2 (Killed); Slurm stopped the other tasks"
