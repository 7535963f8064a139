"""The report of a Slurm job once it has left the nodes: rank 0's, completed with the Slurm facts.

Who is blamed, in order: a task srun saw die by a signal it was not sent to stop (SIGKILL, a
segfault...); a rank that ended (exit 0, or `os._exit`) without finishing the run, known from
its status file (`rank_status`: no ending recorded, no srun error); a rank whose own watchdog
ended it in teardown (status 'teardown_overdue': the verdict stands); nobody when the job was
cancelled from outside (scancel, an administrator) or by Ctrl-C, whatever rank 0 saw as the
step was torn down; else rank 0's own diagnosis. The phase of a blamed rank is the one its own
status file names, so a rank 0 that was killed still has one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..launchers.diagnosis import tail as log_tail
from ..launchers.slurm_watch import Followed, final_state
from ..layout.rank_text import format_rank_set
from ..rank.phases import ENTRYPOINT_PHASE, TEARDOWN_PHASE, teardown_failure
from ..rank.rank_status import TEARDOWN_OVERDUE, read_statuses
from ..reports.report import (
    Report,
    failure_report,
    read_rank0_report,
    read_report,
    write_final_report,
)

_SRUN_ERROR = re.compile(r"srun: error: (\S+): tasks? ([\d,\-]+): (.+)")
# srun's words for a task it stopped itself, or one that ended with an exit code
_NOT_A_DEATH = ("Exited with exit code", "Terminated")


@dataclass
class JobFiles:
    """Where one submitted job leaves its logs: each rank's own, and submitit's batch log."""

    run_dir: Path
    folder: Path  # submitit's
    job_id: str

    def rank_log(self, rank: int) -> Path:
        return self.run_dir / "logs" / f"rank{rank}.log"

    @property
    def batch_err(self) -> Path:
        """The batch script's stderr, where srun writes its messages (submitit's naming)."""
        return self.folder / f"{self.job_id}_0_log.err"

    def describe(self) -> str:
        return (f"logs: {self.run_dir}/logs/rank<N>.log (srun's messages in {self.batch_err})")


def task_errors(err_log: Path) -> list[tuple[str, list[int], str]]:
    """srun's task failures from the batch log: (node, tasks, what), in order."""
    try:
        text = err_log.read_text(errors="replace")
    except OSError:
        return []
    found = []
    for node, spec, what in _SRUN_ERROR.findall(text):
        tasks = []
        for part in spec.split(","):
            low, _, high = part.partition("-")
            tasks += list(range(int(low), int(high or low) + 1))
        found.append((node, tasks, what.strip()))
    return found


@dataclass
class Blame:
    message: str
    phase: str | None
    ranks: list[int]


def _phase_of(statuses: dict[int, dict], rank: int) -> str | None:
    return statuses.get(rank, {}).get("phase")


def _where(phase: str | None) -> str:
    return f" in phase '{phase}'" if phase else ""


def blame_dead(errors, statuses: dict[int, dict], stopped: bool) -> Blame | None:
    """The first task srun saw die by a signal nobody sent to stop it, or the ranks that ended
    without an error and without finishing; None when there is neither, and always None when
    the job was `stopped` from outside or by the launcher: then Slurm itself signalled every
    task (SIGKILL after KillWait for a task too busy to end on SIGTERM), and a task may end
    before it can record why."""
    if stopped:
        return None
    for node, tasks, what in errors:
        if not what.startswith(_NOT_A_DEATH):
            phase = _phase_of(statuses, tasks[0])
            return Blame(f"rank(s) {format_rank_set(tasks)} died on {node} ({what})"
                         f"{_where(phase)}; Slurm stopped the other tasks", phase, tasks)
    named = {t for _, tasks, _ in errors for t in tasks}
    quit_early = sorted(r for r, s in statuses.items() if s.get("ended") is None
                        and r not in named)
    if quit_early:
        phase = _phase_of(statuses, quit_early[0])
        return Blame(f"rank(s) {format_rank_set(quit_early)} ended without an error (exit code "
                     f"0){_where(phase)} before the run finished; the other ranks could not go "
                     f"on", phase, quit_early)
    return None


