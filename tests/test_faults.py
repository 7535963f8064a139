"""Failures while running: a rank that dies or hangs in each phase, Ctrl-C, a killed launcher.
Every case ends with a clear exit code within the timeout plus 10 s and leaves no process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import MIMO_LAUNCH, run_cli
from mimo_launch.rank.phases import PHASES
from mimo_launch.reports.report import write_json_atomic

TIMEOUT_S = 3


def _leftovers(run_dir) -> list[str]:
    """Processes whose command line names this run's directory (forked ranks keep it)."""
    proc = subprocess.run(["pgrep", "-af", str(run_dir)], capture_output=True, text=True)
    return [ln for ln in proc.stdout.splitlines() if "pgrep" not in ln]


def since_the_fault(run_dir, rank: int) -> float:
    """Seconds from the faulty rank's last log line (the fault's) until now: the bound to
    check, whatever the machine's load made of the start-up before it."""
    return time.time() - (run_dir / "logs" / f"rank{rank}.log").stat().st_mtime


def _wait_gone(run_dir, within_s: float = 5.0) -> list[str]:
    deadline = time.monotonic() + within_s
    while (left := _leftovers(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.timeout(60)
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("kind,rank", [("kill_rank", 3), ("hang_rank", 5)])
def test_a_rank_that_dies_or_hangs_is_named_with_its_phase(kind, rank, phase, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(f"fault.{kind}={rank}", f"fault.phase={phase}", f"timeout_s={TIMEOUT_S}",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=50)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    elapsed = since_the_fault(run_dir, rank)
    assert elapsed < TIMEOUT_S + 10, elapsed
    report = json.loads((run_dir / "report.json").read_text())
    assert report["passed"] is False
    assert report["failed_phase"] == phase and report["failed_ranks"] == [rank], report
    assert list(report["modules"]) == ["vision", "language"]  # the layout is never lost
    assert f"rank {rank}" in report["failure"] or f"rank(s) {rank}" in report["failure"]
    # the headline says whether verification ran: not before its phase
    verdict = "FAILED" if phase == "verify" else f"NOT RUN, {phase} FAILED"
    assert f"mimo-launch verification {verdict}: world size 8" in proc.stdout, proc.stdout
    assert _wait_gone(run_dir) == []


def _start_hanging_run(tmp_path, rank: int = 1, phase: str = "grids"):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([str(MIMO_LAUNCH), f"fault.hang_rank={rank}", f"fault.phase={phase}",
                             "timeout_s=120", f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run_dir / "logs" / f"rank{rank}.log"
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        if log.exists() and "hangs" in log.read_text():
            return proc, run_dir
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"rank {rank} never reached the injected hang")


@pytest.mark.timeout(90)
def test_ctrl_c_stops_every_rank(tmp_path):
    proc, run_dir = _start_hanging_run(tmp_path)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert time.monotonic() - sent < 10
    assert proc.returncode == 130, out + err
    report = json.loads((run_dir / "report.json").read_text())
    assert report["interrupted"] is True and "Ctrl-C" in report["failure"]
    assert _wait_gone(run_dir) == []


@pytest.mark.timeout(90)
def test_ranks_die_with_a_killed_launcher(tmp_path):
    proc, run_dir = _start_hanging_run(tmp_path)
    assert len(_leftovers(run_dir)) >= 8
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert _wait_gone(run_dir, within_s=10) == []


def test_report_writes_are_atomic(tmp_path):
    path = tmp_path / "report.json"
    write_json_atomic(path, {"passed": True})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"passed": object()})  # fails half-way through json.dump
    assert json.loads(path.read_text()) == {"passed": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temp left
