"""Every use of a private member of torch, megatron-core or submitit, in one place.

Each one is a fast path or a convenience with a fallback to the public API. Each is detected at
run time, where it is used, and is dropped by itself where it would not be exact. Setting
`MIMO_LAUNCH_NO_FAST_PATHS=1` drops all of them:

| private member | what it buys | fallback (public API) |
| --- | --- | --- |
| `torch.distributed.distributed_c10d._world.group_count` | a rank skips `new_group` for groups it is not in and advances torch's group counter itself: O(its own groups) calls instead of O(all groups in the world) | `dist.new_group` for every group on every rank |
| `HyperCommGrid._pgs` (megatron-core) | groups made with that skip are stored in the grid, so `grid.get_pg` returns them | `HyperCommGrid.create_pg` (every rank calls `new_group` for every group) |
| loading `megatron/core/hyper_comm_grid.py` without `megatron/core/__init__.py` | saves seconds and ~100 MB per process | `from megatron.core.hyper_comm_grid import HyperCommGrid` |
| `ProcessGroup._get_backend(device).options._timeout` (torch) | the verifier checks that every group was made with the run's timeout | none public: the check is skipped, with the reason in the verdict |
| submitit's `_make_submission_file_text` | `dry_run=true` prints submitit's own sbatch script | the parameters and command, as `#SBATCH` lines |

Tested on megatron-core 0.16.1 (Python 3.11) and 0.19.x (Python 3.12), torch 2.13 and 2.14:
`tests/test_compat.py`, `tests/test_grid_contract.py`, `tests/test_perf_paths.py`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path

import torch.distributed as dist
from torch.distributed import distributed_c10d as _c10d

NO_FAST_PATHS = "MIMO_LAUNCH_NO_FAST_PATHS"
_GRID_MODULE = "megatron.core.hyper_comm_grid"


def fast_paths_allowed() -> bool:
    """False when the user turned the fast paths off (`MIMO_LAUNCH_NO_FAST_PATHS=1`)."""
    return os.environ.get(NO_FAST_PATHS) != "1"


# ---- torch: skipping non-member new_group calls --------------------------------------------

def can_skip_non_member_groups() -> bool:
    """Whether `dist.new_group` for a group this rank is not in would only advance torch's
    group counter, in the current default process group.

    True where torch names groups by `_world.group_count` and does nothing else for a
    non-member: no bound device (NCCL would split the parent communicator on every rank), no
    barrier after each creation (`TORCH_DIST_INIT_BARRIER=1`), and no default group that makes
    subgroups itself (torch hands those to `default_pg.new_group`).
    """
    if not fast_paths_allowed():
        return False
    world = getattr(_c10d, "_world", None)
    default = dist.group.WORLD
    if callable(getattr(default, "new_group", None)):
        return False
    return (isinstance(getattr(world, "group_count", None), int)
            and getattr(default, "bound_device_id", None) is None
            and not _barrier_after_each_group())


def _barrier_after_each_group() -> bool:
    """Whether torch puts a world-wide barrier after every `new_group`: it reads
    `TORCH_DIST_INIT_BARRIER` as an integer (so '01' and ' 1' count); a value it cannot read
    counts as yes (torch itself would fail on it: do not guess)."""
    try:
        return int(os.environ.get("TORCH_DIST_INIT_BARRIER", "0")) == 1
    except ValueError:
        return True


def skip_non_member_groups(count: int) -> None:
    """Advance torch's group counter past `count` groups this rank is not in, exactly as that
    many `dist.new_group` calls would. Only where `can_skip_non_member_groups()`."""
    _c10d._world.group_count += count


def group_count() -> int | None:
    """torch's per-process group counter (the next group's name), or None where torch has
    none; for tests and benchmarks that check the skip stays in step."""
    return getattr(getattr(_c10d, "_world", None), "group_count", None)


def is_group_member(group) -> bool:
    """Whether `group` is a process group this rank belongs to (not None, not torch's
    non-member sentinel)."""
    return group is not None and group is not dist.GroupMember.NON_GROUP_MEMBER


def group_timeout(group, device) -> float | None:
    """Seconds after which a collective in `group` (this rank a member) is abandoned, as the
    group's backend on `device` holds it (the `timeout` given to `dist.new_group`), or None
    where torch does not expose it: it has no public accessor, so this reads the backend's
    options, guarded."""
    if not fast_paths_allowed():
        return None
    try:
        timeout = group._get_backend(device).options._timeout
        return float(timeout.total_seconds())
    except Exception:  # noqa: BLE001 - any surprise: not readable here
        return None


def group_name(group) -> str | None:
    """torch's name of `group` (its store prefix: members of one group share it), or None
    where the installed torch has no public `ProcessGroup.group_name`."""
    name = getattr(group, "group_name", None)
    return name if isinstance(name, str) else None


# ---- megatron-core: HyperCommGrid ----------------------------------------------------------

def load_hypercomm_grid() -> type:
    """megatron-core's HyperCommGrid class, loaded without running `megatron/core/__init__`.

    That package init imports megatron-core's models, optimizers and parallel layers (most of
    a default run's wall time and ~100 MB per process), although `hyper_comm_grid.py` needs
    only numpy (einops before 0.19) and torch.distributed. The file is loaded under its own
    module name and `megatron.core` is registered as a lazy module that runs its init on first
    use, so every later import of megatron-core works and sees the same class. Anything
    unexpected falls back to the ordinary import.
    """
    with warnings.catch_warnings():  # megatron-core warns when absl is missing; harmless here
        warnings.simplefilter("ignore")
        if (_GRID_MODULE not in sys.modules and "megatron.core" not in sys.modules
                and fast_paths_allowed()):
            try:
                _load_grid_module_alone()
            except Exception:  # noqa: BLE001 - any surprise: the ordinary import below
                for name in (_GRID_MODULE, "megatron.core"):
                    sys.modules.pop(name, None)
        from megatron.core.hyper_comm_grid import HyperCommGrid
    return HyperCommGrid


def _load_grid_module_alone() -> None:
    megatron = importlib.import_module("megatron")
    core_spec = importlib.util.find_spec("megatron.core")
    core_spec.loader = importlib.util.LazyLoader(core_spec.loader)
    core = importlib.util.module_from_spec(core_spec)
    path = Path(next(iter(core_spec.submodule_search_locations)), "hyper_comm_grid.py")
    grid_spec = importlib.util.spec_from_file_location(_GRID_MODULE, path)
    grid = importlib.util.module_from_spec(grid_spec)
    sys.modules[_GRID_MODULE] = grid
    grid_spec.loader.exec_module(grid)
    sys.modules["megatron.core"] = core
    core_spec.loader.exec_module(core)  # lazy: runs the package init on first attribute use
    core.hyper_comm_grid = grid  # as an import of the submodule sets it (kept through the init)
    megatron.core = core


def grid_group_key(dim_names: list[str], dims: list[str]) -> str:
    """The key HyperCommGrid stores a group under, as `create_pg`'s docstring documents it:
    `dims` in the order of the reversed `dim_names`, joined by '-' (e.g. 'dp-tp')."""
    order = list(reversed(dim_names))
    return "-".join(sorted(dims, key=order.index))


_STORAGE_FITS: dict[tuple, bool] = {}


def can_register_groups(grid_class: type, dim_names: list[str], kinds: list[list[str]]) -> bool:
    """Whether a group stored in a grid's `_pgs` under `grid_group_key` is what the public
    `get_pg` returns, for each of `kinds` (lists of dims).

    Probed once per class on a throwaway one-rank grid: it holds an empty dict `_pgs`, a
    marker stored under each kind's key comes back from `get_pg`, and nothing else is there.
    Needs `WORLD_SIZE` or an initialised default group (as HyperCommGrid does).
    """
    if not fast_paths_allowed():
        return False
    key = (grid_class, tuple(dim_names), tuple(map(tuple, kinds)))
    if key not in _STORAGE_FITS:
        _STORAGE_FITS[key] = _probe_storage(grid_class, dim_names, kinds)
    return _STORAGE_FITS[key]


def _probe_storage(grid_class: type, dim_names: list[str], kinds: list[list[str]]) -> bool:
    try:
        probe = grid_class([1] * len(dim_names), list(dim_names))
        store = getattr(probe, "_pgs", None)
        if type(store) is not dict or store:
            return False
        markers = {grid_group_key(dim_names, dims): object() for dims in kinds}
        store.update(markers)
        return (len(store) == len(kinds)
                and all(probe.get_pg(list(dims)) is markers[grid_group_key(dim_names, dims)]
                        for dims in kinds))
    except Exception:  # noqa: BLE001 - any surprise: not usable
        return False


def register_group(grid, dims: list[str], group) -> None:
    """Store `group` (None for a non-member) in `grid` so that `grid.get_pg(dims)` returns it.
    Only where `can_register_groups` says so. Raises KeyError if `dims` already has one, as
    `create_pg` does."""
    key = grid_group_key(grid.dim_names, dims)
    if key in grid._pgs:
        raise KeyError(f"process group {dims} was already created on this grid")
    grid._pgs[key] = group


def destroy_grid(grid, kinds: list[list[str]]) -> None:
    """Destroy every group of `grid` this rank belongs to, once each; per rank, no collective.

    `grid.destroy()` where megatron-core has it (0.17 and later); else
    `dist.destroy_process_group` for each of `kinds`, and the grid forgets them (as `destroy`
    does) where its storage is the dict `_pgs`.
    """
    if callable(getattr(grid, "destroy", None)):
        grid.destroy()
        return
    done: set[int] = set()
    for dims in kinds:
        try:
            group = grid.get_pg(list(dims))
        except KeyError:
            continue
        if is_group_member(group) and id(group) not in done:
            dist.destroy_process_group(group)
            done.add(id(group))
    store = getattr(grid, "_pgs", None)
    if type(store) is dict:
        store.clear()


# ---- submitit -------------------------------------------------------------------------------

def sbatch_script(executor) -> str:
    """The batch script a submitit `SlurmExecutor` would submit, for `dry_run=true`.

    submitit's own text where its private `_make_submission_file_text` answers; else the
    executor's public `parameters` as `#SBATCH` lines, then the setup lines and the srun line.
    """
    make = getattr(executor, "_make_submission_file_text", None)
    if fast_paths_allowed() and callable(make):
        try:
            return make(executor._submitit_command_str, "dry-run")
        except Exception:  # noqa: BLE001 - any surprise: the plain rendering below
            pass
    params = dict(getattr(executor, "parameters", {}) or {})
    lines = ["#!/bin/bash", "# submitit's own script text is not available here; its parameters:"]
    params.update(params.pop("additional_parameters", None) or {})  # as submitit merges them
    for key, value in params.items():
        if key in ("setup", "srun_args") or value is None or value is False:
            continue
        flag = key.replace("_", "-")
        lines.append(f"#SBATCH --{flag}" if value is True else f"#SBATCH --{flag}={value}")
    lines += [str(line) for line in params.get("setup") or []]
    srun = " ".join(["srun", *map(str, params.get("srun_args") or [])])
    lines.append(f"{srun} <submitit's task command, folder {getattr(executor, 'folder', '?')}>")
    return "\n".join(lines) + "\n"
