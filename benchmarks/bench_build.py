"""Group construction and verification on real gloo worlds (one forked process per rank).

In one world of W ranks, each repeat times, barrier to barrier, (1) our full build
(`build_mimo_groups`: grids and embedding groups) followed by the verification, (2) a plain
baseline calling `HyperCommGrid.create_pg` for the same dims (no embedding groups) and (3)
megatron-core's `parallel_state.initialize_model_parallel` for the same TP/CP/PP/DP (its defaults,
which include the gloo copies of the data-parallel groups). Every builder's groups are destroyed
before the next one runs. A builder's time is the slowest rank's; the figure is the median over
repeats. `new_group` calls are counted at torch's `_new_group_with_tag`, which every `new_group`
(also inside `new_subgroups_by_enumeration`) goes through.
"""

from __future__ import annotations

import pickle
import socket
from contextlib import contextmanager

import torch
import torch.distributed as dist

from mimo_launch.checks.verify import verify
from mimo_launch.layout.group_kinds import GRID_DIMS, GRID_GROUPS, dims_of
from mimo_launch.layout.layout_oracle import expected_layout
from mimo_launch.mimo_builder import HyperCommGrid, build_mimo_groups

from .common import counting_new_groups, destroy_groups, in_world, layout, median, timed_collective


def single_module(world_size: int) -> dict:
    """The single-module layout used at `world_size`: TP2 PP2 CP1, DP = W/4."""
    return {"tp": 2, "cp": 1, "pp": 2, "dp": world_size // 4}


def floor_groups(cfg, world_size: int) -> int:
    """The groups the layout needs: one per (module, kind) and member list, grids and
    embedding (SPEC section 1: kinds with equal members still get a group each)."""
    lay = expected_layout(cfg, world_size)
    return sum(len(rows) for mod in lay.modules.values() for rows in mod.groups.values())


def _ours(cfg, host):
    with counting_new_groups() as seen:
        t_build, groups = timed_collective(lambda: build_mimo_groups(cfg))
    lay = expected_layout(cfg, dist.get_world_size())
    with traffic() as io:
        t_verify, (verdict, _) = timed_collective(lambda: verify(groups, lay, host))
    groups.destroy()
    return {"build": t_build, "verify": t_verify, "passed": verdict.passed,
            "calls": seen["calls"], "world_calls": groups.new_group_calls, **io}


def _baseline(spec):
    shape = [spec["tp"], spec["cp"], 1, spec["pp"], spec["dp"]]

    def build():
        grid = HyperCommGrid(shape, list(GRID_DIMS), backend="gloo")
        for kind in GRID_GROUPS:
            grid.create_pg(dims_of(kind))
        return grid

    with counting_new_groups() as seen:
        t, _ = timed_collective(build)
    destroy_groups(seen["groups"])
    return {"build": t, "calls": seen["calls"]}


def _mcore(spec):
    from megatron.core import parallel_state as ps

    def build():
        ps.initialize_model_parallel(spec["tp"], spec["pp"], context_parallel_size=spec["cp"])

    with counting_new_groups() as seen:
        t, _ = timed_collective(build)
    ps.destroy_model_parallel()
    destroy_groups(seen["groups"])
    return {"build": t, "calls": seen["calls"]}


@contextmanager
def traffic():
    """Count the payload bytes this rank sends and receives in torch.distributed collectives
    (tensor bytes; pickled size for *_object; the logical contribution, not gloo's framing)."""
    io = {"sent": 0, "recv": 0}
    saved = {name: getattr(dist, name) for name in
             ("all_reduce", "gather", "broadcast", "gather_object", "all_gather")}
    me = dist.get_rank()

    def all_reduce(t, *a, group=None, **k):
        io["sent"] += t.nbytes
        io["recv"] += t.nbytes
        return saved["all_reduce"](t, *a, group=group, **k)

    def gather(t, gather_list=None, dst=0, **k):
        if me == dst:
            io["recv"] += t.nbytes * (dist.get_world_size() - 1)
        else:
            io["sent"] += t.nbytes
        return saved["gather"](t, gather_list, dst=dst, **k)

    def gather_object(obj, object_gather_list=None, dst=0, **k):
        n = len(pickle.dumps(obj))
        if me == dst:
            io["recv"] += n * (dist.get_world_size() - 1)
        else:
            io["sent"] += n
        return saved["gather_object"](obj, object_gather_list, dst=dst, **k)

    def broadcast(t, src=0, **k):
        if me == src:
            io["sent"] += t.nbytes * (dist.get_world_size() - 1)
        else:
            io["recv"] += t.nbytes
        return saved["broadcast"](t, src=src, **k)

    def all_gather(out, t, *a, **k):
        io["sent"] += t.nbytes
        io["recv"] += t.nbytes * (len(out) - 1)
        return saved["all_gather"](out, t, *a, **k)

    for name, fn in (("all_reduce", all_reduce), ("gather", gather), ("broadcast", broadcast),
                     ("gather_object", gather_object), ("all_gather", all_gather)):
        setattr(dist, name, fn)
    try:
        yield io
    finally:
        for name, fn in saved.items():
            setattr(dist, name, fn)


def measure(world_size: int, repeats: int) -> dict:
    """All builders at `world_size`, `repeats` times each, in one world; medians."""
    spec = single_module(world_size)
    cfg = layout(language=spec)
    host = socket.gethostname()

    def body(rank: int) -> dict:
        torch.manual_seed(0)
        runs = []
        for i in range(repeats):
            order = [("ours", lambda: _ours(cfg, host)), ("baseline", lambda: _baseline(spec)),
                     ("mcore", lambda: _mcore(spec))]
            k = i % 3
            res = {}
            for name, fn in order[k:] + order[:k]:  # rotate, so no builder always runs first
                res[name] = fn()
            runs.append(res)
        return {"runs": runs}

    per_rank = in_world(world_size, body)
    out = {"W": world_size, "spec": spec, "floor": floor_groups(cfg, world_size)}
    for name in ("ours", "baseline", "mcore"):
        times = [max(r["runs"][i][name]["build"] for r in per_rank) for i in range(repeats)]
        out[f"{name}_build_s"] = median(times)
        out[f"{name}_calls"] = per_rank[0]["runs"][0][name]["calls"]
    ours = [[r["runs"][i]["ours"] for r in per_rank] for i in range(repeats)]
    out["verify_s"] = median([max(x["verify"] for x in run) for run in ours])
    out["passed"] = all(x["passed"] for run in ours for x in run)
    out["world_calls"] = ours[0][0]["world_calls"]
    first = ours[0]
    out["verify_sent_max"] = max(x["sent"] for x in first[1:])
    out["verify_recv_max"] = max(x["recv"] for x in first[1:])
    out["verify_rank0_recv"] = first[0]["recv"]
    out["verify_rank0_sent"] = first[0]["sent"]
    return out

