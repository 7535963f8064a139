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
