"""The public builder API (SPEC section 1) on megatron-core's HyperCommGrid.

Every function here is collective over the default process group: every rank of the world calls
it, in the same order, whether or not it belongs to the module in question.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .group_factory import NO_FAST_PATHS, destroy_world_groups, paused_gc, world_factory
from .group_kinds import GRID_DIMS, GRID_GROUPS, dims_of
from .mimo_config import MimoParallelismConfig

_GRID_MODULE = "megatron.core.hyper_comm_grid"


def _import_hypercomm_grid():
    """megatron-core's HyperCommGrid class, loaded without running `megatron/core/__init__`.

    That package init imports megatron-core's models, optimizers and parallel layers (measured:
    most of a default run's wall time and ~100 MB per process) although `hyper_comm_grid.py`
    needs only numpy, einops and torch.distributed. The file is loaded under its own module
    name and `megatron.core` is registered as a lazy module that runs its init on first use,
    so every later import of megatron-core works and sees the same class. Any surprise falls
    back to the ordinary import.
    """
    with warnings.catch_warnings():  # megatron-core warns when absl is missing; harmless here
        warnings.simplefilter("ignore")
        if (_GRID_MODULE not in sys.modules and "megatron.core" not in sys.modules
                and os.environ.get(NO_FAST_PATHS) != "1"):
            try:
                _load_standalone()
            except Exception:  # noqa: BLE001 - any surprise: the ordinary import below
                for name in (_GRID_MODULE, "megatron.core"):
                    sys.modules.pop(name, None)
        from megatron.core.hyper_comm_grid import HyperCommGrid as grid_class
    return grid_class


def _load_standalone() -> None:
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
    megatron.core = core


HyperCommGrid = _import_hypercomm_grid()


def build_hypercomm_grids(cfg: MimoParallelismConfig) -> dict[str, HyperCommGrid]:
    """One HyperCommGrid per module, in config order, with every SPEC group created.

    Collective: grids and groups are created on all ranks; a rank outside a module's range
    gets `None` from that grid's `get_pg`.
    """
    resolved = cfg.validate(dist.get_world_size())
    factory = world_factory()
    grids: dict[str, HyperCommGrid] = {}
    with paused_gc():
        for name, mod in resolved.module_parallelisms.items():
            grids[name] = _build_grid(mod, factory)
    return grids


def _build_grid(mod, factory) -> HyperCommGrid:
    """One module's grid with every SPEC group made through `factory`; collective."""
    shape = [mod.tensor_model_parallel_size, mod.context_parallel_size,
             mod.expert_tensor_parallel_size, mod.pipeline_model_parallel_size,
             mod.data_parallel_size]
    grid = HyperCommGrid(shape, list(GRID_DIMS), rank_offset=mod.rank_offset,
                         backend=factory.backend)
    for kind in GRID_GROUPS:
        dims = dims_of(kind)
        group = factory.group_for(grid.get_rank_enum(dims))
        _register(grid, dims, group)
    return grid


def _register(grid: HyperCommGrid, dims: list[str], group) -> None:
    """Record a group made by the factory so that `grid.get_pg(dims)` returns it.

    HyperCommGrid.create_pg would make one group per member list even where another kind has
    the same members; the factory dedups, so the result is stored under the grid's own key.
    """
    _, key = grid._order_dims(dims)
    if key in grid._pgs:
        raise KeyError(f"process group {dims} was already created on this grid")
    grid._pgs[key] = group


