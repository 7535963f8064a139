"""The launcher's signals: SIGTERM (`timeout`, a CI cancel, Slurm) and SIGHUP (a closed
terminal) are handled like Ctrl-C.

`install()` makes the three raise a KeyboardInterrupt (`Interrupted` for SIGTERM and SIGHUP),
so every Ctrl-C path (stop the local ranks, cancel the Slurm job, write the report) serves them
too. The exit code of an interrupted run is 128 + the signal's number, as a shell reports a
process killed by it: 130 SIGINT (Ctrl-C), 143 SIGTERM, 129 SIGHUP.

`held()` holds the three back over a block that must not be cut (stopping the ranks, writing
the report, printing the verdict): a signal is recorded in the block's list instead of raised.
Inside `one_run()`, the launcher's frame around one run (local or Slurm), a `held(lasting=True)`
block, the one that starts when the ranks or the job have ended, holds for the rest of the run:
from there on the verdict stands, and no signal may land between two blocks;
`held_in_last_run()` tells a sweep which came, so that it stops before its next point.
`stoppable()` opens the one window a signal may cut (report.md and the rank map, after the
verdict); one held before it shuts the window at once.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """The launcher received SIGTERM or SIGHUP (SIGINT raises a plain KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    came: list[int] | None = None  # not None: signals are recorded here, not raised
    in_run = False  # inside one_run(): a hold, once started, lasts to the run's end
    stoppable = False  # inside stoppable(): the next signal raises
    last_run: list[int] = []  # the signals the last one_run() held (held_in_last_run)


def _handle(signum: int, _frame) -> None:
    if _State.came is not None and not _State.stoppable:
        _State.came.append(signum)
        return
    _State.stoppable = False  # one signal stops the window; later ones are recorded
    if _State.came is not None:
        _State.came.append(signum)
    raise interrupt_for(signum)


def interrupt_for(signum: int) -> KeyboardInterrupt:
    """The exception a signal raises: KeyboardInterrupt for SIGINT, else `Interrupted`."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Interrupted(signum)


def install() -> None:
    """Make SIGINT, SIGTERM and SIGHUP raise in the main thread (call once, early)."""
    for signum in HANDLED:
        signal.signal(signum, _handle)


def reset_in_child() -> None:
    """In a forked rank: every handled signal back to its default (a SIGTERM ends the rank)."""
    _State.came, _State.in_run, _State.stoppable = None, False, False
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
def held(lasting: bool = False) -> Iterator[list[int]]:
    """Run the block with SIGINT, SIGTERM and SIGHUP held back: the block gets a list, and the
    signals that arrive are appended to it instead of raising. Nested blocks share the outer
    list. After the block the signals raise again, unless it is `lasting` and inside
    `one_run()`: then they stay held (and recorded in the same list) until that run ends."""
    if _State.came is not None:  # nested, or a run's hold already on
        yield _State.came
        return
    saved = {s: signal.signal(s, _handle) for s in HANDLED}
    _State.came = came = []
    if lasting and _State.in_run:
        yield came  # lasts: one_run() lets go
        return
    try:
        yield came
    finally:
        _State.came = None
        for signum, handler in saved.items():
            signal.signal(signum, handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold the three signals over native code (torch's and megatron-core's first import):
    a Python exception raised by `_handle` inside C++/pybind11 code aborts the process. The
    first signal that came is raised right after the block, as if it had come then. Inside
    another hold, the block simply joins it."""
    if _State.came is not None:
        yield
        return
    with held() as came:
        yield
    if came:
        raise interrupt_for(came[0])


@contextmanager
def one_run() -> Iterator[None]:
    """The launcher's frame around one run: a `held(lasting=True)` block inside it holds until
    the frame ends (the ranks have ended: from there on the verdict stands)."""
    _State.in_run, _State.last_run = True, []
    try:
        yield
    finally:
        _State.last_run = list(_State.came or [])
        _State.in_run, _State.came, _State.stoppable = False, None, False


def held_in_last_run() -> list[int]:
    """The signals the last `one_run()` held (recorded, not raised: the verdict stood), and
    forgets them. A sweep stops on them between its points."""
    came, _State.last_run = _State.last_run, []
    return came


@contextmanager
def stoppable() -> Iterator[None]:
    """Inside a hold: the window where a signal cuts the block (KeyboardInterrupt), so that
    slow work after the verdict can be stopped. A signal the hold recorded before the window
    opened shuts it: the block does not run, its interrupt raises at once. The window opens
    before that check, so that no signal can fall between the check and the opening."""
    _State.stoppable = True
    try:
        if _State.came:  # recorded before the window opened
            _State.stoppable = False
            raise interrupt_for(_State.came[0])
        yield
    finally:
        _State.stoppable = False
