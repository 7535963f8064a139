"""Signals to the launcher and a rank hung in teardown, on the real local Slurm cluster (marker
`slurm`, see test_slurm.py): SIGTERM and SIGHUP cancel the job, running or pending, write the
report and exit 143 / 129; a rank that hangs in teardown after a passing verification is
stopped by its own watchdog within about timeout_s and named, the verdict kept, exit 3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_slurm import _cli, _gone, _job_id, _wait_until_hung

from conftest import MIMO_LAUNCH
from mimo_launch.launchers.slurm_watch import final_state

# SIGTERM to the launcher alone (as `timeout` sends it), SIGHUP to its whole process group (as
# a closing terminal or a CI runner's cancel sends it: squeue, sacct and scancel get it too)
SIGNALS = [(signal.SIGTERM, 143), (signal.SIGHUP, 129)]


def _send(proc: subprocess.Popen, sig: signal.Signals) -> float:
    """Send `sig` (see SIGNALS); return when."""
    if sig == signal.SIGHUP:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    return time.monotonic()


def _start(run_dir: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([str(MIMO_LAUNCH), "cluster=local_slurm", *overrides,
                             f"hydra.run.dir={run_dir}"], cwd=run_dir.parent, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)


def _read_until(proc: subprocess.Popen, needle: str, within_s: float) -> list[str]:
    """The launcher's stdout lines up to the first holding `needle` (fails the test if it
    ends first or takes longer than `within_s`)."""
    seen, deadline = [], time.monotonic() + within_s
    for line in proc.stdout:
        seen.append(line)
        if needle in line:
            return seen
        if time.monotonic() > deadline:
            break
    proc.kill()
    pytest.fail(f"the launcher never printed {needle!r}: {''.join(seen)}{proc.stderr.read()}")


def _assert_interrupted(proc, sig, code: int, sent: float, job_id: str, run_dir: Path,
                        cancel_line_unread: bool = True) -> dict:
    """The launcher's end after `sig`, job and report checked."""
    out, err = proc.communicate(timeout=90)
    # the job's limit is 5 minutes and timeout_s 120 s: cancelled by the launcher, not by them
    assert time.monotonic() - sent < 60
    assert proc.returncode == code, out + err
    assert "Traceback" not in out + err
    assert not cancel_line_unread or f"interrupted ({sig.name}), cancelling job {job_id}" in out
    report = json.loads((run_dir / "report.json").read_text())
    assert report["interrupted"] is True and report["interrupted_by"] == sig.name, report
    assert report["passed"] is False
    assert report["failure"].startswith(f"job {job_id} was cancelled by {sig.name}"), report
    assert final_state(job_id)[0] == "CANCELLED"
    assert _gone(job_id, run_dir)
    return report


@pytest.mark.slurm
@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig,code", SIGNALS)
def test_a_signal_to_the_launcher_cancels_a_running_job(slurm_cluster, sig, code, tmp_path):
    """Rank 1 hangs in 'embedding' (timeout_s=120): the job would run for minutes."""
    run_dir = tmp_path / "run"
    proc = _start(run_dir, "fault.hang_rank=1", "fault.phase=embedding", "timeout_s=120")
    job_id = _job_id(proc.stdout.readline())
    _wait_until_hung(proc, run_dir, 1)
    sent = _send(proc, sig)
    report = _assert_interrupted(proc, sig, code, sent, job_id, run_dir)
    assert report["failed_ranks"] == [], report  # nobody failed: the launcher was stopped


@pytest.mark.slurm
@pytest.mark.timeout(180)
def test_a_second_signal_while_cancelling_does_not_cut_the_report_short(slurm_cluster,
                                                                        tmp_path):
    """SIGTERM, then SIGHUP while the job is being cancelled (as a CI runner escalates, or a
    terminal closes): the first signal's code and report, the job cancelled all the same."""
    run_dir = tmp_path / "run"
    proc = _start(run_dir, "fault.hang_rank=1", "fault.phase=embedding", "timeout_s=120")
    job_id = _job_id(proc.stdout.readline())
    _read_until(proc, f"job {job_id} RUNNING", 90)
    _wait_until_hung(proc, run_dir, 1)
    sent = _send(proc, signal.SIGTERM)
    _read_until(proc, f"cancelling job {job_id}", 10)
    _send(proc, signal.SIGHUP)  # to the group: scancel's too
    report = _assert_interrupted(proc, signal.SIGTERM, 143, sent, job_id, run_dir,
                                 cancel_line_unread=False)
    assert report["failed_ranks"] == [], report


