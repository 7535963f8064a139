"""The expected layout, computed from the config by plain arithmetic (SPEC section 3).

This is what the verification trusts, so it uses neither torch.distributed nor HyperCommGrid.
Everything is vectorised with numpy: a module's ranks form an array of shape (DP, PP, ETP, CP, TP)
(tp fastest, `rank = offset + tp + TP*(cp + CP*(ep + ETP*(pp + PP*dp)))`); a group kind's groups
are that array with the group's axes moved last and flattened, one group per row, ascending.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..mimo_config import MimoParallelismConfig, ModuleParallelismConfig, as_mimo_config

# Array axis of each dim in the (dp, pp, ep, cp, tp) array, slowest first.
_AXIS = {"dp": 0, "pp": 1, "ep": 2, "cp": 3, "tp": 4}
# The group kinds SPEC section 3 requires of every module, written out here and not taken from
# group_kinds.py: that list tells the builder what to build, this one tells the verifier what
# to check, so a kind the builder stops building fails verification instead of going unchecked.
SPEC_GRID_KINDS = ("tp", "cp", "ep", "pp", "dp", "dp+cp", "tp+pp", "tp+ep+pp", "dp+ep",
                   "tp+cp+ep+pp+dp")
SPEC_KINDS = SPEC_GRID_KINDS + ("pos_embd", "embd")


@dataclass
class ModuleLayout:
    """Every expected group of one module.

    `groups[kind]` is an int64 array (n_groups, group_size), members ascending;
    `group_index[kind]` maps each world rank to its row there, -1 where the rank has no group
    of that kind. `first_stage`/`last_stage` are per world rank (True outside the module, as
    `is_pp_first_stage(None)` is).
    """

    name: str
    rank_offset: int
    size: int
    shape: dict[str, int]
    groups: dict[str, np.ndarray]
    group_index: dict[str, np.ndarray]
    first_stage: np.ndarray
    last_stage: np.ndarray

    def members(self, kind: str, rank: int) -> list[int] | None:
        """The members of `rank`'s group of `kind`, or None where it has none."""
        row = int(self.group_index[kind][rank])
        return None if row < 0 else self.groups[kind][row].tolist()


@dataclass
class ExpectedLayout:
    """The expected layout of a whole world: one `ModuleLayout` per module, in config order."""

    world_size: int
    modules: dict[str, ModuleLayout]


def _module_grid(mod: ModuleParallelismConfig) -> np.ndarray:
    shape = (mod.data_parallel_size, mod.pipeline_model_parallel_size,
             mod.expert_tensor_parallel_size, mod.context_parallel_size,
             mod.tensor_model_parallel_size)
    ranks = np.arange(mod.rank_offset, mod.rank_offset + mod.total_ranks, dtype=np.int64)
    return ranks.reshape(shape)


def grid_groups(grid: np.ndarray, kind: str) -> np.ndarray:
    """The groups of `kind` in a (dp, pp, ep, cp, tp) rank array, one per row."""
    inside = sorted(_AXIS[d] for d in kind.split("+"))
    outside = [a for a in range(grid.ndim) if a not in inside]
    size = int(np.prod([grid.shape[a] for a in inside]))
    return grid.transpose(outside + inside).reshape(-1, size)


def _index_of(groups: np.ndarray, world_size: int) -> np.ndarray:
    index = np.full(world_size, -1, dtype=np.int64)
    n, width = groups.shape
    index[groups.ravel()] = np.repeat(np.arange(n, dtype=np.int64), width)
    return index


def layout_module(name: str, mod: ModuleParallelismConfig, world_size: int) -> ModuleLayout:
    """The expected groups of one resolved module in a world of `world_size` ranks."""
    grid = _module_grid(mod)
    groups = {kind: grid_groups(grid, kind) for kind in SPEC_GRID_KINDS}
    pp = groups["pp"]
    first, last = pp[:, :1], pp[:, -1:]
    groups["pos_embd"] = first.copy()
    groups["embd"] = first.copy() if pp.shape[1] == 1 else np.concatenate([first, last], axis=1)
    index = {kind: _index_of(groups[kind], world_size) for kind in SPEC_KINDS}
    first_stage = np.ones(world_size, dtype=bool)
    last_stage = np.ones(world_size, dtype=bool)
    stage = np.broadcast_to(np.arange(pp.shape[1]), pp.shape)
    first_stage[pp.ravel()] = (stage == 0).ravel()
    last_stage[pp.ravel()] = (stage == pp.shape[1] - 1).ravel()
    shape = dict(zip(("tp", "cp", "ep", "pp", "dp"),
                     (mod.tensor_model_parallel_size, mod.context_parallel_size,
                      mod.expert_tensor_parallel_size, mod.pipeline_model_parallel_size,
                      mod.data_parallel_size)))
    return ModuleLayout(name, mod.rank_offset, mod.total_ranks, shape, groups, index,
                        first_stage, last_stage)


def expected_layout(cfg: MimoParallelismConfig, world_size: int) -> ExpectedLayout:
    """Validate `cfg` (also Bridge's config objects, `as_mimo_config`) for `world_size` ranks
    and lay out every module's groups."""
    resolved = as_mimo_config(cfg).validate(world_size)
    modules = {name: layout_module(name, mod, world_size)
               for name, mod in resolved.module_parallelisms.items()}
    return ExpectedLayout(world_size, modules)
