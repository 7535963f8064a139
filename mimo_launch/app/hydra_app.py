"""`mimo-launch` as a Hydra application: `hydra.main` reads the command line, so every Hydra
flag works as Hydra documents it (`--multirun`/`-m`, `--cfg job|hydra|all`, `-p`, `--resolve`,
`--info`, `--config-dir`/`-cd`, `--config-name`/`-cn`, `hydra.searchpath`, `--help`,
`--hydra-help`, `-sc`), and so do Hydra's sweepers.

What this module adds to Hydra's behaviour:
- Bad input is one line on stderr, `mimo-launch: error: ...`, exit 2, never a traceback; where
  Hydra numbers ways to fix an override (an ambiguous value), one `mimo-launch: hint:` line
  follows. Hydra's errors reach us as exceptions (HYDRA_FULL_ERROR=1 while Hydra runs, not in
  the ranks); argparse's are read from stderr, which is held until the job starts.
- A single run is validated and its run directory claimed (`launch.claim_output`) in
  `LaunchCallback.on_run_start`, before Hydra makes its output directory; Hydra is then pointed
  at the claimed directory, so bad input or a dry run leaves no directory behind.
- A sweep claims `hydra.sweep.dir` (`sweep.Sweep.claim`); each point validates and runs in its
  own subdirectory; a point's bad input is that point's exit 2 and the sweep goes on; an
  interrupt stops the sweep; the summary is printed and written at the end (`sweep.py`).
  A point Hydra itself cannot compose (an unknown preset) refuses the whole sweep before any
  point runs, as Hydra's sweeper checks every point first.
- `hydra/launcher=submitit_slurm` (Hydra's submitit plugin): each point is one Slurm job whose
  tasks are its ranks (`submitit_sweep.py`); the points are validated and recorded here.
- A bare `--cfg` (this command's own before it was a Hydra app) means `--cfg job --resolve`.
"""

from __future__ import annotations

import io
import os
import re
import sys
import time
import warnings

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from ..app.hydra_job import PROG, AppState, prepare, with_hydra
from ..app.sweep import Point, Sweep, check_subdir
from ..errors import EXIT_USAGE, BadInput, message_of, refuse, usage_error
from ..settings.app_config import (
    LaunchSettings,
    UsageError,
    conf_dir,
    settings_from_config,
)
from ..settings.searchpath import check_command_line

# Flags whose next argument is their value, not an override.
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--experimental-rerun"}
_CFG_KINDS = ("job", "hydra", "all")
# Hydra's message for `--cfg ... -p KEY` where the config has no KEY (it then exits 1).
_PACKAGE_MISSING = re.compile(r"package '[^']*' not found in config")


def _validated(config: DictConfig, output_dir: str | None = None) -> LaunchSettings:
    """`settings_from_config`, with OmegaConf's errors as a UsageError (one line): a value
    whose interpolation cannot be resolved, or a key the composed config lacks (removed with
    `~key`)."""
    from omegaconf.errors import (
        InterpolationResolutionError,
        MissingMandatoryValue,
        OmegaConfBaseException,
    )

    from ..settings.config_schema import unresolvable, value_as_written

    try:
        return (settings_from_config(config) if output_dir is None
                else settings_from_config(config, output_dir))
    except (InterpolationResolutionError, MissingMandatoryValue) as exc:
        key = exc.full_key or "a value"
        raise UsageError(unresolvable(key, value_as_written(config, key), exc)) from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or str(exc).splitlines()[0]
        raise UsageError(f"the config has no key '{key}' (was it removed with ~{key}?); "
                         f"it is required") from None


def _execute(settings: LaunchSettings) -> int:
    """Run a prepared job: plan mode or a launch; the exit code."""
    if settings.config.mode == "plan":  # no rank is started, torch is not even imported
        from ..reports.artifacts import run_plan

        return run_plan(settings)
    from ..app.interrupts import deferred, signal_of

    try:
        with deferred():  # torch's first import: a signal in native code would abort
            from ..app.launch import launch
        return launch(settings)
    except KeyboardInterrupt as exc:  # before the ranks' own handling: report.json says so
        from ..reports.artifacts import report_interrupted

        report_interrupted(settings, signal_of(exc))
        raise


class _Refused(BaseException):
    """Bad input found inside Hydra (`AppState.refused` says what): a BaseException, so that it
    passes Hydra's handlers of a callback's or a job's Exception, which would warn or report
    it and go on."""


class _BrokenPipe(BaseException):
    """Carries a BrokenPipeError (`mimo-launch mode=plan | head`) past Hydra's job runner,
    which would report it as the job's error, to `cli.entry`, which stops quietly."""


