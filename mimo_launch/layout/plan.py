"""A layout's plan, computed from the oracle without starting any process, and its text.

`make_plan(layout, world_size, ranks_per_node)` validates the layout and summarises each module:
sizes, rank range, the nodes it spans, how many groups of each kind it gets, its first/last
pipeline-stage ranks. `format_plan` renders it; its length does not grow with the world size
(long rank lists are abbreviated), so a 16,384-rank plan prints as fast as an 8-rank one.
`rank_lines(plan, rank)` lists every group one rank belongs to, members abbreviated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..layout.group_kinds import ALL_GROUPS
from ..layout.layout_oracle import ExpectedLayout, ModuleLayout, expected_layout
from ..layout.rank_text import format_rank_set
from ..mimo_config import MimoParallelismConfig
from ..reports.report import shape_text

DEFAULT_RANKS_PER_NODE = 8
# The largest world `make_plan` lays out. The oracle holds every group of every kind in memory
# (about 200 bytes per rank, ~0.2 GiB and ~1 s at this bound), so a bigger world is refused
# before anything is allocated instead of growing without limit.
MAX_PLAN_RANKS = 1 << 20


def check_plan_size(world_size: int) -> None:
    """Raise ValueError (one line) when `world_size` exceeds `MAX_PLAN_RANKS`."""
    if world_size > MAX_PLAN_RANKS:
        raise ValueError(f"mode=plan lays out at most {MAX_PLAN_RANKS:,} ranks (every group is "
                         f"held in memory); the world size {world_size:,} is larger")


def ranks_per_node(cluster, override=None) -> tuple[int, str]:
    """Ranks per node, and what holds one rank ('GPU' or 'task'): `override` GPUs, else the
    cluster's `gpus_per_node` GPUs, else its `tasks_per_node` tasks (a Slurm cluster's without
    GPUs, `config_schema.SlurmCluster`), else 8 GPUs (a local run, planned for a GPU node)."""
    if override:
        return int(override), "GPU"
    for key, slot in (("gpus_per_node", "GPU"), ("tasks_per_node", "task")):
        value = getattr(cluster, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, slot
    return DEFAULT_RANKS_PER_NODE, "GPU"


@dataclass
class ModulePlan:
    """One module's place in the world. `first_stage`/`last_stage` hold its first and last
    pipeline-stage ranks, ascending; `groups[kind] = (number of groups, group size)`."""

    name: str
    shape: dict[str, int]
    first_rank: int
    end_rank: int
    groups: dict[str, tuple[int, int]]
    first_stage: np.ndarray
    last_stage: np.ndarray
    split_tp_groups: int  # TP groups whose ranks sit on more than one node
    layout: ModuleLayout

    @property
    def size(self) -> int:
        return self.end_rank - self.first_rank

    @property
    def group_count(self) -> int:
        """Groups of every kind this module lays out (kinds with equal members each count)."""
        return sum(n for n, _ in self.groups.values())


@dataclass
class Plan:
    """The whole world: modules in config order, and how ranks map to nodes."""

    world_size: int
    ranks_per_node: int
    modules: dict[str, ModulePlan]
    expected: ExpectedLayout
    config: MimoParallelismConfig  # validated: every DP resolved
    rank_slot: str = "GPU"  # what holds one rank on a node: a GPU, or a Slurm task on CPUs

    @property
    def nodes(self) -> int:
        return -(-self.world_size // self.ranks_per_node)

    def node_of(self, rank: int) -> int:
        return rank // self.ranks_per_node

    def coords(self, module: str, rank: int) -> dict[str, int] | None:
        """`rank`'s coordinates (tp, cp, etp, pp, dp) in `module`, or None outside it."""
        mod = self.modules[module]
        if not mod.first_rank <= rank < mod.end_rank:
            return None
        local, out = rank - mod.first_rank, {}
        for key, size in mod.shape.items():  # first varies fastest
            out[key] = local % size
            local //= size
        return out


def make_plan(layout: MimoParallelismConfig, world_size: int,
              ranks_per_node: int = DEFAULT_RANKS_PER_NODE, rank_slot: str = "GPU") -> Plan:
    """Validate `layout` for `world_size` ranks (MimoConfigError otherwise) and plan it on
    nodes of `ranks_per_node` ranks, each held by a `rank_slot` ('GPU', or a Slurm 'task' on
    CPU nodes; `ranks_per_node` gives both). ValueError above `MAX_PLAN_RANKS` ranks
    (`check_plan_size`)."""
    check_plan_size(world_size)
    if ranks_per_node < 1:
        raise ValueError(f"ranks per node must be >= 1, got {ranks_per_node}")
    resolved = layout.validate(world_size)
    expected = expected_layout(resolved, world_size)
    modules = {}
    for name, ml in expected.modules.items():
        shape = resolved.module_parallelisms[name].shape
        pp = ml.groups["pp"]
        tp_nodes = ml.groups["tp"] // ranks_per_node
        split = int(np.count_nonzero(tp_nodes.min(axis=1) != tp_nodes.max(axis=1)))
        modules[name] = ModulePlan(
            name, shape, ml.rank_offset, ml.rank_offset + ml.size,
            {kind: tuple(int(n) for n in ml.groups[kind].shape) for kind in ALL_GROUPS},
            np.sort(pp[:, 0]), np.sort(pp[:, -1]), split, ml)
    return Plan(world_size, ranks_per_node, modules, expected, resolved, rank_slot)


