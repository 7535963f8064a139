"""What a per-rank entry point does once it knows its place: shared by `slurm_task` (Slurm's
variables) and `torchrun_task` (torchrun's).

`task_settings` composes the config from the overrides and checks that the world the launcher
started is the layout's (exit 2, rank 0 prints the one line); `run_rank_task` runs the rank with
a per-rank status file and a SIGTERM guard and returns the task's exit code; rank 0 prints the
verdict. Exit codes: rank 0 the report's (0 pass, 1 mismatch), other ranks 0 once they are done;
2 bad input; 3 on a failure, every rank; 124 a rank whose teardown overran `timeout_s`
(`phases.TeardownWatchdog`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from ..errors import EXIT_FAILURE, EXIT_USAGE, BadInput, refuse, usage_error


def gpu_index(local_rank: int) -> int:
    """The GPU of this task: its local rank, or that modulo the GPUs this task sees (Slurm may
    show each task one GPU only)."""
    import torch

    count = torch.cuda.device_count()
    return local_rank if local_rank < count else local_rank % max(count, 1)


def task_device(requested: str) -> str:
    """'auto' -> cuda where this node shows a GPU, else cpu; 'cpu'/'cuda' as given;
    ValueError for anything else."""
    if requested in ("cpu", "cuda"):
        return requested
    if requested != "auto":
        raise ValueError(f"device must be one of auto, cpu, cuda, got {requested!r}")
    from ..settings.app_config import gpu_count

    return "cuda" if gpu_count() else "cpu"


def task_settings(prog: str, is_rank0: bool, overrides: list[str], tasks, started: str,
                  ranks_on_node: int | None = None):
    """(settings, device) for this task, or EXIT_USAGE after rank 0 printed one line: the
    overrides do not compose or validate, or the `tasks` the launcher started (`started` says
    which variable told) are not the layout's world size, or (given `ranks_on_node`) the health
    stage's buffers of that many ranks do not fit this node's memory. EXIT_FAILURE when the launcher
    stopped the task (SIGTERM) while the config was composed and it was valid.

    SIGTERM is held meanwhile: the first task to refuse makes srun or torchrun stop the others,
    and rank 0 must still finish composing and say why instead of dying silently."""
    from ..settings.app_config import load_settings

    def usage(message: str) -> int:
        return usage_error(message, prog=prog) if is_rank0 else EXIT_USAGE

    terminated: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: terminated.append(signum))
    try:
        settings = load_settings(overrides)
        device = task_device(settings.device)
        if ranks_on_node:
            from ..settings.app_config import check_health_memory

            check_health_memory(replace(settings, device=device), ranks_on_node)
    except BadInput as exc:
        return refuse(exc, prog=prog) if is_rank0 else EXIT_USAGE
    finally:
        signal.signal(signal.SIGTERM, previous)
    if str(settings.world_size) != str(tasks):
        return usage(f"{started} but the layout's world size is {settings.world_size}")
    return EXIT_FAILURE if terminated else (settings, device)


class StopOnSigterm:
    """End the task with EXIT_FAILURE on SIGTERM (scancel; srun or torchrun stopping the others
    after one failed), even while the main thread sits in C++.

    The signal's number arrives on a wakeup fd read by a thread; on rank 0 that thread first
    diagnoses the run through its own store client (`connect`) and records it
    (`report.keep_rank0_report`) unless a report is already there (other than one still
    waiting for the entry point to finish); to a passing one it adds the ranks ended in
    teardown by their watchdog (the others' ending stopped rank 0 while it waited for them:
    `PhaseTracker.teardown_stragglers`).
    `source` names who stops the task ('Slurm', 'torchrun') in the log and the report.
    """

    def __init__(self, job, rank: int, status, source: str):
        self.job, self.rank, self.status, self.source, self.probe = job, rank, status, source, None
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        signal.signal(signal.SIGTERM, lambda *_: None)  # a Python handler: feeds the wakeup fd
        signal.set_wakeup_fd(write_fd)
        threading.Thread(target=self._watch, args=(read_fd,), daemon=True,
                         name="mimo-sigterm").start()

    def connect(self, master_addr: str, master_port: int) -> None:
        """Rank 0: a second client of the run's store, usable while the main one is blocked."""
        if self.rank != 0:
            return
        import torch.distributed as dist

        self.probe = dist.TCPStore(master_addr, master_port, self.job.world_size,
                                   is_master=False, timeout=timedelta(seconds=10))

    def _watch(self, fd: int) -> None:
        while signal.SIGTERM not in os.read(fd, 64):
            pass
        try:
            print(f"rank {self.rank}: SIGTERM from {self.source}, stopping", flush=True)
            self.status.end("terminated")
            if self.probe is not None:
                self._report()
        except BaseException:  # noqa: BLE001 - the diagnosis is best effort; exit anyway
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_FAILURE)

    def _report(self) -> None:
        from ..launchers.diagnosis import diagnose
        from ..rank.phases import TEARDOWN_PHASE, overdue_in_teardown, teardown_failure
        from ..reports.report import failure_report, keep_rank0_report, read_rank0_report

        report = read_rank0_report(self.job)
        if report is not None and not report.awaiting_entrypoint:
            # the verdict stands; a rank its watchdog ended in teardown is named beside it
            overdue = overdue_in_teardown(self.probe, self.job.world_size)
            if overdue and not report.failure:
                keep_rank0_report(self.job, failure_report(self.job, report, teardown_failure(
                    overdue, self.job.timeout_s), TEARDOWN_PHASE, overdue))
            return
        found = diagnose(self.probe, self.job.world_size, [],
                         f"{self.source} stopped the ranks: a task ended early or the job was "
                         f"cancelled")
        keep_rank0_report(self.job, failure_report(self.job, report, found.message, found.phase,
                                                   found.ranks))


