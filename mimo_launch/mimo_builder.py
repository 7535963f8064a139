"""The public builder API (SPEC section 1) on megatron-core's HyperCommGrid.

Every function here is collective over the default process group: every rank of the world calls
it, in the same order, whether or not it belongs to the module in question.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist

from . import compat
from .groups.group_factory import GroupFactory, paused_gc
from .layout.group_kinds import GRID_DIMS, GRID_GROUPS, dims_of
from .mimo_config import MimoParallelismConfig, as_mimo_config

if TYPE_CHECKING:
    from megatron.core.hyper_comm_grid import HyperCommGrid


def __getattr__(name: str):
    """`mimo_builder.HyperCommGrid`: megatron-core's class, loaded on first use
    (`compat.load_hypercomm_grid`), so that importing this module changes no other module."""
    if name == "HyperCommGrid":
        return compat.load_hypercomm_grid()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# torch >= 2.13 names it all_gather_single (all_gather_into_tensor warns there); both public
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def build_hypercomm_grids(cfg: MimoParallelismConfig, *,
                          timeout: timedelta | None = None) -> dict[str, HyperCommGrid]:
    """One HyperCommGrid per module, in config order, with every SPEC group created.

    `cfg`: this package's MimoParallelismConfig, finalized or not, or Megatron-Bridge's own
    config object with the same field names (duck-typed, `as_mimo_config`).

    Collective: grids and groups are created on all ranks; a rank outside a module's range
    gets `None` from that grid's `get_pg`. Each (grid, kind) has its own process group
    object, as `HyperCommGrid.create_pg` makes them, so `grid.destroy()` (megatron-core >=
    0.17) or `dist.destroy_process_group` per kind tears one grid down without touching
    another, and building again gives fresh groups. `timeout` bounds every collective in the
    groups (None: torch's default). Raises MimoConfigError for a layout that does not fit the
    world.
    """
    return _build_grids(cfg, GroupFactory(dist.get_backend(), timeout))


def _build_grids(cfg: MimoParallelismConfig, factory: GroupFactory) -> dict[str, HyperCommGrid]:
    resolved = as_mimo_config(cfg).validate(dist.get_world_size())
    grids: dict[str, HyperCommGrid] = {}
    with paused_gc():
        for name, mod in resolved.module_parallelisms.items():
            grids[name] = _build_grid(mod, factory)
    return grids


_KIND_DIMS = [dims_of(kind) for kind in GRID_GROUPS]


def _build_grid(mod, factory: GroupFactory) -> HyperCommGrid:
    """One module's grid with every SPEC group, in SPEC order; collective.

    Where the grid's storage can be filled (compat.can_register_groups), `factory` makes the
    groups (skipping non-member calls where torch allows) and the grid records them; else
    the grid's own public `create_pg` makes them.
    """
    shape = [mod.tensor_model_parallel_size, mod.context_parallel_size,
             mod.expert_tensor_parallel_size, mod.pipeline_model_parallel_size,
             mod.data_parallel_size]
    grid_class = compat.load_hypercomm_grid()
    grid = grid_class(shape, list(GRID_DIMS), rank_offset=mod.rank_offset,
                      backend=factory.backend)
    if compat.can_register_groups(grid_class, list(GRID_DIMS), _KIND_DIMS):
        for dims in _KIND_DIMS:
            compat.register_group(grid, dims, factory.new_subgroups(grid.get_rank_enum(dims)))
    else:
        for dims in _KIND_DIMS:
            grid.create_pg(dims, timeout=factory.timeout)
            factory.count_calls_made_elsewhere(len(grid.get_rank_enum(dims)))
    return grid


def destroy_grid(grid: HyperCommGrid) -> None:
    """Destroy every group of `grid` this rank belongs to (per rank, no collective):
    `grid.destroy()` where megatron-core has it (>= 0.17), else `dist.destroy_process_group`
    for each SPEC kind."""
    compat.destroy_grid(grid, _KIND_DIMS)


def comm_device() -> torch.device:
    """Where collective tensors live: this rank's GPU with nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def populate_embedding_and_position_groups(pp_group, *, timeout: timedelta | None = None,
                                           factory: GroupFactory | None = None):
    """Return `(pos_embd_pg, embd_pg)` for this rank's pipeline group.

    pos_embd: the first PP stage alone; embd: the first and last stage (one rank when PP=1).
    A rank gets a group only where it is a member, else None (a middle stage gets
    `(None, None)`, a last stage `(None, embd)`); a rank with `pp_group=None` gets
    `(None, None)`. Collective over the world: every rank calls it, each time making new
    groups. Each rank contributes the (first, last) stage of its pipeline to an all-gather,
    so every rank creates the same groups for every pipeline of the world, in the same order,
    whatever its own pipeline is (Megatron-Bridge's MIMO builder, SPEC section 4's first trap).
    `timeout` bounds every collective in the new groups (None: torch's default); `factory`
    (keyword, for `build_mimo_groups`) makes the groups instead, with its own timeout and
    counts. Every run builds its embedding groups through this function.
    """
    factory = factory or GroupFactory(dist.get_backend(), timeout)
    return _embedding_groups(pp_group, _gather_pipeline_ends(pp_group), factory)


