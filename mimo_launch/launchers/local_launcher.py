"""Start every rank on this machine: import once, fork, rendezvous on a store the parent hosts.

The parent imports torch (importing this module does) and loads megatron-core's HyperCommGrid
(`launch_local`) before it forks, so each forked rank shares those pages instead of paying
seconds and hundreds of MB again. The parent
forks first and only then creates the TCPStore (no threads exist at fork time), sends its port
to each rank through a pipe, and waits. Rank r writes its output to `<run_dir>/logs/rank<r>.log`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from .. import compat
from ..app.interrupts import deferred, describe, held, reset_in_child, signal_of
from ..errors import EXIT_FAILURE, EXIT_TEARDOWN_OVERDUE
from ..launchers.diagnosis import Diagnosis, RankExit, diagnose, tail
from ..rank.phases import (
    TEARDOWN_PHASE,
    arrivals,
    in_teardown,
    teardown_failure,
    teardown_overdue,
)
from ..rank.rank_runner import RankJob, rank_environment, run_rank
from ..reports.report import Report, failure_report, read_rank0_report, write_final_report
from ..settings.app_config import LaunchSettings

_POLL_S = 0.05
# Once a rank has failed (exit 3), the others still running are stopped when no other rank has
# failed for this long: ranks that timed out waiting for a hung one (about together) record
# their own errors first, and the diagnosis tells the silent rank from them.
_SETTLE_S = 1.0


def log_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / "logs" / f"rank{rank}.log"


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this rank if the launcher dies (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


RankBody = Callable[[int, "dist.TCPStore"], int]


def _child(world_size: int, rank: int, port_fd: int, log: Path, timeout_s: float,
           body: RankBody) -> None:
    """A forked rank: log to `log`, join the parent's store, run `body`; never returns."""
    code = EXIT_FAILURE
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        reset_in_child()
        _die_with_parent()
        (port,) = struct.unpack("!I", os.read(port_fd, 4))
        os.environ.update(rank_environment(rank, world_size, rank, "127.0.0.1", port))
        store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False,
                              timeout=timedelta(seconds=timeout_s))
        code = body(rank, store)
    except BaseException:  # noqa: BLE001 - a rank reports every failure in its log
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _terminate(pids: dict[int, int], grace_s: float = 3.0) -> list[RankExit]:
    """SIGTERM the ranks still running, SIGKILL what is left after `grace_s`; reap them all."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    reaped = []
    while pids and time.monotonic() < deadline:
        ended = _reap(pids, stopped=True)
        reaped += ended
        if not ended:
            time.sleep(_POLL_S)
    for pid, rank in list(pids.items()):
        try:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            reaped.append(_exit_of(rank, status, stopped=True))
        except (ProcessLookupError, ChildProcessError):
            pass
        pids.pop(pid, None)
    return reaped


def _reap(pids: dict[int, int], stopped: bool = False) -> list[RankExit]:
    """Collect the ranks of `pids` that have ended (removing them), without blocking.

    Waits on each rank's own pid: never on other children of this process (e.g. a subprocess
    a library started in a thread), which `waitpid(-1)` could steal or trip over.
    """
    ended = []
    for pid, rank in list(pids.items()):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # already reaped elsewhere: its status is lost
            pids.pop(pid)
            ended.append(RankExit(rank, None, None, stopped))
            continue
        if done:
            pids.pop(pid)
            ended.append(_exit_of(rank, status, stopped))
    return ended


def _exit_of(rank: int, status: int, stopped: bool = False) -> RankExit:
    if os.WIFSIGNALED(status):
        return RankExit(rank, None, os.WTERMSIG(status), stopped)
    return RankExit(rank, os.WEXITSTATUS(status), None, stopped)


@dataclass
class LocalRun:
    """How a local run ended: every rank's exit, and the launcher's own reason to stop it
    (watchdog, Ctrl-C, SIGTERM) if any. `store` is the run's store, still readable."""

    exits: list[RankExit]
    reason: str | None
    interrupted: str | None  # the signal's name ('SIGTERM') when interrupted
    store: dist.TCPStore
    hung_in_teardown: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reason is None and all(e.ok for e in self.exits)


