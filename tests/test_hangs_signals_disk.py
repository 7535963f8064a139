"""The launcher under stress: a rank that hangs after a phase's barrier or in teardown, SIGTERM
and SIGHUP, an interrupt just after the verdict, a read-only or full disk. Real processes, real
signals, real file systems (tmpfs mounts: root)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_faults import _start_hanging_run, _wait_gone, since_the_fault

from conftest import MIMO_LAUNCH, require_root, run_cli

TIMEOUT_S = 3


@pytest.mark.timeout(60)
@pytest.mark.parametrize("phase,rank", [("verify", 5), ("grids", 7), ("embedding", 4)])
def test_a_rank_that_hangs_after_the_barrier_is_the_one_named(phase, rank, tmp_path):
    """It stops inside the phase's collectives or group creation (rank 7 in grids: in
    new_group); the others time out there. The silent rank is blamed, not its peers."""
    run_dir = tmp_path / "run"
    proc = run_cli(f"fault.hang_rank={rank}", f"fault.phase={phase}", "fault.where=after_barrier",
                   f"timeout_s={TIMEOUT_S}", f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=50)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert since_the_fault(run_dir, rank) < TIMEOUT_S + 6
    report = json.loads((run_dir / "report.json").read_text())
    assert report["failed_phase"] == phase and report["failed_ranks"] == [rank], report
    assert f"rank(s) {rank} did not finish" in report["failure"]
    assert _wait_gone(run_dir) == []


@pytest.mark.timeout(60)
def test_a_rank_that_hangs_in_teardown_is_named_within_the_timeout_and_the_verdict_kept(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("fault.hang_rank=6", "fault.phase=teardown", f"timeout_s={TIMEOUT_S}",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=50)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    elapsed = since_the_fault(run_dir, 6)
    assert elapsed < TIMEOUT_S + 6, elapsed  # not the 4 x timeout_s + 30 s backstop
    assert "mimo-launch verification PASSED, teardown FAILED" in proc.stdout
    assert "module vision       ranks [0, 4)  TP2 CP1 ETP1 PP1 DP2  checks passed" in proc.stdout
    report = json.loads((run_dir / "report.json").read_text())
    assert (report["failed_phase"], report["failed_ranks"], report["mismatches"]) == \
        ("teardown", [6], [])
    assert report["failure"].startswith("phase 'teardown': rank(s) 6 did not end within 3s of "
                                        "entering phase 'teardown'; stopped")
    assert set(report["timings"]) == {"init", "grids", "embedding", "verify"}
    assert _wait_gone(run_dir) == []


@pytest.mark.timeout(90)
def test_an_interrupt_during_a_hung_teardown_names_the_rank_still_in_it(tmp_path):
    """Teardown has no barrier: blaming the ranks that 'did not arrive' there named all 8.
    The rank still in it is the one named; the verdict stands beside it."""
    proc, run_dir = _start_hanging_run(tmp_path, rank=6, phase="teardown")
    time.sleep(3)  # the other ranks finish their teardown (milliseconds)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, out + err
    assert "mimo-launch verification PASSED, teardown FAILED" in out
    report = json.loads((run_dir / "report.json").read_text())
    assert (report["failed_phase"], report["failed_ranks"]) == ("teardown", [6]), report
    assert report["failure"].startswith("phase 'teardown': rank(s) 6 did not finish it "
                                        "(interrupted (SIGTERM))"), report["failure"]
    assert _wait_gone(run_dir) == []


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_every_rank_and_write_the_report(sig, code, tmp_path):
    proc, run_dir = _start_hanging_run(tmp_path)
    sent = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert time.monotonic() - sent < 10
    assert proc.returncode == code, out + err
    assert "Traceback" not in out + err
    report = json.loads((run_dir / "report.json").read_text())
    assert report["interrupted"] is True and report["interrupted_by"] == sig.name
    assert f"interrupted ({sig.name})" in report["failure"]
    assert _wait_gone(run_dir) == []


def _start_passing_run(tmp_path: Path, run_dir: Path, delay_s: float) -> subprocess.Popen:
    """A passing run that waits `delay_s` between its verdict and its report.md / rank map;
    returns once the verdict is printed."""
    env = dict(os.environ, CI="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([str(MIMO_LAUNCH), f"hydra.run.dir={run_dir}",
                             f"fault.artifacts_delay_s={delay_s}"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("report: "):
            return proc
    proc.kill()
    pytest.fail("the run printed no verdict: " + "".join(seen) + proc.stderr.read())


def _no_artifacts(run_dir: Path) -> list[str]:
    """Everything in the run directory but the logs, rank 0's hand-off (status/) and
    report.json: nothing may be left."""
    return sorted(p.name for p in run_dir.iterdir()
                  if p.name not in ("logs", "status", "report.json", ".mimo-launch-run"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_after_the_verdict_keeps_the_verdict(sig, tmp_path):
    """The rule: once the verdict is printed it stands (exit 0, report.json passed); the
    interrupt only stops report.md and the rank map, and says so in one line."""
    run_dir = tmp_path / "run"
    proc = _start_passing_run(tmp_path, run_dir, delay_s=30)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)  # past the 30 s delay: the rule, not its speed
    assert proc.returncode == 0, out + err
    assert "Traceback" not in out + err
    name = "Ctrl-C" if sig == signal.SIGINT else sig.name
    assert err == (f"mimo-launch: interrupted ({name}) after the verdict: report.md and the rank "
                   f"map were not written; the verdict above and report.json stand\n")
    assert json.loads((run_dir / "report.json").read_text())["passed"] is True
    assert _no_artifacts(run_dir) == []


_HOLD_SCRIPT = """
import os, signal, sys
from mimo_launch.app import interrupts as i
i.install()
seen = []
with i.one_run():
    with i.held():
        pass
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # after a block that does not last: raised
        seen.append("held after a plain block")
    except KeyboardInterrupt as exc:
        seen.append(i.describe(i.signal_of(exc)))
    with i.held(lasting=True) as came:
        pass
    os.kill(os.getpid(), signal.SIGTERM)  # between two blocks: the hold lasts
    with i.held() as again:
        os.kill(os.getpid(), signal.SIGHUP)
    try:
        with i.stoppable():  # shut by the signals held before it: the block never runs
            seen.append("opened")
    except KeyboardInterrupt as exc:
        seen.append(i.describe(i.signal_of(exc)))
    seen.append([i.describe(s) for s in came])
    seen.append(again is came)
