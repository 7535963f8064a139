"""The `mimo-launch` command: validate, launch, print the report, exit with its code.

Exit codes: `errors.py` (0 passed, 1 mismatch, 2 bad input, 3 a failure while running, 4 a
health problem, 5 never started on Slurm, 128 + the signal when interrupted).
A sweep (`-m`) exits with its worst point's code (`sweep.py`). The command line is Hydra's
(`hydra_app.py`), but for `mimo-launch collect RUN_DIR`.
"""

from __future__ import annotations

import os
import sys

from .errors import EXIT_BROKEN_PIPE, usage_error


def main(argv: list[str] | None = None) -> int:
    """Run the command line (`sys.argv[1:]` by default); return the exit code.

    `collect RUN_DIR` follows a submitted Slurm job; anything else goes to the Hydra
    application (`hydra_app.run`: overrides, Hydra's flags, sweeps)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["collect"]:  # mimo-launch collect <run dir>: a submitted Slurm job
        if len(args) != 2:
            return usage_error("usage: mimo-launch collect <run dir>")
        from .launchers.slurm_launcher import collect

        return collect(args[1])
    from .app.hydra_app import run

    return run(args)


def entry() -> None:
    """Console-script entry point.

    By the time `main` returns, the verdict is printed and every file is written (atomically,
    fsynced) and every rank has ended, so the interpreter's teardown of torch, megatron-core
    and matplotlib (~0.15 s) is skipped: flush, then leave at once.
    """
    from .app.interrupts import describe, exit_code, install, signal_of

    install()  # SIGTERM and SIGHUP: as Ctrl-C
    try:
        code = main()
        sys.stdout.flush()
        sys.stderr.flush()
    except KeyboardInterrupt as exc:  # before any rank started, or while they were stopped
        signum = signal_of(exc)
        print(f"mimo-launch: interrupted ({describe(signum)})", file=sys.stderr, flush=True)
        code = exit_code(signum)
    except BrokenPipeError:  # e.g. `mimo-launch mode=plan | head`: stop quietly, as shells do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    os._exit(code)


if __name__ == "__main__":
    entry()
