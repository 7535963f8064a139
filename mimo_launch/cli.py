"""The `mimo-launch` command: validate, launch, print the report, exit with its code.

Exit codes: 0 verification passed; 1 a mismatch; 2 bad input (nothing was started);
3 a failure while running (a rank died or hung, a job failed); 4 a communication-health
problem (check=health); 5 a Slurm job still pending after cluster.pending_timeout_min
(cancelled); 130/143/129 interrupted by SIGINT (Ctrl-C)/SIGTERM/SIGHUP (`interrupts.py`).
"""

from __future__ import annotations

import os
import sys

from .app_config import UsageError, claim_output, load_settings
from .mimo_config import MimoConfigError

EXIT_USAGE = 2

USAGE = """usage: mimo-launch [OVERRIDE ...]

Bring up the process groups of a MIMO layout, verify them and print the report.
Overrides are Hydra's, e.g.:
  mimo-launch                                   the default 8-rank layout, locally on CPU
  mimo-launch mimo=vlm_16                       another preset (conf/mimo/*.yaml)
  mimo-launch mimo=single_8 mimo.modules.language.tp=4
                                                change one field (here TP4 PP2, DP derived: 1)
  mimo-launch timeout_s=120 hydra.run.dir=out   timeouts and the output directory
  mimo-launch --cfg                             print the composed config and exit
  mimo-launch mode=plan plan.rank=5             print the layout and rank 5's groups; start
                                                nothing (mimo=large_16k: 16,384 ranks)
  mimo-launch entrypoint=pkg.module:function    after a passing verification, run your function
                                                on every rank with its verified groups
  mimo-launch check=health                      after a passing verification, time every group's
                                                collectives and name slow ranks and nodes
  mimo-launch collect RUN_DIR                   follow a Slurm job submitted with wait=false
                                                (or by a stopped launcher), write its report
Exit codes: 0 passed, 1 mismatch, 2 bad input, 3 failure while running, 4 health problem,
5 a Slurm job still pending after cluster.pending_timeout_min (cancelled), 130/143/129
interrupted by Ctrl-C/SIGTERM/SIGHUP."""


def _error(message: str) -> int:
    print(f"mimo-launch: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["collect"]:  # mimo-launch collect <run dir>: a submitted Slurm job
        if len(args) != 2:
            return _error("usage: mimo-launch collect <run dir>")
        from .slurm_launcher import collect

        return collect(args[1])
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return 0
    show_cfg = "--cfg" in args
    args = [a for a in args if a != "--cfg"]
    flags = [a for a in args if a.startswith("-")]
    if flags:
        return _error(f"unknown option {flags[0]} (overrides look like key=value; see --help)")
    from omegaconf.errors import OmegaConfBaseException

    try:
        settings = load_settings(args)
    except (UsageError, MimoConfigError) as exc:
        return _error(str(exc))
    except OmegaConfBaseException as exc:  # e.g. an interpolation that does not resolve
        return _error(str(exc).splitlines()[0])
    if show_cfg:
        from omegaconf import OmegaConf

        cfg = {k: settings.config[k] for k in settings.config if k != "hydra"}
        print(OmegaConf.to_yaml(OmegaConf.create(cfg), resolve=True), end="")
        return 0
    try:
        if settings.config.mode == "plan":
            from .plan import check_plan_size

            check_plan_size(settings.world_size)
        settings = claim_output(settings)
    except (UsageError, ValueError) as exc:  # run_dir.RunDirError, a plan too large
        return _error(str(exc))
    if settings.config.mode == "plan":  # no rank is started, torch is not even imported
        from .artifacts import run_plan

        return run_plan(settings)
    from .launch import launch

    return launch(settings)


def entry() -> None:
    """Console-script entry point.

    By the time `main` returns, the verdict is printed and every file is written (atomically,
    fsynced) and every rank has ended, so the interpreter's teardown of torch, megatron-core
    and matplotlib (~0.15 s) is skipped: flush, then leave at once.
    """
    from .interrupts import describe, exit_code, install, signal_of

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
        code = 141
    os._exit(code)


if __name__ == "__main__":
    entry()