def comm_device() -> torch.device:
    """Where collective tensors live: this rank's GPU with nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def populate_embedding_and_position_groups(pp_group):
    """Return `(pos_embd_pg, embd_pg)` for this rank's pipeline group.

    pos_embd: the first PP stage alone; embd: the first and last stage (one rank when PP=1).
    A rank gets a group only where it is a member, else None; a rank with `pp_group=None` gets
    `(None, None)`. Collective over the world: every rank calls it. Each rank contributes the
    (first, last) stage of its pipeline to an all-gather, so every rank creates the same groups
    for every pipeline of the world, in the same order, whatever its own pipeline is.
    """
    return embedding_groups_for_pairs(pp_group, _gather_pipeline_ends([pp_group])[:, 0])


def _gather_pipeline_ends(pp_groups: list) -> np.ndarray:
    """Every rank's (first, last) stage in each of `pp_groups` (-1 where it has none), as an
    array (world, len(pp_groups), 2): one all-gather for all modules. Collective."""
    mine = []
    for pp in pp_groups:
        ranks = None if pp is None else dist.get_process_group_ranks(pp)
        mine.append([-1, -1] if ranks is None else [min(ranks), max(ranks)])
    device = comm_device()
    mine_t = torch.tensor(mine, dtype=torch.int64, device=device).ravel()
    gathered = torch.empty(dist.get_world_size() * mine_t.numel(), dtype=torch.int64,
                           device=device)
    dist.all_gather_into_tensor(gathered, mine_t)
    return gathered.cpu().numpy().reshape(dist.get_world_size(), len(pp_groups), 2)


def embedding_groups_for_pairs(pp_group, pairs) -> tuple:
    """The creation half of `populate_embedding_and_position_groups`: given every rank's
    (first, last) pipeline stage (-1 outside the module; the all-gather's result), create the
    pos_embd and embd groups of every pipeline in the same order on every rank and return this
    rank's `(pos_embd_pg, embd_pg)`. Collective over the world."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    pairs = pairs[pairs[:, 0] >= 0]
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    keep = np.ones(len(pairs), dtype=bool)
    keep[1:] = (pairs[1:] != pairs[:-1]).any(axis=1)
    pairs = pairs[keep]  # one row per pipeline, ascending
    first, last = pairs[:, :1], pairs[:, 1:]
    factory = world_factory()
    pos_embd = factory.group_for(first)
    single = bool(len(pairs)) and bool((first == last).all())
    mixed = not single and bool((first == last).any())
    if mixed:  # pipelines of one and of several stages: rows of different widths
        embd = factory.group_for([[f] if f == l else [f, l] for f, l in pairs.tolist()])
    else:
        embd = factory.group_for(first if single else pairs)
    if pp_group is None:
        return None, None
    me = dist.get_rank()
    ranks = dist.get_process_group_ranks(pp_group)
    is_first, is_last = me == min(ranks), me == max(ranks)
    return (pos_embd if is_first else None), (embd if is_first or is_last else None)


def is_pp_first_stage(pp_group) -> bool:
    """True when `pp_group` is None, else whether this rank is the lowest rank of it."""
    if pp_group is None:
        return True
    return dist.get_rank() == min(dist.get_process_group_ranks(pp_group))


def is_pp_last_stage(pp_group) -> bool:
    """True when `pp_group` is None, else whether this rank is the highest rank of it."""
    if pp_group is None:
        return True
    return dist.get_rank() == max(dist.get_process_group_ranks(pp_group))


@dataclass
class ModuleGroups:
    """What one rank belongs to in one module (every group None outside the module)."""

    grid: HyperCommGrid
    groups: dict[str, object]  # grid group name -> process group or None
    pos_embd: object = None
    embd: object = None
    is_first_stage: bool = True
    is_last_stage: bool = True

    def group(self, kind: str):
        """A grid group by name, or 'pos_embd' / 'embd'."""
        if kind == "pos_embd":
            return self.pos_embd
        if kind == "embd":
            return self.embd
        return self.groups[kind]


@dataclass
class MimoGroups:
    """Every module's groups for this rank, and how long each build phase took (seconds)."""

    modules: dict[str, ModuleGroups]
    timings: dict[str, float] = field(default_factory=dict)
    new_group_calls: int = 0

    @property
    def grids(self) -> dict[str, HyperCommGrid]:
        return {name: mg.grid for name, mg in self.modules.items()}

    def destroy(self) -> None:
        """Destroy every group made for this world (collective-free, per rank): also groups
        that other MimoGroups or earlier `populate_*` calls of the same world share."""
        destroy_world_groups()
        for mg in self.modules.values():
            mg.grid._pgs.clear()


def build_mimo_groups(cfg: MimoParallelismConfig, phase=None) -> MimoGroups:
    """Build the grids and embedding groups of every module; collective over the world.

    `phase(name)`, if given, is a context manager wrapped around the 'grids' and 'embedding'
    steps (the rank runner passes its phase tracker: barrier, timeout, fault injection).
    """
    timings: dict[str, float] = {}

    @contextmanager
    def step(name: str):
        with phase(name) if phase else nullcontext():
            start = time.perf_counter()
            yield
            timings[name] = time.perf_counter() - start

    with step("grids"):
        grids = build_hypercomm_grids(cfg)
    modules = {}
    with step("embedding"):
        per_module = {name: {kind: grid.get_pg(dims_of(kind)) for kind in GRID_GROUPS}
                      for name, grid in grids.items()}
        pairs = _gather_pipeline_ends([groups["pp"] for groups in per_module.values()])
        for m, (name, groups) in enumerate(per_module.items()):
            pp = groups["pp"]
            pos_embd, embd = embedding_groups_for_pairs(pp, pairs[:, m])
            modules[name] = ModuleGroups(grids[name], groups, pos_embd, embd,
                                         is_pp_first_stage(pp), is_pp_last_stage(pp))
    return MimoGroups(modules, timings, world_factory().new_group_calls)
