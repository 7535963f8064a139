"""Phases of a rank's run, with a named-rank barrier at each start, timeouts and fault injection.

Each rank goes through `PHASES` in order. On entering a phase it records the phase in the store,
applies an injected fault if one targets it, and waits (at most `timeout_s`) until every rank has
arrived. A rank that died or hung therefore stops every other rank within the timeout, and the
error names the ranks that did not arrive, on any backend. Keys (all under `mimo/`):
`phase/<rank>` the phase a rank is in, `arrived/<phase>/<rank>`, `count/<phase>` arrivals,
`open/<phase>` set by the last arrival, `fail/<rank>` a rank's error (numbered in the order
the errors were recorded, `failures` counts them), `finished/<phase>/<rank>`,
`finishes/<phase>` and `closed/<phase>`: the same for leaving a phase (`PhaseTracker.finish`).
After a passing verification, `check=health` adds the phase `health`, and a run with an entry
point one more, `entrypoint`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from ..errors import EXIT_TEARDOWN_OVERDUE
from ..layout.rank_text import format_rank_set

PHASES = ("init", "grids", "embedding", "verify")  # the builder's phases, every run
HEALTH_PHASE = "health"  # check=health: the health stage, after a passing verification
ENTRYPOINT_PHASE = "entrypoint"  # the user's function, after a passing verification
ALL_PHASES = PHASES + (HEALTH_PHASE, ENTRYPOINT_PHASE)
# Destroying the groups, after the verdict (and the entry point): no barrier; each rank ends
# itself when still in it `timeout_s` after it entered (`TeardownWatchdog`, exit
# EXIT_TEARDOWN_OVERDUE), and the local launcher stops such a rank too.
TEARDOWN_PHASE = "teardown"
# After the watchdog's own deadline: SIGALRM (default action: the process ends) for a rank
# whose watchdog thread cannot run (a hang in C++ holding the GIL).
_ALARM_GRACE_S = 5
RUN_PHASES = ALL_PHASES + (TEARDOWN_PHASE,)
# The phases after the verdict: a failure there leaves a passing verification standing.
AFTER_VERIFY = RUN_PHASES[RUN_PHASES.index("verify") + 1:]
# The phases before it: a failure there means verification never ran.
BEFORE_VERIFY = RUN_PHASES[:RUN_PHASES.index("verify")]
FAULT_WHERE = ("start", "after_barrier")
_FAULT_KINDS = ("kill_rank", "hang_rank", "slow_rank")


class PhaseError(RuntimeError):
    """A phase could not complete; `missing` lists ranks that never arrived, where known."""

    def __init__(self, phase: str, message: str, missing: list[int] | None = None):
        super().__init__(f"phase '{phase}': {message}")
        self.phase = phase
        self.missing = missing


@dataclass(frozen=True)
class FaultSpec:
    """Make `kill_rank` die (SIGKILL) or `hang_rank` stop forever in `phase`: on entering it,
    before its barrier (`where='start'`), or just after the barrier (`'after_barrier'`), so
    that the other ranks wait in that phase's group creation or collectives. In the teardown
    phase both mean on entering it. `artifacts_delay_s`: the launcher waits that long after
    printing the verdict, before writing report.md and the rank map. `slow_rank` runs every
    timed iteration of the health stage `slow_factor` times slower."""

    kill_rank: int | None = None
    hang_rank: int | None = None
    phase: str | None = None
    where: str = "start"
    artifacts_delay_s: float = 0.0
    slow_rank: int | None = None
    slow_factor: float = 4.0

    @property
    def active(self) -> bool:
        return self.kill_rank is not None or self.hang_rank is not None

    def validate(self, world_size: int) -> FaultSpec:
        """Raise ValueError (one line) unless every field fits a world of `world_size` ranks."""
        for kind in _FAULT_KINDS:
            rank = getattr(self, kind)
            if rank is None:
                continue
            if isinstance(rank, bool) or not isinstance(rank, int):
                raise ValueError(f"fault.{kind} must be a rank number, got {rank!r}")
            if not 0 <= rank < world_size:
                raise ValueError(f"fault.{kind}={rank} is not a rank of the world "
                                 f"[0, {world_size})")
        factor = self.slow_factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1:
            raise ValueError(f"fault.slow_factor must be a number >= 1, got {factor!r}")
        if (self.active or self.phase is not None) and self.phase not in RUN_PHASES:
            raise ValueError(f"fault.phase must be one of {', '.join(RUN_PHASES)}"
                             f"{' when a fault is set' if self.active else ''}, "
                             f"got {'null' if self.phase is None else repr(self.phase)}")
        if self.where not in FAULT_WHERE:
            raise ValueError(f"fault.where must be one of {', '.join(FAULT_WHERE)}, got "
                             f"{self.where!r}")
        delay = self.artifacts_delay_s
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not delay >= 0:
            raise ValueError(f"fault.artifacts_delay_s must be a number of seconds >= 0, got "
                             f"{delay!r}")
        return self

    def apply(self, rank: int, phase: str, where: str = "start") -> None:
        """Die or hang here if this rank, phase and place are the target."""
        if phase != self.phase or where != self.where:
            return
        if rank == self.kill_rank:
            print(f"fault injection: rank {rank} kills itself in phase '{phase}' ({where})",
                  flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        if rank == self.hang_rank:
            print(f"fault injection: rank {rank} hangs in phase '{phase}' ({where})", flush=True)
            while True:
                time.sleep(3600)


def _key(*parts) -> str:
    return "mimo/" + "/".join(str(p) for p in parts)


class PhaseTracker:
    """One rank's view of the phases; `store` is the run's rendezvous store (a TCPStore)."""

    def __init__(self, store, rank: int, world_size: int, timeout_s: float,
                 fault: FaultSpec | None = None, on_enter=None):
        """`on_enter(phase)`, if given, is called on entering each phase, before its barrier
        (a Slurm task records its phase in a file with it: `rank_status.RankStatus`)."""
        self.store, self.rank, self.world_size = store, rank, world_size
        self.on_enter = on_enter
        self.timeout = timedelta(seconds=timeout_s)
        self.fault = fault or FaultSpec()
        self.current: str | None = None
        self.timings: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        """Enter `name` (barrier over every rank), run the body, record its duration."""
        self.current = name
        self.store.set(_key("phase", self.rank), name)
        if self.on_enter is not None:
            self.on_enter(name)
        self.fault.apply(self.rank, name)
        self._arrive(name)
        self.fault.apply(self.rank, name, "after_barrier")
        start = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - start

    @contextmanager
    def teardown(self, on_overdue=None):
        """Enter the teardown phase (no barrier: each rank destroys its own groups), bounded by
        `timeout_s` (`TeardownWatchdog`: `on_overdue()`, `overdue/teardown/<rank>` in the
        store, then exit EXIT_TEARDOWN_OVERDUE); leaving it marks `finished/teardown/<rank>`
        (best effort: the store may be gone). The local launcher also watches it
        (`arrivals(store, TEARDOWN_PHASE)`, `rank_phase`), rank 0 waits for it
        (`teardown_stragglers`)."""
        self.current = TEARDOWN_PHASE
        self.store.set(_key("phase", self.rank), TEARDOWN_PHASE)
        self.store.add(_key("count", TEARDOWN_PHASE), 1)
        if self.on_enter is not None:
            self.on_enter(TEARDOWN_PHASE)

        def overdue() -> None:
            if on_overdue is not None:
                on_overdue()
            self.store.set(_key("overdue", TEARDOWN_PHASE, self.rank), "1")
            self.store.add(_key("overdues", TEARDOWN_PHASE), 1)

        with TeardownWatchdog(self.rank, self.timeout.total_seconds(), overdue):
            self.fault.apply(self.rank, TEARDOWN_PHASE, self.fault.where)
            yield
        try:
            self.finish(TEARDOWN_PHASE)
        except Exception:  # noqa: BLE001 - rank 0's store may be gone; nobody waits then
            pass

    def teardown_stragglers(self, wait_s: float) -> list[int]:
        """Rank 0, after its own teardown: wait (at most `wait_s` seconds) until every rank
        has left teardown or been ended there by its watchdog; return the ranks ended there
        (`overdue/teardown/<rank>`), plus, when `wait_s` passed, those still in it ([]
        when the store cannot be read)."""
        deadline = time.monotonic() + wait_s
        try:
            while True:
                left = int(self.store.add(_key("finishes", TEARDOWN_PHASE), 0))
                overdue = int(self.store.add(_key("overdues", TEARDOWN_PHASE), 0))
                if left + overdue >= self.world_size or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            late = [] if left + overdue >= self.world_size else \
                _unmarked(self.store, "finished", TEARDOWN_PHASE, self.world_size)
            return sorted(set(late) | set(overdue_in_teardown(self.store, self.world_size)))
        except Exception:  # noqa: BLE001 - the store's own errors: nothing to name
            return []

    def _arrive(self, name: str) -> None:
        self._mark(name, "arrived", "count", "open")
        self._wait(name, "open", "arrived", self.timeout, "did not arrive")

    def finish(self, name: str) -> None:
        """Record that this rank has left phase `name` (no waiting)."""
        self._mark(name, "finished", "finishes", "closed")

    def wait_finished(self, name: str, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) until every rank has left phase `name`; else PhaseError
        naming the ranks that have not (named on rank 0 only)."""
        self._wait(name, "closed", "finished", timedelta(seconds=timeout_s), "did not finish")

    def reach(self, step: str) -> None:
        """Record that this rank has reached `step`, a point inside the current phase that
        every rank passes (a health step's barrier), for `not_reached`."""
        self.store.set(_key("reached", step, self.rank), "1")

    def not_reached(self, step: str) -> list[int]:
        """The ranks that have not reached `step` (one look-up per rank: failure path only)."""
        return _unmarked(self.store, "reached", step, self.world_size)

    def _mark(self, name: str, mark: str, count: str, gate: str) -> None:
        self.store.set(_key(mark, name, self.rank), "1")
        if self.store.add(_key(count, name), 1) == self.world_size:
            self.store.set(_key(gate, name), "1")

    def _wait(self, name: str, gate: str, mark: str, timeout: timedelta, verb: str) -> None:
        try:
            self.store.wait([_key(gate, name)], timeout)
        except Exception:  # noqa: BLE001 - the store raises its own error types on timeout
            missing = (_unmarked(self.store, mark, name, self.world_size) if self.rank == 0
                       else None)
            who = f"rank(s) {format_rank_set(missing)}" if missing else "some rank(s)"
            raise PhaseError(name, f"{who} {verb} within {timeout.total_seconds():.0f}s",
                             missing) from None

    def record_failure(self, exc: BaseException) -> None:
        """Leave this rank's error in the store, numbered in the order errors arrive, for
        whoever writes the report (best effort), with the ranks it names as the cause
        (`PhaseError.missing`: `blamed_by`)."""
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        missing = getattr(exc, "missing", None)
        try:
            if missing:
                self.store.set(_key("blame", self.rank), ",".join(map(str, missing)))
            seq = self.store.add(_key("failures"), 1)
            self.store.set(_key("fail", self.rank), f"{seq}|{self.current}: {message}"[:500])
        except Exception:  # noqa: BLE001 - the store may be gone with rank 0
            pass


