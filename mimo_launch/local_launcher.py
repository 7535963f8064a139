"""Start every rank on this machine: import once, fork, rendezvous on a store the parent hosts.

The parent has already imported torch and megatron-core (importing this module does), so each
forked rank shares those pages instead of paying seconds and hundreds of MB again. The parent
forks first and only then creates the TCPStore (no threads exist at fork time), sends its port
to each rank through a pipe, and waits. Rank r writes its output to `<run_dir>/logs/rank<r>.log`.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch.distributed as dist

from .rank_runner import RankJob, run_rank
from .report import Report, read_report, write_report

EXIT_FAILURE = 3
_POLL_S = 0.05


@dataclass
class RankExit:
    """How one rank ended: its exit code, or the signal that killed it."""

    rank: int
    code: int | None
    signal: int | None

    @property
    def ok(self) -> bool:
        return self.signal is None and self.code in (0, 1)

    def describe(self) -> str:
        if self.signal is not None:
            return f"rank {self.rank} was killed by signal {signal.Signals(self.signal).name}"
        return f"rank {self.rank} exited with code {self.code}"


def log_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / "logs" / f"rank{rank}.log"


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a file, or '' where it does not exist."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


RankBody = Callable[[int, "dist.TCPStore"], int]


def _child(world_size: int, rank: int, port_fd: int, log: Path, timeout_s: float,
           body: RankBody) -> None:
    """A forked rank: log to `log`, join the parent's store, run `body`; never returns."""
    code = EXIT_FAILURE
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        (port,) = struct.unpack("!I", os.read(port_fd, 4))
        store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False,
                              timeout=timedelta(seconds=timeout_s))
        code = body(rank, store)
    except BaseException:  # noqa: BLE001 - a rank reports every failure in its log
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _terminate(pids: dict[int, int], grace_s: float = 3.0) -> None:
    """SIGTERM the ranks still running, then SIGKILL whatever has not exited after `grace_s`."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if pid:
            pids.pop(pid, None)
        else:
            time.sleep(_POLL_S)
    for pid in list(pids):
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        pids.pop(pid, None)


def _exit_of(rank: int, status: int) -> RankExit:
    if os.WIFSIGNALED(status):
        return RankExit(rank, None, os.WTERMSIG(status))
    return RankExit(rank, os.WEXITSTATUS(status), None)


def fork_ranks(world_size: int, run_dir: Path, timeout_s: float, body: RankBody,
               watchdog_s: float | None = None) -> tuple[list[RankExit], object]:
    """Fork `world_size` ranks running `body(rank, store)`; wait for them.

    Returns every exit seen and the failure that stopped the run (None when all ranks ended
    with 0 or 1): the first rank that died otherwise, or a message (watchdog, Ctrl-C). When a
    rank dies, the others are stopped at once; `watchdog_s` bounds the whole run.
    """
    run_dir = Path(run_dir)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    pids: dict[int, int] = {}
    writers = []
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
    return _wait(pids, watchdog_s or 4 * timeout_s + 30)


def _wait(pids: dict[int, int], watchdog_s: float) -> tuple[list[RankExit], object]:
    exits: list[RankExit] = []
    failure = None
    deadline = time.monotonic() + watchdog_s
    try:
        while pids:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid:
                exits.append(_exit_of(pids.pop(pid), status))
                if not exits[-1].ok:
                    failure = exits[-1]
                    break
            elif time.monotonic() > deadline:
                failure = f"the run did not finish within {watchdog_s:.0f}s"
                break
            else:
                time.sleep(_POLL_S)
    except KeyboardInterrupt:
        failure = "interrupted (Ctrl-C)"
    finally:
        _terminate(pids)
    return exits, failure


def launch_local(job: RankJob, watchdog_s: float | None = None) -> Report:
    """Run `job`'s ranks here; return rank 0's report, or a failure report (also written)."""
    _, failure = fork_ranks(job.world_size, Path(job.run_dir), job.timeout_s,
                            lambda rank, store: run_rank(job, rank, rank, store), watchdog_s)
    return _final_report(job, failure)


def _final_report(job: RankJob, failure) -> Report:
    run_dir = Path(job.run_dir)
    report = read_report(run_dir)
    if failure is None and report is not None:
        return report
    if isinstance(failure, RankExit):
        log_tail = tail(log_path(run_dir, failure.rank))
        message = f"{failure.describe()}; last lines of its log:\n{log_tail}"
    else:
        message = failure or "rank 0 wrote no report"
    report = Report(passed=False, world_size=job.world_size, backend=job.backend,
                    failure=message)
    write_report(run_dir, report)
    return report
