"""The public builder API (SPEC section 1) on megatron-core's HyperCommGrid.

Every function here is collective over the default process group: every rank of the world calls
it, in the same order, whether or not it belongs to the module in question.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

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
    me = dist.get_rank()
    if pp_group is None:
        first = last = -1
    else:
        ranks = dist.get_process_group_ranks(pp_group)
        first, last = min(ranks), max(ranks)
    device = _comm_device()
    mine = torch.tensor([first, last], dtype=torch.int64, device=device)
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    pairs = sorted({tuple(t.tolist()) for t in gathered if int(t[0]) >= 0})

    factory = world_factory()
    pos_embd = factory.group_for([[f] for f, _ in pairs])
    embd = factory.group_for([[f] if f == l else [f, l] for f, l in pairs])
    if pp_group is None:
        return None, None
    return (pos_embd if me == first else None), (embd if me in (first, last) else None)


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


def build_mimo_groups(cfg: MimoParallelismConfig) -> MimoGroups:
    """Build the grids and embedding groups of every module; collective over the world."""
    t0 = time.perf_counter()
    grids = build_hypercomm_grids(cfg)
    t1 = time.perf_counter()
    modules = {}
    for name, grid in grids.items():
        groups = {kind: grid.get_pg(dims_of(kind)) for kind in GRID_GROUPS}
        pp = groups["pp"]
        pos_embd, embd = populate_embedding_and_position_groups(pp)
        modules[name] = ModuleGroups(grid, groups, pos_embd, embd,
                                     is_pp_first_stage(pp), is_pp_last_stage(pp))
    t2 = time.perf_counter()
    return MimoGroups(modules, {"grids": t1 - t0, "embedding": t2 - t1},
                      world_factory().new_group_calls)
