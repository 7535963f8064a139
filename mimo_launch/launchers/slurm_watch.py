"""Following a submitted Slurm job from the submitting side: squeue and sacct, never submitit's
result pickles.

`follow` prints the job's state (and, while it is pending, Slurm's reason) on each change, and
returns once the job has left the nodes. It cancels the job itself when rank 0 has reported a
failure and the job does not end by itself, when Slurm gives a pending reason that cannot clear,
when the job stays pending longer than `cluster.pending_timeout_min`, and on Ctrl-C.
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass

from ..app.interrupts import held, signal_of
from ..reports.report import HANDOFF_NAME, read_report

POLL_S = 0.5
# After rank 0 reported a failure, how long the job may take to end by itself before scancel.
SETTLE_S = 10.0
# After scancel, how long to wait for the job to leave the nodes (Slurm's KillWait and more).
CANCEL_WAIT_S = 60.0
RESEND_S = 5.0  # scancel again while the job is still there after this long
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
          "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}
# squeue reasons (squeue(1), "JOB REASON CODES") that no running job's end can clear: the
# request exceeds what the partition, account or QOS allows a job, or can never be satisfied.
NEVER_CLEARS = {"BadConstraints", "DependencyNeverSatisfied", "InvalidAccount", "InvalidQOS",
                "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit",
                "QOSMaxCpuPerJobLimit", "QOSMaxGRESPerJob", "QOSMaxNodePerJobLimit",
                "QOSMaxWallDurationPerJobLimit", "AccountNotAllowed", "QOSNotAllowed"}


@dataclass(frozen=True)
class JobState:
    """What squeue says: the state and its reason ('None' when Slurm gives none)."""

    state: str
    reason: str = "None"

    def __str__(self) -> str:
        return self.state if self.reason in ("None", "") else f"{self.state} ({self.reason})"


@dataclass
class Followed:
    """How following a job ended. `never_started` is the one line for a job cancelled while
    pending; `refused` says its pending reason could never clear (exit 2, else 5)."""

    cancelled: bool = False
    interrupted_by: str | None = None  # 'SIGINT', 'SIGTERM' or 'SIGHUP' (interrupts.py)
    never_started: str | None = None
    refused: bool = False

    @property
    def interrupted(self) -> bool:
        return self.interrupted_by is not None


def _run(cmd: list[str]) -> str | None:
    """A Slurm client command's stdout, or None when it fails. It runs in a session of its own:
    a signal sent to the launcher's process group (a closing terminal's SIGHUP, a CI cancel)
    is the launcher's to handle and must not kill the scancel that handling runs."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                              start_new_session=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def live_state(job_id: str) -> JobState | None:
    """The job's state as slurmctld knows it, or None once it has forgotten the job."""
    out = _run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T|%r"])
    line = out.strip().splitlines()[0] if out and out.strip() else ""
    if not line:
        return None
    state, _, reason = line.partition("|")
    return JobState(state.strip(), reason.strip() or "None")


def final_state(job_id: str, tries: int = 10) -> tuple[str, str]:
    """(state, exit code) from accounting, falling back on squeue's state; 'UNKNOWN' if neither."""
    for _ in range(tries):
        out = _run(["sacct", "-X", "-n", "-P", "-o", "State,ExitCode", "-j", job_id])
        line = out.strip().splitlines()[0] if out and out.strip() else ""
        if "|" in line:
            state, code = line.split("|", 1)
            if state.split()[0] not in ACTIVE:
                return state.split()[0], code
        time.sleep(0.5)
    live = live_state(job_id)
    return (live.state if live else "UNKNOWN"), "?"


def scancel(job_id: str) -> None:
    _run(["scancel", job_id])


def cancel_and_wait(job_id: str) -> None:
    """scancel, then wait (at most CANCEL_WAIT_S seconds) until the job has left the nodes;
    scancel again every RESEND_S seconds meanwhile (one may have been lost)."""
    scancel(job_id)
    start = sent = time.monotonic()
    while (live := live_state(job_id)) is not None and live.state in ACTIVE \
            and time.monotonic() < start + CANCEL_WAIT_S:
        if time.monotonic() - sent > RESEND_S:
            scancel(job_id)
            sent = time.monotonic()
        time.sleep(POLL_S)


def _pending_verdict(job_id: str, live: JobState, pending_s: float,
                     timeout_min: float | None) -> Followed | None:
    if live.reason in NEVER_CLEARS:
        return Followed(cancelled=True, refused=True, never_started=(
            f"job {job_id} can never start: Slurm keeps it PENDING for reason {live.reason}, "
            f"which no other job's end clears (the request exceeds what the partition, account "
            f"or QOS allows); cancelled"))
    if timeout_min is not None and pending_s > timeout_min * 60:
        return Followed(cancelled=True, never_started=(
            f"job {job_id} still PENDING ({live.reason}) after "
            f"cluster.pending_timeout_min={timeout_min:g}; cancelled"))
    return None


def cancel_interrupted(job_id: str, signum: int) -> Followed:
    """Cancel the job after the launcher received `signum` and wait until it has left the
    nodes (at most CANCEL_WAIT_S); further signals meanwhile are held (recorded, not raised),
    so that a second SIGTERM or a closing terminal cannot cut the cancel and the report."""
    signame = signal.Signals(signum).name
    with held():
        print(f"mimo-launch: interrupted ({signame}), cancelling job {job_id}", flush=True)
        cancel_and_wait(job_id)
    return Followed(cancelled=True, interrupted_by=signame)


def follow(job_id: str, run_dir, pending_timeout_min: float | None = None,
           interrupted: int | None = None) -> Followed:
    """Wait until the job has left the nodes; print its state on each change (see the module
    docstring). Never raises on Ctrl-C, SIGTERM or SIGHUP: the job is cancelled, running or
    pending, and `interrupted_by` set; `interrupted` (a signal that came while the job was
    submitted) cancels it at once."""
    if interrupted is not None:
        return cancel_interrupted(job_id, interrupted)
    seen, failed_at, cancelled = None, None, False
    started = time.monotonic()
    try:
        while True:
            live = live_state(job_id)
            if live is not None and live != seen:
                print(f"mimo-launch: job {job_id} {live}", flush=True)
                seen = live
            if live is None or live.state not in ACTIVE:
                return Followed(cancelled=cancelled)
            if live.state == "PENDING":
                verdict = _pending_verdict(job_id, live, time.monotonic() - started,
                                           pending_timeout_min)
                if verdict is not None:
                    cancel_and_wait(job_id)
                    return verdict
            if failed_at is None and (run_dir / HANDOFF_NAME).exists():
                report = read_report(run_dir, HANDOFF_NAME)
                if report is not None and report.failure:
                    failed_at = time.monotonic()
            if failed_at is not None and not cancelled and \
                    time.monotonic() - failed_at > SETTLE_S:
                scancel(job_id)
                cancelled = True
            time.sleep(POLL_S)
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP (interrupts.install)
        return cancel_interrupted(job_id, signal_of(exc))