ProgressHook = Callable[["dist.TCPStore"], None]
_TICK_S = 0.2


def fork_ranks(world_size: int, run_dir: Path, timeout_s: float, body: RankBody,
               watchdog_s: float | None = None, on_tick: ProgressHook | None = None) -> LocalRun:
    """Fork `world_size` ranks running `body(rank, store)` and wait for them.

    When a rank ends with anything but 0 or 1, the others are stopped at once (SIGTERM, then
    SIGKILL); so they are on Ctrl-C and when `watchdog_s` (the bound on the whole run) passes.
    `on_tick(store)` is called every 0.2 s while ranks run (progress display; `phases.py` has
    readers for the store's keys).
    """
    run_dir = Path(run_dir)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    pids: dict[int, int] = {}
    writers = []
    try:
        # A signal raised inside os.fork's at-fork hooks (logging's lock) is swallowed and
        # leaves the lock held: the forks hold signals, the first one raises after them.
        with deferred():
            for rank in range(world_size):
                read_fd, write_fd = os.pipe()
                pid = os.fork()
                if pid == 0:
                    for fd in writers:
                        os.close(fd)
                    os.close(write_fd)
                    _child(world_size, rank, read_fd, log_path(run_dir, rank), timeout_s, body)
                os.close(read_fd)
                writers.append(write_fd)
                pids[pid] = rank
        store = dist.TCPStore("127.0.0.1", 0, world_size, is_master=True,
                              wait_for_workers=False, timeout=timedelta(seconds=timeout_s))
        for fd in writers:
            os.write(fd, struct.pack("!I", store.port))
            os.close(fd)
    except BaseException:  # no rank may outlive a launcher that could not start the run
        _terminate(pids)
        raise
    return _wait(pids, watchdog_s or 4 * timeout_s + 30, store, on_tick, timeout_s)


def _wait(pids: dict[int, int], watchdog_s: float, store, on_tick,
          timeout_s: float) -> LocalRun:
    exits: list[RankExit] = []
    reason, interrupted, hung = None, None, []
    deadline = time.monotonic() + watchdog_s
    settle = None  # once a rank failed: when the others still running are stopped
    teardown = _TeardownWatch(store, timeout_s)
    next_tick = 0.0
    try:
        while pids:
            now = time.monotonic()
            if now >= next_tick:
                if on_tick is not None:
                    on_tick(store)
                hung = teardown.overdue(sorted(pids.values()), now)
                if hung:
                    reason = teardown_overdue(hung, timeout_s)
                    break
                next_tick = now + _TICK_S
            ended = _reap(pids)
            exits += ended
            hung = [e.rank for e in ended if e.code == EXIT_TEARDOWN_OVERDUE]
            if hung:  # its own watchdog ended it (phases.TeardownWatchdog)
                reason = teardown_overdue(hung, timeout_s)
                break
            if any(e.died for e in ended):
                break
            if any(not e.ok for e in ended):  # re-armed by each failing rank
                settle = now + _SETTLE_S
            if settle is not None and now > settle:
                break
            if ended:
                continue
            if now > deadline:
                reason = f"the run did not finish within {watchdog_s:.0f}s"
                break
            time.sleep(_POLL_S)
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP (interrupts.install)
        interrupted = signal.Signals(signal_of(exc)).name
        reason = f"interrupted ({describe(signal_of(exc))})"
    finally:
        with held(lasting=True):  # a second signal does not cut the stopping short
            exits += _terminate(pids)
    return LocalRun(exits, reason, interrupted, store, hung)


