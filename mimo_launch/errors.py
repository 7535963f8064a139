"""Exit codes, defined once, the error that carries one, and the one way bad input is printed
(standard library only: every layer uses it).

The command's exit codes (`cli.py`): 0 verification passed; 1 a mismatch; 2 bad input, nothing
started (`UsageError`); 3 a failure while running (a rank died, hung or raised, a job failed)
or Slurm that did not answer sbatch;
4 a communication-health problem (check=health with health.fail); 5 a Slurm job still pending
after cluster.pending_timeout_min (cancelled); 128 + the signal when interrupted
(`interrupts.exit_code`: 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP); 141 stdout closed early.
A rank's own exit code is one of 0-3, or 124 when its teardown overran (`phases.TeardownWatchdog`,
as timeout(1) reports it).
"""

import sys

EXIT_PASSED = 0
EXIT_MISMATCH = 1
EXIT_USAGE = 2
EXIT_FAILURE = 3
EXIT_HEALTH = 4
EXIT_NEVER_STARTED = 5
EXIT_TEARDOWN_OVERDUE = 124
EXIT_BROKEN_PIPE = 141


# Bad input, exit 2: a UsageError, mimo_config's MimoConfigError or a value check's ValueError
# (all three are ValueErrors). Every place that validates catches this one type, and
# `message_of` gives its line; the command maps it to the error's `exit_code` (2).
BadInput = ValueError


def message_of(exc: BaseException) -> tuple[str, str | None]:
    """(the one line a user sees for bad input `exc`, its hint line or None)."""
    lines = str(exc).splitlines()
    return (lines[0] if lines else type(exc).__name__), getattr(exc, "hint", None)


class UsageError(ValueError):
    """Bad input that is not a layout rule (unknown key, bad override, missing GPU...): one
    line for the user, exit `exit_code` (2); nothing has started."""

    exit_code = EXIT_USAGE


class HintedUsageError(UsageError):
    """A UsageError with one line of advice to print after it (Hydra's own fix hints)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def usage_error(message: str, hint: str | None = None, prog: str = "mimo-launch") -> int:
    """Print `PROG: error: MESSAGE` (and `PROG: hint: HINT`) to stderr; return EXIT_USAGE."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    if hint:
        print(f"{prog}: hint: {hint}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def refuse(exc: BaseException, prog: str = "mimo-launch") -> int:
    """Print bad input `exc` (`BadInput`) as its one line and hint (`message_of`); return its
    exit code (`exit_code`, EXIT_USAGE where it carries none)."""
    usage_error(*message_of(exc), prog=prog)
    return getattr(exc, "exit_code", EXIT_USAGE)
