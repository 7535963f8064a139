"""Why a run failed: the phase, the ranks to blame, and what they left in their logs.

Composed by whoever outlives the ranks (the local launcher, which hosts the store) from the
phase records in the store (`phases.py`) and the exit status of each rank.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path

from ..layout.rank_text import format_rank_set
from ..rank.phases import (
    RUN_PHASES,
    TEARDOWN_PHASE,
    blamed_by,
    missing_ranks,
    rank_failures,
    rank_phase,
)


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a (log) file, or '' where it cannot be read."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class RankExit:
    """How one rank ended: its exit code, or the signal that killed it."""

    rank: int
    code: int | None
    signal: int | None
    stopped_by_launcher: bool = False

    @property
    def ok(self) -> bool:
        """Ended on its own with a verdict (0 pass, 1 mismatch)."""
        return self.signal is None and self.code in (0, 1)

    @property
    def died(self) -> bool:
        """Ended by a signal nobody sent it here, or with an unexpected exit code."""
        if self.stopped_by_launcher:
            return False
        return self.signal is not None or self.code not in (0, 1, 3)

    def describe(self) -> str:
        if self.signal is not None:
            return f"rank {self.rank} was killed by signal {signal.Signals(self.signal).name}"
        return f"rank {self.rank} exited with code {self.code}"


@dataclass
class Diagnosis:
    """One paragraph for the report, plus the phase and ranks it names."""

    message: str
    phase: str | None
    ranks: list[int] = field(default_factory=list)


def _first_failed_phase(failures: list[tuple[int, str]]) -> str | None:
    """The earliest phase any rank recorded an error in."""
    seen = {message.split(":", 1)[0] for _, message in failures}
    ordered = [p for p in RUN_PHASES if p in seen]
    return ordered[0] if ordered else None


def _stuck(store, phase: str, world_size: int, failures: list[tuple[int, str]]) -> list[int]:
    """Ranks still in `phase` that recorded no error while others did: they passed its barrier
    and then stopped (in a group creation or a collective the others timed out in).
    Only while they are fewer than the ranks that recorded errors: where one rank raised and
    the rest were stopped before their own timeouts, the one with the error is the culprit.
    """
    failed = {r for r, _ in failures}
    stuck = [r for r in range(world_size) if r not in failed and rank_phase(store, r) == phase]
    return stuck if len(stuck) < len(failed) else []


def diagnose(store, world_size: int, exits: list[RankExit], reason: str | None) -> Diagnosis:
    """Blame ranks that died, else ranks that never arrived at the phase that failed, else the
    ranks the first error in that phase names as the ones it waited for (`phases.blamed_by`:
    ranks still in a health step that outlasted timeout_s), else the ranks in that phase that
    recorded no error while others timed out (hung after its barrier), else the rank whose
    error in that phase was recorded first (later errors there are often its
    peers' collectives breaking).

    `reason` is the launcher's own cause (watchdog, Ctrl-C) when no rank died.
    """
    died = [e for e in exits if e.died]
    if died:
        first = died[0]
        phase = rank_phase(store, first.rank)
        ranks = sorted(e.rank for e in died)
        where = f" in phase '{phase}'" if phase else ""
        text = "; ".join(e.describe() for e in died)
        return Diagnosis(f"{text}{where}; the other ranks were stopped", phase, ranks)
    failures = rank_failures(store, world_size)
    phase = _first_failed_phase(failures)
    if phase is None:
        phases = [rank_phase(store, r) for r in range(world_size)]
        reached = [p for p in RUN_PHASES if p in phases]
        phase = reached[-1] if reached else "init"
    in_phase = [(r, m) for r, m in failures if m.split(":", 1)[0] == phase]
    ranks = missing_ranks(store, phase, world_size)
    waited_for = blamed_by(store, in_phase[0][0]) if in_phase and not ranks else []
    stuck = (_stuck(store, phase, world_size, failures)
             if failures and not ranks and not waited_for else [])
    if ranks:
        verb = "did not finish it" if phase == TEARDOWN_PHASE else "did not arrive"
        head = f"phase '{phase}': rank(s) {format_rank_set(ranks)} {verb}"
    elif waited_for:
        ranks = waited_for
        head = (f"phase '{phase}': rank {in_phase[0][0]} timed out waiting for rank(s) "
                f"{format_rank_set(ranks)}")
    elif stuck:
        ranks = stuck
        head = (f"phase '{phase}': rank(s) {format_rank_set(ranks)} did not finish (no error "
                f"of theirs: hung after the phase's barrier, the others timed out waiting)")
    elif in_phase:
        ranks = [in_phase[0][0]]
        head = f"phase '{phase}': rank {ranks[0]} failed"
        if len(in_phase) > 1:
            head += f" first (then rank(s) {format_rank_set(sorted(r for r, _ in in_phase[1:]))})"
    else:
        head = f"phase '{phase}' failed"
    if reason:
        head += f" ({reason})"
    if failures:
        rank, message = (in_phase or failures)[0]
        head += f"; first error: rank {rank}: {message}"
    return Diagnosis(head, phase, ranks)