class _TeardownWatch:
    """When each rank entered the teardown phase (read from the store once any rank has),
    so that one still in it `timeout_s` later is stopped and named (a backstop: such a rank
    normally ends itself first, with errors.EXIT_TEARDOWN_OVERDUE). A rank that has finished
    its teardown (rank 0 waiting for the others) is never overdue."""

    def __init__(self, store, timeout_s: float):
        self.store, self.timeout_s = store, timeout_s
        self.entered: dict[int, float] = {}

    def overdue(self, running: list[int], now: float) -> list[int]:
        try:
            if not self.entered and not arrivals(self.store, TEARDOWN_PHASE):
                return []
            for rank in in_teardown(self.store, [r for r in running if r not in self.entered]):
                self.entered[rank] = now
            late = [r for r in running if now - self.entered.get(r, now) > self.timeout_s]
            return in_teardown(self.store, late) if late else []
        except Exception:  # noqa: BLE001 - the store is the launcher's own; never fatal here
            return []


def run_local(settings: LaunchSettings) -> int:
    """The local launcher's run (`interface.Launcher`): fork the ranks here with a progress
    line, print the verdict, then write report.md and the rank map; the exit code."""
    from ..app.interrupts import one_run
    from ..rank.rank_job import rank_job
    from ..reports.artifacts import finish_run
    from ..reports.console import PhaseProgress
    from ..reports.rankmap import warm_up

    if settings.entrypoint:  # megatron-core's package init once here, not in every rank
        from ..groups.pg_collections import process_group_collection_class

        with deferred():  # native imports: a signal there would abort (interrupts.deferred)
            process_group_collection_class()
    print(f"mimo-launch: {settings.world_size} ranks on this machine "
          f"({'NCCL on GPUs' if settings.device == 'cuda' else 'gloo on CPU'}); "
          f"output in {settings.run_dir}", flush=True)
    with one_run():  # from the ranks' end on, signals are held: the verdict stands
        with PhaseProgress(settings.world_size, on_first_tick=warm_up) as progress:
            report = launch_local(rank_job(settings), on_tick=progress)
            with held(lasting=True) as came:
                progress.finish(report)
        finish_run(settings, report, came)  # verdict, then report.md and the rank map
    return report.exit_code


def launch_local(job: RankJob, watchdog_s: float | None = None,
                 on_tick: ProgressHook | None = None) -> Report:
    """Run `job`'s ranks here; return the run's report, written once to report.json: rank 0's
    (handed over: `job.launcher_concludes` must be true), or a failure report built on it.

    The whole run is bounded by `watchdog_s` (default: 4 x timeout_s + 30 s, plus
    `RankJob.stages_bound_s` for an entry point and the health stage)."""
    if watchdog_s is None and (job.entrypoint or job.health):
        watchdog_s = 4 * job.timeout_s + 30 + job.stages_bound_s
    with deferred():  # once here, not in every rank (a native import: interrupts.deferred)
        compat.load_hypercomm_grid()
    run = fork_ranks(job.world_size, Path(job.run_dir), job.timeout_s,
                     lambda rank, store: run_rank(job, rank, store, local_rank=rank),
                     watchdog_s, on_tick)
    with held(lasting=True):  # the ranks have ended: the report is written whole
        report = read_rank0_report(job)
        if not run.ok or report is None:
            report = _failure_report(job, run, report)
        return write_final_report(job, report)


def _failure_report(job: RankJob, run: LocalRun, partial: Report | None) -> Report:
    """The report of a failed run, keeping what rank 0 recorded before it failed."""
    run_dir = Path(job.run_dir)
    if run.hung_in_teardown:  # after the verdict: it stands, the teardown is named
        diagnosis = Diagnosis(teardown_failure(run.hung_in_teardown, job.timeout_s),
                              TEARDOWN_PHASE, run.hung_in_teardown)
    else:
        diagnosis = diagnose(run.store, job.world_size, run.exits, run.reason)
    blamed = diagnosis.ranks[:1] or [e.rank for e in run.exits if not e.ok][:1]
    message = diagnosis.message
    for rank in blamed:
        log_tail = tail(log_path(run_dir, rank))
        if log_tail:
            message += f"\nlast lines of {log_path(run_dir, rank)}:\n{log_tail}"
    return failure_report(job, partial, message, diagnosis.phase, diagnosis.ranks,
                          run.interrupted)