@pytest.mark.slurm
@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig,code", SIGNALS)
def test_a_signal_to_the_launcher_cancels_a_pending_job(slurm_cluster, sig, code, tmp_path):
    """Another job holds every node: ours stays PENDING until the signal, then leaves the
    queue (it would otherwise start once the blocker ends, with nobody following it)."""
    blocker = subprocess.run(["sbatch", "--parsable", "-N", "4", "--ntasks-per-node=4",
                              "-p", "debug", "--time=5", f"--output={tmp_path / 'b.out'}",
                              "--wrap=sleep 150"], capture_output=True, text=True,
                             check=True).stdout.strip()
    run_dir = tmp_path / "run"
    try:
        proc = _start(run_dir)
        job_id = _job_id(_read_until(proc, "submitted job", 60)[-1])
        _read_until(proc, f"job {job_id} PENDING", 60)
        sent = _send(proc, sig)
        report = _assert_interrupted(proc, sig, code, sent, job_id, run_dir)
        assert "not started" in report["failure"], report
        assert subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True,
                              text=True).stdout.strip() == ""
    finally:
        subprocess.run(["scancel", blocker])


@pytest.mark.slurm
@pytest.mark.timeout(180)
def test_a_rank_hung_in_teardown_is_stopped_and_named_not_left_to_the_time_limit(
        slurm_cluster, tmp_path):
    """The verification passes, then rank 6 hangs while destroying its groups: its own
    watchdog ends it timeout_s after it entered teardown; the verdict stands, exit 3."""
    run_dir, timeout_s = tmp_path / "run", 10
    proc = _cli("cluster=local_slurm", "fault.hang_rank=6", "fault.phase=teardown",
                f"timeout_s={timeout_s}", f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=170)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    hung_at = (run_dir / "logs" / "rank6.log").stat().st_mtime  # its watchdog's last line
    log6 = (run_dir / "logs" / "rank6.log").read_text()
    assert "fault injection: rank 6 hangs in phase 'teardown'" in log6
    assert f"did not end within {timeout_s}s of entering phase 'teardown'" in log6
    # the job's limit is 5 minutes: the launcher saw the job end long before it
    assert time.time() - hung_at < 60
    assert "mimo-launch verification PASSED, teardown FAILED" in proc.stdout, proc.stdout
    report = json.loads((run_dir / "report.json").read_text())
    assert (report["failed_phase"], report["failed_ranks"], report["mismatches"]) == \
        ("teardown", [6], []), report
    assert report["failure"].startswith(f"phase 'teardown': rank(s) 6 did not end within "
                                        f"{timeout_s}s of entering phase 'teardown'; stopped")
    assert set(report["timings"]) == {"init", "grids", "embedding", "verify"}
    job_id = _job_id(proc.stdout)
    assert final_state(job_id)[0] == "FAILED"
    assert _gone(job_id, run_dir)


@pytest.mark.slurm
@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_after_the_slurm_verdict_keeps_it(slurm_cluster, sig, tmp_path):
    """As locally: once the job has ended and its verdict is printed, a signal stops only
    report.md and the rank map (fault.artifacts_delay_s holds them back 30 s); exit 0,
    report.json passed."""
    run_dir = tmp_path / "run"
    proc = _start(run_dir, "fault.artifacts_delay_s=30")
    _read_until(proc, "report: ", 150)
    _send(proc, sig)
    out, err = proc.communicate(timeout=60)  # past the 30 s delay: the rule, not its speed
    assert proc.returncode == 0, out + err
    assert "Traceback" not in out + err
    assert err.endswith(f"mimo-launch: interrupted ({sig.name}) after the verdict: report.md "
                        f"and the rank map were not written; the verdict above and report.json "
                        f"stand\n"), err
    assert json.loads((run_dir / "report.json").read_text())["passed"] is True
    assert not (run_dir / "report.md").exists()
