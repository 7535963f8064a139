"""The verified hand-off: the user's own function, run on every rank after a passing verification.

`mimo-launch entrypoint=pkg.module:function` names it. It is resolved (imported) before any
rank starts, so a bad value is refused with one line (exit 2); every rank resolves it again
from the same directory (Slurm tasks), calls it with an `EntrypointContext` holding this rank's
verified groups and collections, and bounds it by `entrypoint_timeout_s`: a rank whose function
raises, returns something other than None or 0, or has not returned in time, records its error
and ends with exit code 3, which stops the other ranks (local launcher, srun).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import EXIT_FAILURE
from .groups.pg_collections import MimoProcessGroups
from .mimo_config import MimoParallelismConfig
from .rank.phases import ENTRYPOINT_PHASE, PhaseTracker

_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


class EntrypointError(RuntimeError):
    """The entry point cannot be resolved, or failed on this rank; one line."""


@dataclass
class EntrypointContext:
    """What the user's function gets, on every rank.

    `process_groups`: this rank's verified groups: `.collections[module]` (megatron-core
    ProcessGroupCollection, None outside the module), `.topology`, `.rank_modules`, `.grids`;
    `layout`: the config, every DP resolved; `run_dir`: the run's directory (report.json,
    logs/), shared by every rank; `rank`, `world_size`: this rank in the default group.
    """

    rank: int
    world_size: int
    run_dir: Path
    layout: MimoParallelismConfig
    process_groups: MimoProcessGroups


def resolve_entrypoint(spec: str, search_dir: str | None = None) -> Callable:
    """The function `spec` ('pkg.module:function') names, importing its module with
    `search_dir` (the launch's working directory) first on sys.path. Raises EntrypointError
    (one line) for a malformed spec, a module that does not import, or no such function."""
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise EntrypointError(f"entrypoint must look like pkg.module:function, got {spec!r}")
    module_name, function_name = spec.split(":")
    if search_dir and search_dir not in sys.path:
        sys.path.insert(0, search_dir)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import error of user code is bad input
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise EntrypointError(f"entrypoint={spec}: cannot import module '{module_name}': "
                              f"{type(exc).__name__}: {detail}") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise EntrypointError(f"entrypoint={spec}: module '{module_name}' "
                              f"({getattr(module, '__file__', '?')}) has no function "
                              f"'{function_name}'")
    return function


def run_entrypoint(spec: str, function: Callable, context: EntrypointContext,
                   tracker: PhaseTracker, timeout_s: float, on_timeout: Callable) -> float:
    """Run `function(context)` on this rank as phase 'entrypoint' and return its seconds.

    Collective in the phase sense: the phase starts with the tracker's barrier; rank 0 then
    waits until every rank has returned, at most 2 x `timeout_s`: a rank that hangs is ended
    by its own watchdog first, so the report names it by its own error. Raises EntrypointError
    when the function raises or returns anything but None or 0. When it has not returned within
    `timeout_s`, `on_timeout(error)` records the error and this process ends at once with
    exit code 3 (a thread does it: the function may sit in C++ code).
    """
    def expire() -> None:
        try:
            on_timeout(EntrypointError(f"rank {context.rank}: {spec} did not return within "
                                       f"{timeout_s:.0f}s (entrypoint_timeout_s)"))
        finally:
            print(f"rank {context.rank}: {spec} did not return within {timeout_s:.0f}s; "
                  f"exiting with code {EXIT_FAILURE}", flush=True)
            sys.stderr.flush()
            os._exit(EXIT_FAILURE)

    with tracker.phase(ENTRYPOINT_PHASE):
        watchdog = threading.Timer(timeout_s, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            result = function(context)
        except Exception as exc:
            raise EntrypointError(f"rank {context.rank}: {spec} raised "
                                  f"{type(exc).__name__}: {exc}") from exc
        finally:
            watchdog.cancel()
        if result is not None and not (type(result) is int and result == 0):
            raise EntrypointError(f"rank {context.rank}: {spec} returned {result!r} "
                                  f"(expected None or 0)")
        tracker.finish(ENTRYPOINT_PHASE)
        if context.rank == 0:
            tracker.wait_finished(ENTRYPOINT_PHASE, 2 * timeout_s)
    return tracker.timings[ENTRYPOINT_PHASE]
