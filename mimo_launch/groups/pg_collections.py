"""Per-module megatron-core `ProcessGroupCollection`s from the built groups (SPEC section 4b).

A training script (megatron-core's MIMO model, its pipeline schedules, DDP) takes one
`megatron.core.process_groups_config.ProcessGroupCollection` per module. This module fills them
from the groups `build_mimo_groups` made, the way Megatron-Bridge's MIMO provider fills them
from its grids, with the same group objects (no copies), so the groups that were verified are
the groups that train. `ProcessGroupCollection` is imported only here, when collections are
asked for: its module runs megatron-core's whole package init (seconds per process).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import timedelta

from ..mimo_builder import MimoGroups, build_mimo_groups, is_pp_first_stage, is_pp_last_stage
from ..mimo_config import LANGUAGE_MODULE

# ProcessGroupCollection field -> the group kind it holds (group_kinds.py names), as Bridge's
# MIMO provider fills it; the `ep` axis of the grid carries the expert-tensor-parallel size.
COLLECTION_FIELDS = {
    "tp": "tp", "dp": "dp", "pp": "pp", "cp": "cp", "ep": "ep", "dp_cp": "dp+cp",
    "mp": "tp+pp", "tp_ep_pp": "tp+ep+pp", "pos_embd": "pos_embd", "embd": "embd",
}
_FIELD_OF_KIND = {kind: name for name, kind in COLLECTION_FIELDS.items()}


def process_group_collection_class() -> type:
    """megatron-core's `ProcessGroupCollection` (present, with a keyword constructor, in
    0.16.1 through 0.19.x); the first call costs megatron-core's package init, whose warnings
    about optional packages (Transformer Engine, Apex) are not shown."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.process_groups_config import ProcessGroupCollection

    return ProcessGroupCollection


def default_topology(module_names: list[str]) -> dict[str, list[str]]:
    """Which module feeds which: every encoder feeds `language`, which feeds nothing."""
    return {name: [] if name == LANGUAGE_MODULE else [LANGUAGE_MODULE] for name in module_names}


def check_topology(topology: dict, module_names: list[str]) -> dict[str, list[str]]:
    """`topology` (module -> the modules it feeds) with every module as a key, in config order.
    Raises ValueError (one line) for an unknown module or a module feeding itself."""
    unknown = sorted({str(n) for n in topology} - set(module_names)
                     | {str(d) for ds in topology.values() for d in ds} - set(module_names))
    if unknown:
        raise ValueError(f"topology names unknown module(s) {', '.join(unknown)}; modules are "
                         f"{', '.join(module_names)}")
    loops = [n for n, ds in topology.items() if n in ds]
    if loops:
        raise ValueError(f"topology: module(s) {', '.join(loops)} feed themselves")
    return {name: list(topology.get(name, [])) for name in module_names}


@dataclass
class MimoProcessGroups:
    """What one rank takes into training.

    `collections[module]`: its ProcessGroupCollection (fields: COLLECTION_FIELDS), None for a
    module this rank is not in; `topology[module]`: the modules it feeds; `rank_modules`: the
    modules this rank takes part in, in config order; `groups`: the build itself (grids, the
    kinds no collection field holds, `destroy`).
    """

    collections: dict[str, object]
    topology: dict[str, list[str]]
    rank_modules: list[str]
    groups: MimoGroups

    @property
    def module_names(self) -> list[str]:
        return list(self.collections)

    @property
    def grids(self) -> dict:
        """Each module's HyperCommGrid (megatron-core's MIMO model takes them by name)."""
        return {name: mg.grid for name, mg in self.groups.modules.items()}

    def group(self, module: str, kind: str):
        """The group of `kind` (group_kinds.ALL_GROUPS) as a trainer sees it: read from the
        module's collection where a field holds that kind, else from the grid."""
        field = _FIELD_OF_KIND.get(kind)
        if field is None:
            return self.groups.group(module, kind)
        collection = self.collections[module]
        return None if collection is None else getattr(collection, field)

    def stage(self, module: str) -> tuple[bool, bool]:
        """(first, last) pipeline stage, from the collection's `pp` as a trainer computes it."""
        pp = self.group(module, "pp")
        return is_pp_first_stage(pp), is_pp_last_stage(pp)

    def destroy(self) -> None:
        """Destroy every group this rank belongs to (per rank, no collective)."""
        self.groups.destroy()


def process_group_collections(groups: MimoGroups,
                              topology: dict | None = None) -> MimoProcessGroups:
    """This rank's collections from `groups` (per rank, no collective). `topology` defaults to
    `default_topology`; ValueError for one that names unknown modules."""
    names = list(groups.modules)
    topology = check_topology(default_topology(names) if topology is None else topology, names)
    collection_class = process_group_collection_class()
    collections, rank_modules = {}, []
    for name, mg in groups.modules.items():
        if mg.groups["tp+cp+ep+pp+dp"] is None:  # this rank is outside the module
            collections[name] = None
            continue
        rank_modules.append(name)
        collections[name] = collection_class(
            **{field: mg.group(kind) for field, kind in COLLECTION_FIELDS.items()})
    return MimoProcessGroups(collections, topology, rank_modules, groups)


def build_mimo_process_groups(cfg, topology: dict | None = None, *,
                              timeout: timedelta | None = None) -> MimoProcessGroups:
    """`build_mimo_groups(cfg)` then `process_group_collections`; collective over the world.
    `cfg`: a MimoParallelismConfig or Bridge's own (duck-typed). Raises MimoConfigError for a
    layout that does not fit the world, ValueError for a bad topology."""
    return process_group_collections(build_mimo_groups(cfg, timeout=timeout), topology)