def run_rank_task(job, rank: int, local_rank: int, source: str, rendezvous,
                  master: tuple[str, int]) -> int:
    """Run `job` (a RankJob) as `rank`: a status file (`rank_status`), the SIGTERM guard,
    `rendezvous()` -> the run's store, then `rank_runner.run_rank` on GPU `gpu_index(local_rank)`
    with nccl. Returns run_rank's code; raises on failure, like run_rank."""
    from ..rank.rank_runner import node_name, run_rank
    from ..rank.rank_status import ENDINGS, TEARDOWN_OVERDUE, RankStatus

    status = RankStatus(Path(job.run_dir), rank, node_name())
    stopper = StopOnSigterm(job, rank, status, source)
    try:
        store = rendezvous()
        stopper.connect(*master)
        local = gpu_index(local_rank) if job.device == "cuda" else local_rank
        code = run_rank(job, rank, store, local_rank=local, on_phase=status.enter,
                        on_teardown_overdue=lambda: status.end(TEARDOWN_OVERDUE))
    except BaseException:
        status.end("failed")
        raise
    status.end(ENDINGS.get(code, "failed"))
    return code


def log_to_rank_file(run_dir: Path, rank: int, keep: bool = False) -> tuple[int, int] | None:
    """From here on, this process's stdout and stderr (file descriptors 1 and 2, so C++ and
    child output too) go to `<run_dir>/logs/rank<rank>.log`, appended: the local launcher's
    layout. With `keep`, returns copies of the previous descriptors for `restore_output`."""
    path = run_dir / "logs" / f"rank{rank}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2)) if keep else None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return saved


def restore_output(saved: tuple[int, int]) -> None:
    """Put back the stdout and stderr `log_to_rank_file(..., keep=True)` replaced."""
    sys.stdout.flush()
    sys.stderr.flush()
    for target, fd in zip((1, 2), saved):
        os.dup2(fd, target)
        os.close(fd)


@contextmanager
def rank_log(run_dir: Path, rank: int):
    """Inside: this rank's output goes to its `logs/rank<N>.log` (an exception's traceback too),
    then back to the console (torchrun's, where rank 0 prints the verdict)."""
    saved = log_to_rank_file(run_dir, rank, keep=True)
    try:
        yield
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        restore_output(saved)


def finish_task(rank: int, settings, run) -> int:
    """Call `run()` (the rank's work, returning its code); a failure is printed and is exit 3.
    Rank 0 then prints the verdict and the report's path. Returns the task's exit code."""
    from ..reports.report import format_summary, read_report, report_line

    try:
        code = run()
    except Exception:  # noqa: BLE001 - every failure is in this task's log, exit 3
        traceback.print_exc()
        code = EXIT_FAILURE
    if rank == 0:
        report = read_report(settings.run_dir)
        if report is not None:
            print(format_summary(report))
            if code != EXIT_FAILURE:  # the report's code: 4 for a health problem, as mimo-launch
                code = report.exit_code
        print(report_line(settings.run_dir), flush=True)
    return code if rank == 0 or code == EXIT_FAILURE else 0