class LaunchCallback(Callback):
    """Registered in `conf/config.yaml` (`hydra.callbacks`): validation and claims that must
    come before Hydra creates any directory (or writes multirun.yaml). A refusal is kept in
    `AppState.refused` and raised as `_Refused`, which Hydra's callback runner (it turns an
    Exception into a warning) lets pass; should it not, the task function reports it."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        AppState.release_stderr()
        where = os.getcwd()  # exists: Hydra creates nothing for a refused or claimless run
        try:
            settings = _validated(config)
            prepared = prepare(settings)
        except BadInput as exc:
            AppState.refused = exc
        else:
            AppState.settings = prepared
            if prepared is not settings:  # claimed (not a dry run, not a plan without picture)
                where = str(prepared.run_dir)
        # Hydra makes hydra.run.dir next (run_job): point it at the claimed directory.
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = where
        if AppState.refused is not None:
            raise _Refused()

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        AppState.release_stderr()
        try:
            check_subdir(str(OmegaConf.to_container(config.hydra.sweep, resolve=False)
                             .get("subdir", "")))
            AppState.sweep = Sweep.claim(config.hydra.sweep.dir)
            if str(config.hydra.launcher.get("_target_", "")).startswith("hydra_plugins."):
                from .submitit_sweep import check_plugin, point_to

                check_plugin(config)  # submitit_slurm: each point one Slurm job
                point_to(config, AppState.sweep.sweep_dir)
        except UsageError as exc:
            AppState.refused = exc
            raise _Refused() from None


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def task(cfg: DictConfig) -> int:
    """Hydra's task function: one run, or one point of a sweep. Returns its exit code (also
    kept in `AppState.code`, as hydra.main returns nothing)."""
    AppState.release_stderr()
    if AppState.full_error is None:  # the ranks and the user's entry point do not inherit it
        os.environ.pop("HYDRA_FULL_ERROR", None)
    try:
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.MULTIRUN:
            from .submitit_sweep import in_plugin_task, run_point

            if in_plugin_task():  # a Slurm task of a point's job: one rank
                return run_point(cfg)
            if AppState.refused is not None:
                raise _Refused()
            AppState.code = _sweep_point(cfg)
        elif AppState.refused is not None:
            AppState.code = refuse(AppState.refused)
        else:
            AppState.code = _execute(AppState.settings or _single(cfg))
    except BrokenPipeError:
        raise _BrokenPipe() from None
    finally:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    return AppState.code


def _single(cfg: DictConfig) -> LaunchSettings:
    """A single run's settings where no LaunchCallback ran (another primary config): validated
    in Hydra's run directory, which Hydra has already made."""
    try:
        return prepare(_validated(with_hydra(cfg), HydraConfig.get().runtime.output_dir))
    except BadInput as exc:
        AppState.refused = exc
        raise _Refused() from None


def _unverified(settings: LaunchSettings) -> str | None:
    """A point that verifies nothing when it exits 0: 'planned' (mode=plan), 'dry run' (Slurm's
    dry_run=true); None for a run."""
    from ..app.sweep import DRY_RUN, PLANNED

    if settings.config.mode == "plan":
        return PLANNED
    if settings.config.get("dry_run") and settings.cluster.launcher == "slurm":
        return DRY_RUN
    return None


def _sweep_point(cfg: DictConfig) -> int:
    from ..app.interrupts import exit_code, held, held_in_last_run, interrupt_for, signal_of

    hc = HydraConfig.get()
    if AppState.sweep is None:  # a primary config without LaunchCallback
        try:
            AppState.sweep = Sweep.claim(hc.sweep.dir)
        except UsageError as exc:
            AppState.refused = exc
            raise _Refused() from None
    point = Point(int(hc.job.num), [str(o) for o in hc.overrides.task], hc.runtime.output_dir)
    print(f"{PROG}: sweep point #{point.num}: {point.label}",
          flush=True)
    start, error, unverified = time.monotonic(), None, None
    try:
        AppState.sweep.point_dir(hc.runtime.output_dir)
        settings = prepare(_validated(with_hydra(cfg), hc.runtime.output_dir))
    except BadInput as exc:
        error = message_of(exc)[0]
        code = refuse(exc)
    else:
        point.run_dir = str(settings.run_dir)
        unverified = _unverified(settings)
        try:
            code = _execute(settings)
        except KeyboardInterrupt as exc:  # before the ranks' own handling: the point counts
            code = exit_code(signal_of(exc))
    with held() as came:  # the point is recorded whole
        AppState.sweep.record(point, code, time.monotonic() - start, error, unverified)
    came = held_in_last_run() + came  # held after the verdict: it stood, the sweep stops
    signum = came[0] if came else code - 128 if code > 128 else None
    if signum is not None:  # interrupted: stop the sweep here
        raise interrupt_for(signum)
    return code