def overdue_in_teardown(store, world_size: int) -> list[int]:
    """The ranks their own watchdog ended in teardown (`overdue/teardown/<rank>`); one store
    look-up per rank once any has been."""
    if not int(store.add(_key("overdues", TEARDOWN_PHASE), 0)):
        return []
    return [r for r in range(world_size) if store.check([_key("overdue", TEARDOWN_PHASE, r)])]


def teardown_overdue(ranks: list[int], timeout_s: float) -> str:
    """'rank(s) 6 did not end within 5s of entering phase 'teardown'' (both launchers' words)."""
    return (f"rank(s) {format_rank_set(ranks)} did not end within {timeout_s:.0f}s of entering "
            f"phase '{TEARDOWN_PHASE}'")


def teardown_failure(ranks: list[int], timeout_s: float) -> str:
    """The report's failure line for ranks stopped in teardown (both launchers')."""
    return f"phase '{TEARDOWN_PHASE}': {teardown_overdue(ranks, timeout_s)}; stopped"


class TeardownWatchdog:
    """A rank's own bound on its teardown, so that every launcher gets it (Slurm, torchrun and
    the local one): unless the block ends within `timeout_s` seconds, a daemon thread prints
    one line to the rank's log, calls `on_overdue()` (best effort: a Slurm task records its
    ending in its status file) and ends the process with EXIT_TEARDOWN_OVERDUE (`os._exit`:
    whatever hangs is never unwound). Where SIGALRM has its default action, an alarm
    `_ALARM_GRACE_S` later ends the process even when that thread cannot run."""

    def __init__(self, rank: int, timeout_s: float, on_overdue=None):
        self.rank, self.timeout_s, self.on_overdue = rank, timeout_s, on_overdue
        self._done = threading.Event()
        self._alarm = signal.getsignal(signal.SIGALRM) == signal.SIG_DFL

    def __enter__(self) -> TeardownWatchdog:
        threading.Thread(target=self._watch, daemon=True, name="mimo-teardown").start()
        if self._alarm:
            signal.alarm(int(self.timeout_s) + 1 + _ALARM_GRACE_S)
        return self

    def __exit__(self, *_exc) -> None:
        self._done.set()
        if self._alarm:
            signal.alarm(0)

    def _watch(self) -> None:
        if self._done.wait(self.timeout_s):
            return
        try:
            print(f"rank {self.rank}: {teardown_overdue([self.rank], self.timeout_s)}; ending "
                  f"it (exit {EXIT_TEARDOWN_OVERDUE})", flush=True)
            if self.on_overdue is not None:
                self.on_overdue()
        except BaseException:  # noqa: BLE001 - the exit below must happen whatever failed
            pass
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_TEARDOWN_OVERDUE)