with i.one_run():
    with i.held(lasting=True) as came:
        pass
    try:
        with i.stoppable():  # nothing held before: open, and a signal inside cuts it
            seen.append("opened")
            os.kill(os.getpid(), signal.SIGINT)
            seen.append("not cut")
    except KeyboardInterrupt as exc:
        seen.append(i.describe(i.signal_of(exc)))
    os.kill(os.getpid(), signal.SIGHUP)  # after the window: held again
    seen.append([i.describe(s) for s in came])
try:
    os.kill(os.getpid(), signal.SIGTERM)  # the run is over: signals raise again
    seen.append("held after the run")
except KeyboardInterrupt as exc:
    seen.append(i.describe(i.signal_of(exc)))
print(seen)
"""


def test_a_signal_between_two_held_blocks_of_a_run_is_held_not_raised():
    """The kind behind an interrupt landing just after the verdict printed (exit 143 although
    the verdict stood): inside a run, once the ranks have ended, every signal is recorded until
    the run ends, except in the one stoppable window; real signals to a real process."""
    out = subprocess.run([sys.executable, "-c", _HOLD_SCRIPT], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == ("['SIGTERM', 'SIGTERM', ['SIGTERM', 'SIGHUP'], True, "
                                  "'opened', 'Ctrl-C', ['Ctrl-C', 'SIGHUP'], 'SIGTERM']")


def test_a_signal_held_just_before_the_stoppable_window_shuts_it():
    """The kind behind a Slurm run that wrote every file after a SIGTERM that came just after
    its verdict: a caller checked for held signals, then opened the window, and a signal that
    fell between the two was held without cutting anything. `stoppable()` itself must refuse
    to open once a signal is held, whatever the caller checked before."""
    script = """
