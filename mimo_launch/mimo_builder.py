"""The public builder API (SPEC section 1) on megatron-core's HyperCommGrid.

Every function here is collective over the default process group: every rank of the world calls
it, in the same order, whether or not it belongs to the module in question.
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from .group_factory import destroy_world_groups, world_factory
from .group_kinds import GRID_DIMS, GRID_GROUPS, dims_of
from .mimo_config import MimoParallelismConfig

with warnings.catch_warnings():  # megatron-core warns when absl is missing; harmless here
    warnings.simplefilter("ignore")
    from megatron.core.hyper_comm_grid import HyperCommGrid


def build_hypercomm_grids(cfg: MimoParallelismConfig) -> dict[str, HyperCommGrid]:
    """One HyperCommGrid per module, in config order, with every SPEC group created.

    Collective: grids and groups are created on all ranks; a rank outside a module's range
    gets `None` from that grid's `get_pg`.
    """
    resolved = cfg.validate(dist.get_world_size())
    factory = world_factory()
    grids: dict[str, HyperCommGrid] = {}
    for name, mod in resolved.module_parallelisms.items():
        shape = [mod.tensor_model_parallel_size, mod.context_parallel_size,
                 mod.expert_tensor_parallel_size, mod.pipeline_model_parallel_size,
                 mod.data_parallel_size]
        grid = HyperCommGrid(shape, list(GRID_DIMS), rank_offset=mod.rank_offset,
                             backend=factory.backend)
        for kind in GRID_GROUPS:
            dims = dims_of(kind)
            group = factory.group_for(grid.get_rank_enum(dims))
            _register(grid, dims, group)
        grids[name] = grid
    return grids


def _register(grid: HyperCommGrid, dims: list[str], group) -> None:
    """Record a group made by the factory so that `grid.get_pg(dims)` returns it.

    HyperCommGrid.create_pg would make one group per member list even where another kind has
    the same members; the factory dedups, so the result is stored under the grid's own key.
    """
    _, key = grid._order_dims(dims)
    if key in grid._pgs:
        raise KeyError(f"process group {dims} was already created on this grid")
    grid._pgs[key] = group


def _comm_device() -> torch.device:
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
    if pp_group is None:
        first = last = -1
    else:
        ranks = dist.get_process_group_ranks(pp_group)
        first, last = min(ranks), max(ranks)
    device = _comm_device()
    mine = torch.tensor([first, last], dtype=torch.int64, device=device)
    gathered = torch.empty(2 * dist.get_world_size(), dtype=torch.int64, device=device)
    dist.all_gather_into_tensor(gathered, mine)
    return embedding_groups_for_pairs(pp_group, gathered.cpu().numpy())


def embedding_groups_for_pairs(pp_group, pairs) -> tuple:
    """The creation half of `populate_embedding_and_position_groups`: given every rank's
    (first, last) pipeline stage (-1 outside the module; the all-gather's result), create the
    pos_embd and embd groups of every pipeline in the same order on every rank and return this
    rank's `(pos_embd_pg, embd_pg)`. Collective over the world."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    pairs = np.unique(pairs[pairs[:, 0] >= 0], axis=0)  # one row per pipeline, ascending
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
        """Destroy every group made for this world (collective-free, per rank)."""
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
        for name, grid in grids.items():
            groups = {kind: grid.get_pg(dims_of(kind)) for kind in GRID_GROUPS}
            pp = groups["pp"]
            pos_embd, embd = populate_embedding_and_position_groups(pp)
            modules[name] = ModuleGroups(grid, groups, pos_embd, embd,
                                         is_pp_first_stage(pp), is_pp_last_stage(pp))
    return MimoGroups(modules, timings, world_factory().new_group_calls)
