"""A rank's own bound on its teardown (`phases.TeardownWatchdog`), in real child processes:
a hang ends the process with EXIT_TEARDOWN_OVERDUE after `on_overdue`; a hang that holds the
GIL (the watchdog thread cannot run) is ended by SIGALRM; a teardown that finishes in time
leaves the process alone, alarm cleared."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from mimo_launch.rank.phases import EXIT_TEARDOWN_OVERDUE

_SCRIPT = """
import ctypes, sys, time
from mimo_launch.rank.phases import TeardownWatchdog
how = sys.argv[1]
with TeardownWatchdog(3, 1.0, on_overdue=lambda: print("on_overdue called", flush=True)):
    if how == "hang":
        time.sleep(3600)
    elif how == "hang_holding_the_gil":
        ctypes.PyDLL(None).sleep(3600)  # libc sleep(3) without releasing the GIL
    else:
        time.sleep(0.2)
time.sleep(3)  # past where the watchdog and the alarm would have fired
print("ended normally", flush=True)
"""


def _run(how: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, how], capture_output=True, text=True,
                          timeout=60)
    return proc, time.monotonic() - start


@pytest.mark.timeout(90)
def test_a_hang_in_teardown_ends_the_process_with_its_own_code():
    proc, elapsed = _run("hang")
    assert proc.returncode == EXIT_TEARDOWN_OVERDUE, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        "rank 3: rank(s) 3 did not end within 1s of entering phase 'teardown'; ending it "
        "(exit 124)", "on_overdue called"]
    assert elapsed < 30  # not the hour it would have slept


@pytest.mark.timeout(90)
def test_a_hang_holding_the_gil_is_ended_by_the_alarm():
    proc, elapsed = _run("hang_holding_the_gil")
    assert proc.returncode == -signal.SIGALRM, proc.stdout + proc.stderr
    assert elapsed < 40


@pytest.mark.timeout(90)
def test_a_teardown_that_finishes_in_time_is_left_alone():
    proc, _ = _run("finish")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == "ended normally\n"


def test_a_rank_that_finished_its_teardown_and_waits_for_the_others_is_never_overdue():
    """Rank 0 finishes its teardown, then waits for the others; under load the launcher's
    backstop once saw it 'in teardown' past timeout_s and blamed it beside the hung rank 6.
    Real trackers on a real TCPStore; the launcher's watch reads it as in a run."""
    from datetime import timedelta

    import torch.distributed as dist

    from mimo_launch.launchers.local_launcher import _TeardownWatch
    from mimo_launch.rank.phases import FaultSpec, PhaseTracker, missing_ranks

    store = dist.TCPStore("127.0.0.1", 0, 1, True, timeout=timedelta(seconds=10),
                          wait_for_workers=False)
    rank0, rank6 = (PhaseTracker(store, r, 8, 60.0, FaultSpec()) for r in (0, 6))
    watch = _TeardownWatch(store, timeout_s=1.0)
    with rank6.teardown():  # rank 6 stays in it
        with rank0.teardown():
            assert watch.overdue([0, 6], now=0.0) == []  # both seen entering
        assert watch.overdue([0, 6], now=2.0) == [6]  # rank 0 has finished; rank 6 has not
        assert missing_ranks(store, "teardown", 8) == [6]