def format_members(members, limit: int = 8) -> str:
    """A group's members: the list when short, else its first and last few and the count."""
    members = [int(m) for m in members]
    if len(members) <= limit:
        return "[" + ", ".join(map(str, members)) + "]"
    steps = {b - a for a, b in zip(members, members[1:])}
    if len(steps) == 1:
        step = steps.pop()
        how = "contiguous" if step == 1 else f"every {step}"
        return f"[{members[0]}, {members[1]}, ..., {members[-1]}] ({len(members)} ranks, {how})"
    head = ", ".join(map(str, members[:4]))
    tail = ", ".join(map(str, members[-2:]))
    return f"[{head}, ..., {tail}] ({len(members)} ranks)"


def _node_span(plan: Plan, mod: ModulePlan) -> str:
    first, last = plan.node_of(mod.first_rank), plan.node_of(mod.end_rank - 1)
    count = last - first + 1
    text = f"node {first}" if count == 1 else f"nodes {first}-{last} ({count})"
    g = plan.ranks_per_node
    if mod.first_rank % g or (mod.end_rank % g and mod.end_rank != plan.world_size):
        text += ", shares a node with another module" if not plan.config.colocated else ""
    return text


def format_plan(plan: Plan, ranks: list[int] = ()) -> str:
    """The plan as text: a header, a block per module, then each asked-for rank's groups."""
    g = plan.ranks_per_node
    kind = "colocated modules" if plan.config.colocated else "modules"
    unit = f"{plan.rank_slot}s"
    lines = [f"mimo-launch plan: world size {plan.world_size}, {plan.nodes} node(s) x {g} "
             f"{unit}, {len(plan.modules)} {kind} (nothing started)"]
    for mod in plan.modules.values():
        lines.append(f"  module {mod.name}: ranks [{mod.first_rank}, {mod.end_rank}) "
                     f"({mod.size} ranks)  {shape_text(mod.shape)}")
        lines.append(f"    {_node_span(plan, mod)}; model-parallel size "
                     f"{mod.size // mod.shape['dp']}")
        counts = [f"{k} {n}x{s}" for k, (n, s) in mod.groups.items()]
        lines.append(f"    groups (count x size): {'  '.join(counts[:6])}")
        lines.append(f"                           {'  '.join(counts[6:])}")
        if mod.shape["pp"] > 1:
            lines.append(f"    first-stage ranks: {format_rank_set(mod.first_stage)}")
            lines.append(f"    last-stage ranks:  {format_rank_set(mod.last_stage)}")
        else:
            lines.append("    PP1: every rank is both the first and the last stage")
        if mod.split_tp_groups:
            lines.append(f"    warning: {mod.split_tp_groups} of {mod.groups['tp'][0]} TP groups "
                         f"span more than one node ({g} {unit} per node)")
    for rank in ranks:
        lines.extend(rank_lines(plan, rank))
    return "\n".join(lines)


def rank_lines(plan: Plan, rank: int) -> list[str]:
    """Every group `rank` belongs to, module by module, with its coordinates and stage."""
    g = plan.ranks_per_node
    lines = [f"  rank {rank}: node {rank // g}, {plan.rank_slot} {rank % g}"]
    for mod in plan.modules.values():
        coords = plan.coords(mod.name, rank)
        if coords is None:
            lines.append(f"    {mod.name}: not a member")
            continue
        ml = mod.layout
        first, last = bool(ml.first_stage[rank]), bool(ml.last_stage[rank])
        stage = {(True, True): "first and last stage", (True, False): "first stage",
                 (False, True): "last stage"}.get((first, last), "middle stage")
        where = " ".join(f"{k}={v}" for k, v in coords.items())
        lines.append(f"    {mod.name}: {where}  ({stage})")
        for kind in ALL_GROUPS:
            members = ml.members(kind, rank)
            text = "none (not a member)" if members is None else format_members(members)
            lines.append(f"      {kind:<15} {text}")
    return lines


__all__ = ["Plan", "ModulePlan", "make_plan", "check_plan_size", "MAX_PLAN_RANKS", "format_plan",
           "rank_lines", "ranks_per_node", "format_members"]