def blame_teardown(statuses: dict[int, dict], timeout_s: float) -> Blame | None:
    """The ranks whose own watchdog ended them in teardown (`phases.TeardownWatchdog`), or
    None."""
    ranks = sorted(r for r, s in statuses.items() if s.get("ended") == TEARDOWN_OVERDUE)
    if not ranks:
        return None
    return Blame(teardown_failure(ranks, timeout_s), TEARDOWN_PHASE, ranks)


def where_ranks_were(statuses: dict[int, dict], world_size: int) -> str:
    """'rank(s) 0-3 in 'grids', 4-7 not started' from the status files."""
    by_phase: dict[str, list[int]] = {}
    for rank in range(world_size):
        status = statuses.get(rank)
        key = "not started" if status is None else (
            f"in '{status['phase']}'" if status.get("phase") else "starting")
        by_phase.setdefault(key, []).append(rank)
    return ", ".join(f"rank(s) {format_rank_set(r)} {k}" for k, r in by_phase.items())


def _earliest_phase(statuses: dict[int, dict]) -> str | None:
    from ..rank.phases import ALL_PHASES

    seen = {s.get("phase") for s in statuses.values()}
    return next((p for p in ALL_PHASES if p in seen), None)


def conclude(job, job_id: str, files: JobFiles, followed: Followed) -> Report:
    """The run's report, written once to report.json: the one rank 0 handed over, completed
    with the Slurm facts when it is a failure (see the module docstring;
    `report.failure_report` merges them)."""
    return write_final_report(job, _concluded(job, job_id, files, followed))


def _concluded(job, job_id: str, files: JobFiles, followed: Followed) -> Report:
    run_dir = Path(job.run_dir)
    state, code = final_state(job_id)
    # rank 0's hand-off; report.json for a job submitted by a version without hand-offs
    report = read_rank0_report(job) or read_report(run_dir)
    if report is not None and not report.failure and state == "COMPLETED" \
            and not followed.interrupted:
        return report
    if followed.never_started:
        return _finish(job, None, (followed.never_started, None, []),
                       [f"slurm: job {job_id} {state}"], files, followed)
    errors = task_errors(files.batch_err)
    statuses = read_statuses(run_dir, job.world_size)
    stopped = followed.interrupted or (state == "CANCELLED" and not followed.cancelled)
    blame = blame_dead(errors, statuses, stopped) or (
        None if stopped else blame_teardown(statuses, job.timeout_s))
    if blame is not None:
        failure = blame.message, blame.phase, blame.ranks
    elif stopped:
        who = (f"by {followed.interrupted_by}" if followed.interrupted
               else "from outside (scancel or an administrator)")
        seen = f"; rank 0 saw: {report.failure}" if report is not None and report.failure else ""
        failure = (f"job {job_id} was cancelled {who} with "
                   f"{where_ranks_were(statuses, job.world_size)}{seen}",
                   _earliest_phase(statuses), [])
    elif report is None:
        failure = (f"job {job_id} ended {state} before rank 0 wrote a report "
                   f"({where_ranks_were(statuses, job.world_size)})", _earliest_phase(statuses), [])
    elif report.awaiting_entrypoint:  # rank 0 ended before it could say why
        failure = (f"job {job_id} ended {state} before the entry point finished on every rank",
                   ENTRYPOINT_PHASE, [])
    elif not report.failure:
        return report  # rank 0's verdict stands; the job's end is noted in its logs
    else:  # rank 0's own failure, completed with the job's facts
        failure = report.failure, report.failed_phase, report.failed_ranks
    message, phase, ranks = failure
    if phase is None and ranks:
        phase = _phase_of(statuses, ranks[0])
    lines = [f"slurm: job {job_id} {state} (exit code {code})"]
    lines += [f"srun: {node}: task(s) {format_rank_set(tasks)}: {what}"
              for node, tasks, what in errors[:8]]
    for rank in ranks[:1]:
        tail = log_tail(files.rank_log(rank), 10)
        if tail:
            lines.append(f"last lines of {files.rank_log(rank)}:\n{tail}")
    return _finish(job, report, (message, phase, ranks), lines, files, followed)


def _finish(job, partial: Report | None, failure: tuple[str, str | None, list[int]],
            lines: list[str], files: JobFiles, followed: Followed) -> Report:
    message, phase, ranks = failure
    return failure_report(job, partial, "\n".join([message, *lines, files.describe()]), phase,
                          ranks, followed.interrupted_by if followed.interrupted else None)