def _gather_pipeline_ends(pp_group) -> np.ndarray:
    """Every rank's (first, last) stage in its `pp_group` (-1, -1 where it has none), as an
    array (world, 2). Collective."""
    ranks = None if pp_group is None else dist.get_process_group_ranks(pp_group)
    device = comm_device()
    mine = torch.tensor([-1, -1] if ranks is None else [min(ranks), max(ranks)],
                        dtype=torch.int64, device=device)
    gathered = torch.empty(dist.get_world_size() * 2, dtype=torch.int64, device=device)
    _all_gather_single(gathered, mine)
    return gathered.cpu().numpy().reshape(-1, 2)


def _embedding_groups(pp_group, pairs: np.ndarray, factory: GroupFactory) -> tuple:
    """Given the (first, last) stage of every pipeline of the module (array (n, 2), any order,
    repeats and rows of -1 for ranks outside the module allowed: an all-gather's result),
    create the pos_embd and embd groups of every pipeline, in the same order on every rank,
    and return this rank's `(pos_embd_pg, embd_pg)`. Collective over the world."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    pairs = pairs[pairs[:, 0] >= 0]
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    keep = np.ones(len(pairs), dtype=bool)
    keep[1:] = (pairs[1:] != pairs[:-1]).any(axis=1)
    pairs = pairs[keep]  # one row per pipeline, ascending
    first, last = pairs[:, :1], pairs[:, 1:]
    pos_embd = factory.new_subgroups(first)
    single = bool(len(pairs)) and bool((first == last).all())
    mixed = not single and bool((first == last).any())
    if mixed:  # pipelines of one and of several stages: rows of different widths
        embd = factory.new_subgroups([[a] if a == b else [a, b] for a, b in pairs.tolist()])
    else:
        embd = factory.new_subgroups(first if single else pairs)
    if pp_group is None:
        return None, None
    is_first, is_last = is_pp_first_stage(pp_group), is_pp_last_stage(pp_group)
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
    """Every module's groups for this rank.

    `new_group_calls`: groups created world-wide (the same on every rank);
    `member_calls`: the `dist.new_group` calls this rank really made.
    """

    modules: dict[str, ModuleGroups]
    new_group_calls: int = 0
    member_calls: int = 0

    @property
    def module_names(self) -> list[str]:
        return list(self.modules)

    def group(self, module: str, kind: str):
        """Module `module`'s group of `kind` (group_kinds.ALL_GROUPS), None where this rank
        has none."""
        return self.modules[module].group(kind)

    def stage(self, module: str) -> tuple[bool, bool]:
        """(first, last) pipeline stage of this rank in `module` (True, True outside it)."""
        mg = self.modules[module]
        return mg.is_first_stage, mg.is_last_stage

    def destroy(self) -> None:
        """Destroy every group of these modules this rank belongs to, each once (per rank, no
        collective): each grid's (`destroy_grid`), then the embedding groups."""
        for mg in self.modules.values():
            destroy_grid(mg.grid)
            for group in (mg.pos_embd, mg.embd):
                if compat.is_group_member(group):
                    dist.destroy_process_group(group)


def build_mimo_groups(cfg: MimoParallelismConfig, phase=None,
                      timeout: timedelta | None = None) -> MimoGroups:
    """Build the grids and embedding groups of every module; collective over the world.
    `cfg` as for `build_hypercomm_grids` (Bridge's config objects too).

    The grids are `build_hypercomm_grids`'; each module's embedding groups come from the
    public `populate_embedding_and_position_groups(pp_group)` (one world-wide all-gather per
    module), so a run checks the function users call.
    `phase(name)`, if given, is a context manager wrapped around the 'grids' and 'embedding'
    steps (the rank runner passes its phase tracker: barrier, timeout, fault injection).
    `timeout` bounds every collective in the new groups. Raises MimoConfigError for a layout
    that does not fit the world.
    """
    factory = GroupFactory(dist.get_backend(), timeout)
    with phase("grids") if phase else nullcontext():
        grids = _build_grids(cfg, factory)
    modules = {}
    with phase("embedding") if phase else nullcontext():
        for name, grid in grids.items():
            groups = {kind: grid.get_pg(dims_of(kind)) for kind in GRID_GROUPS}
            pp = groups["pp"]
            pos_embd, embd = populate_embedding_and_position_groups(pp, factory=factory)
            modules[name] = ModuleGroups(grid, groups, pos_embd, embd,
                                         is_pp_first_stage(pp), is_pp_last_stage(pp))
    return MimoGroups(modules, factory.new_group_calls, factory.member_calls)