import os, signal
from mimo_launch.app import interrupts as i
i.install()
with i.one_run():
    with i.held(lasting=True) as came:
        pass
    assert not came  # what a caller's check would have seen
    os.kill(os.getpid(), signal.SIGTERM)  # lands after that check, before the window
    try:
        with i.stoppable():
            print("opened")
    except KeyboardInterrupt as exc:
        print("shut by", i.describe(i.signal_of(exc)))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert (out.returncode, out.stdout) == (0, "shut by SIGTERM\n"), out.stdout + out.stderr


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs at tmp_path/disk with the given options; unmounted at the end."""
    require_root("mounting a tmpfs")
    where = tmp_path / "disk"
    where.mkdir()
    mounted = []

    def mount(options: str) -> Path:
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
        mounted.append(where)
        return where

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.timeout(60)
def test_a_read_only_run_directory_is_refused_in_one_line(tmpfs, tmp_path):
    disk = tmpfs("ro,size=1m")
    proc = run_cli(f"hydra.run.dir={disk / 'run'}", cwd=tmp_path, timeout=50)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == (f"mimo-launch: error: run directory {disk / 'run'} cannot be used: "
                           f"the file system is read-only\n")
    assert proc.stdout == ""


@pytest.mark.timeout(120)
def test_a_disk_that_fills_after_the_verdict_leaves_the_verdict_and_no_half_file(tmpfs, tmp_path):
    """ENOSPC for real: the run's tmpfs is filled between the verdict and report.md / the
    rank map. Exit 0 (the verdict), one warning per file, no traceback, no partial file."""
    disk = tmpfs("size=2m")
    run_dir = disk / "run"
    proc = _start_passing_run(tmp_path, run_dir, delay_s=3)
    with open(disk / "filler", "wb") as filler:  # fill every block left
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert "Traceback" not in out + err
    assert "mimo-launch: warning: report.md not written: No space left on device" in err
    assert "mimo-launch: warning: no rank map (OSError: [Errno 28] No space left on device" in err
    assert json.loads((run_dir / "report.json").read_text())["passed"] is True
    assert _no_artifacts(run_dir) == []


def _signal_once_claimed(args: list[str], marker: Path, sig, tmp_path: Path,
                         after_s: float = 0.0):
    """Start `mimo-launch args`; send `sig` `after_s` after `marker` (a run directory's claim)
    appears, i.e. during the launcher's start-up (torch's first import, the ranks' start)."""
    env = dict(os.environ, CI="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([str(MIMO_LAUNCH), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(after_s)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


@pytest.mark.timeout(180)
@pytest.mark.parametrize("after_s", [0.0, 0.05, 0.4])
def test_a_signal_during_start_up_exits_143_with_report_json(after_s, tmp_path):
    """Signals are held over torch's first import (an exception raised in native code would
    abort, exit 134) and raised right after; report.json records the interrupt whatever the
    moment after the run directory is claimed."""
    run_dir = tmp_path / "run"
    code, out, err = _signal_once_claimed([f"hydra.run.dir={run_dir}"],
                                          run_dir / ".mimo-launch-run", signal.SIGTERM,
                                          tmp_path, after_s)
    assert code == 143, out + err
    assert "Traceback" not in out + err and "terminate called" not in err
    report = json.loads((run_dir / "report.json").read_text())
    assert report["interrupted"] is True and report["interrupted_by"] == "SIGTERM", report


@pytest.mark.timeout(120)
def test_a_signal_during_a_sweep_points_start_up_writes_the_summary(tmp_path):
    sweep_dir = tmp_path / "sw"
    code, out, err = _signal_once_claimed(["-m", "mimo=vlm_8", f"hydra.sweep.dir={sweep_dir}"],
                                          sweep_dir / "0" / ".mimo-launch-run", signal.SIGTERM,
                                          tmp_path, 0.05)
    assert code == 143, out + err
    assert "terminate called" not in err and "Traceback" not in out + err
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert summary["interrupted"] is True and summary["points"][0]["exit_code"] == 143
    assert (sweep_dir / "sweep.md").exists()
    assert json.loads((sweep_dir / "0" / "report.json").read_text())["interrupted"] is True


@pytest.mark.timeout(60)
def test_a_failure_in_the_health_stage_says_the_verification_passed(tmp_path):
    """Like the teardown: the health stage runs after a passing verification, whose verdict
    and checks stand; the headline names the stage that failed."""
    run_dir = tmp_path / "run"
    proc = run_cli("check=health", "fault.hang_rank=5", "fault.phase=health",
                   f"timeout_s={TIMEOUT_S}", f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=50)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "mimo-launch verification PASSED, health stage FAILED" in proc.stdout, proc.stdout
    assert "module vision       ranks [0, 4)  TP2 CP1 ETP1 PP1 DP2  checks passed" in proc.stdout
    assert json.loads((run_dir / "report.json").read_text())["failed_phase"] == "health"