def _overrides(args: list[str]) -> list[str]:
    out, skip = [], False
    for arg in args:
        if not skip and not arg.startswith("-"):
            out.append(arg)
        skip = arg in _VALUE_FLAGS
    return out


def _compat(args: list[str]) -> list[str]:
    """A bare `--cfg` (no job|hydra|all after it) is `--cfg job --resolve`."""
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg == "--cfg" and (i + 1 == len(args) or args[i + 1] not in _CFG_KINDS):
            out += ["job"] + ([] if "--resolve" in args else ["--resolve"])
    return out


def _argparse_error(text: str) -> str | None:
    for line in text.splitlines():
        if ": error: " in line:
            return line.split(": error: ", 1)[1]
    return None


def run(args: list[str]) -> int:
    """Run the command line `args` (without the program name) through `hydra.main`; return the
    exit code (module docstring). KeyboardInterrupt (also SIGTERM/SIGHUP, `interrupts`)
    propagates out of a single run; a sweep catches it, writes its summary and returns 128 +
    the signal."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ..app.interrupts import exit_code, signal_of

    args = _compat(args)
    # a search path entry that is not there: refused in one line (settings/searchpath.py),
    # before Hydra composes (a config group from it would seem not to exist)
    warnings.filterwarnings("ignore", message="provider=hydra.searchpath .* is not available")
    try:
        check_command_line(_overrides(args))
    except UsageError as exc:
        return refuse(exc)
    saved_argv = sys.argv
    AppState.code, AppState.settings, AppState.sweep, AppState.refused = None, None, None, None
    AppState.full_error = os.environ.get("HYDRA_FULL_ERROR")
    AppState.stderr, AppState.held = sys.stderr, io.StringIO()
    sys.argv = [PROG, *args]
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.stderr = AppState.held
    interrupted = None
    try:
        task()
        code = 0 if AppState.code is None else AppState.code
    except SystemExit as exc:  # argparse's errors (2), --help and the like (0)
        held = AppState.held.getvalue() if AppState.held is not None else ""
        AppState.held = io.StringIO()  # what argparse wrote is replaced by one line
        AppState.release_stderr()
        message = _argparse_error(held) if exc.code == 2 else None
        package = _PACKAGE_MISSING.search(held) if exc.code == 1 else None
        if message is not None:
            code = usage_error(f"{message} (overrides look like key=value; see --help)")
        elif package is not None:  # --cfg ... -p KEY: Hydra's own line and exit 1
            code = usage_error(f"{package.group(0)} (-p/--package takes a dotted key of the "
                          f"config, e.g. mimo.modules)")
        else:
            sys.stderr.write(held)
            code = exc.code if isinstance(exc.code, int) else 1
    except (HydraException, OmegaConfBaseException) as exc:
        from ..settings.hydra_errors import describe

        AppState.release_stderr()
        code = usage_error(*describe(exc, _overrides(args)))
    except BadInput as exc:
        AppState.release_stderr()
        code = refuse(exc)
    except _BrokenPipe:
        raise BrokenPipeError() from None
    except _Refused:
        code = refuse(AppState.refused)
    except KeyboardInterrupt as exc:
        AppState.release_stderr()
        if AppState.settings is not None:  # a single run's directory is claimed: report.json
            from ..app.interrupts import held as hold
            from ..reports.artifacts import report_interrupted

            with hold():
                report_interrupted(AppState.settings, signal_of(exc))
        if AppState.sweep is None or not AppState.sweep.points:  # nothing to summarise
            if AppState.sweep is not None:
                AppState.sweep.release_if_empty()
            raise
        interrupted = exit_code(signal_of(exc))
        code = interrupted
    finally:
        AppState.release_stderr()
        sys.argv = saved_argv
        if AppState.full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = AppState.full_error
    if AppState.sweep is not None:
        code = _finish_sweep(AppState.sweep, code, interrupted)
    return code


def _finish_sweep(sweep: Sweep, code: int, interrupted: int | None) -> int:
    """Print and write the summary of the points run; the sweep's exit code."""
    from ..app.interrupts import held

    if not sweep.points:
        sweep.release_if_empty()
        return code
    with held():  # the summary is written whole
        table = sweep.table(interrupted)
        print(f"\n{PROG}: sweep summary ({sweep.sweep_dir})\n\n{table}", flush=True)
        try:
            paths = sweep.write(interrupted)
            print(f"sweep: {paths[0]} (and sweep.json)", flush=True)
        except OSError as exc:
            print(f"{PROG}: warning: sweep summary not written: {exc}", file=sys.stderr)
    final = sweep.exit_code(interrupted)
    return max(final, code) if code == EXIT_USAGE and final == 0 else final


__all__ = ["LaunchCallback", "run", "task"]