def _unmarked(store, mark: str, phase: str, world_size: int) -> list[int]:
    return [r for r in range(world_size) if not store.check([_key(mark, phase, r)])]


def missing_ranks(store, phase: str, world_size: int) -> list[int]:
    """Ranks that have not arrived at `phase` (one store look-up per rank: failure path only);
    for teardown, which has no barrier, the ranks still in it (`in_teardown`)."""
    if phase == TEARDOWN_PHASE:
        return in_teardown(store, range(world_size))
    return _unmarked(store, "arrived", phase, world_size)


def in_teardown(store, ranks) -> list[int]:
    """Of `ranks`, those in the teardown phase that have not finished it (rank 0, waiting for
    the others after its own teardown, has finished it)."""
    return [r for r in ranks if rank_phase(store, r) == TEARDOWN_PHASE
            and not store.check([_key("finished", TEARDOWN_PHASE, r)])]


def arrivals(store, phase: str) -> int:
    """How many ranks have arrived at `phase` so far."""
    return int(store.add(_key("count", phase), 0))


def rank_phase(store, rank: int) -> str | None:
    """The phase `rank` last entered, or None if it never got that far."""
    key = _key("phase", rank)
    return store.get(key).decode() if store.check([key]) else None


def blamed_by(store, rank: int) -> list[int]:
    """The ranks `rank`'s recorded error names as its cause (it waited for them), or []."""
    key = _key("blame", rank)
    return [int(r) for r in store.get(key).decode().split(",")] if store.check([key]) else []


def rank_failures(store, world_size: int) -> list[tuple[int, str]]:
    """(rank, 'phase: error') of every rank that recorded an error, first recorded first (one
    store look-up per rank: failure path only)."""
    found = []
    for rank in range(world_size):
        key = _key("fail", rank)
        if store.check([key]):
            seq, _, message = store.get(key).decode().partition("|")
            found.append((int(seq), rank, message))
    return [(rank, message) for _, rank, message in sorted(found)]
