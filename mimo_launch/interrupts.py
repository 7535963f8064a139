"""The launcher's signals: SIGTERM (`timeout`, a CI cancel, Slurm) and SIGHUP (a closed
terminal) are handled like Ctrl-C.

`install()` makes both raise `Interrupted`, a KeyboardInterrupt, so every Ctrl-C path (stop the
local ranks, cancel the Slurm job, write the report) serves them too. The exit code of an
interrupted run is 128 + the signal's number, as a shell reports a process killed by it:
130 SIGINT (Ctrl-C), 143 SIGTERM, 129 SIGHUP. `deferred()` holds the three back over a block
that must not be cut (printing the verdict), and raises the one that came at its end.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """The launcher received SIGTERM or SIGHUP (SIGINT stays Python's KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum, _frame) -> None:
    raise Interrupted(signum)


def install() -> None:
    """Make SIGTERM and SIGHUP raise `Interrupted` in the main thread (call once, early)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise)


def reset_in_child() -> None:
    """In a forked rank: every handled signal back to its default (a SIGTERM ends the rank)."""
    for signum in HANDLED:
        signal.signal(signum, signal.SIG_DFL)


def signal_of(exc: KeyboardInterrupt) -> int:
    """The signal behind an interrupt: SIGTERM or SIGHUP for `Interrupted`, else SIGINT."""
    return exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)


def describe(signum: int) -> str:
    """'Ctrl-C' for SIGINT, else the signal's name ('SIGTERM')."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def exit_code(signum: int) -> int:
    """128 + the signal number: 130 SIGINT, 143 SIGTERM, 129 SIGHUP."""
    return 128 + int(signum)


@contextmanager
def held() -> Iterator[list[int]]:
    """Run the block with SIGINT, SIGTERM and SIGHUP held back: the block gets a list, and the
    signals that arrive are appended to it instead of raising. The handlers are back after."""
    came: list[int] = []
    saved = {s: signal.signal(s, lambda signum, _frame: came.append(signum)) for s in HANDLED}
    try:
        yield came
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
