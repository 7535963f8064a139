"""Scale by simulation: one process plays one rank of a large world on torch's fake backend.

Each sample is a fresh process forked from this one (torch and megatron-core imported once),
which joins a `fake` world of W ranks (no data moves), builds every grid
(`build_hypercomm_grids`) and the embedding groups, and checks this rank's memberships against
the oracle. The fake backend's all-gather returns no data, so the embedding groups are made
through `populate_embedding_and_position_groups`' own creation path with the (first, last)
stage pairs that its all-gather would have returned, computed from the grid's PP enumeration.
Peak memory is the child's VmHWM (resident high-water mark) after the build, and its growth
over the VmHWM it had right after joining the world.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore  # noqa: E402  (registers "fake")

from mimo_launch import compat
from mimo_launch.groups.group_factory import GroupFactory
from mimo_launch.layout.group_kinds import GRID_GROUPS, dims_of
from mimo_launch.layout.layout_oracle import expected_layout
from mimo_launch.mimo_builder import MimoGroups, ModuleGroups, _build_grids, _embedding_groups

from .common import layout, median, vm_hwm_kib


def sim_layout(world_size: int):
    """A vision encoder TP4 on the first half, a language model TP8 PP8 on the second."""
    half = world_size // 2
    return layout(vision=dict(tp=4, dp=half // 4, rank_offset=0),
                  language=dict(tp=8, pp=8, dp=half // 64, rank_offset=half))


def _ranks(group):
    return None if group is None else sorted(dist.get_process_group_ranks(group))


def play_rank(world_size: int, rank: int, fast: bool = True) -> dict:
    """Build as `rank` of a fake world; return times, memory and the membership check.
    `fast=False`: MIMO_LAUNCH_NO_FAST_PATHS=1, so HyperCommGrid.create_pg makes the grid
    groups and every rank calls torch's `new_group` for every group."""
    os.environ["WORLD_SIZE"], os.environ["RANK"] = str(world_size), str(rank)
    if not fast:
        os.environ[compat.NO_FAST_PATHS] = "1"
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    factory = GroupFactory(dist.get_backend())
    cfg = sim_layout(world_size)
    hwm0 = vm_hwm_kib()
    t0 = time.perf_counter()
    grids = _build_grids(cfg, factory)
    build_s = time.perf_counter() - t0
    embedding = {}
    for name, grid in grids.items():
        pp = np.asarray(grid.get_rank_enum(["pp"]))  # what the all-gather would return
        pairs = np.stack([pp.min(axis=1), pp.max(axis=1)], axis=1)
        t1 = time.perf_counter()
        embedding[name] = _embedding_groups(grid.get_pg(["pp"]), pairs, factory)
        build_s += time.perf_counter() - t1
    hwm1 = vm_hwm_kib()
    t1 = time.perf_counter()
    lay = expected_layout(cfg, world_size)
    oracle_s = time.perf_counter() - t1
    wrong = []
    for name, grid in grids.items():
        mod = lay.modules[name]
        actual = {kind: _ranks(grid.get_pg(dims_of(kind))) for kind in GRID_GROUPS}
        actual["pos_embd"], actual["embd"] = map(_ranks, embedding[name])
        for kind, members in actual.items():
            if members != mod.members(kind, rank):
                wrong.append(f"{name}/{kind}: {members} != {mod.members(kind, rank)}")
    MimoGroups({name: ModuleGroups(grid, {}, *embedding[name])
                for name, grid in grids.items()}).destroy()
    dist.destroy_process_group()
    return {"build_s": build_s, "hwm_kib": hwm1, "growth_kib": hwm1 - hwm0,
            "oracle_s": oracle_s, "wrong": wrong, "world_calls": factory.new_group_calls,
            "member_calls": factory.member_calls}


def forked(fn, *args) -> dict:
    """Run `fn(*args) -> dict` in a forked child; return its dict."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            data = json.dumps(fn(*args)).encode()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            data, code = json.dumps({"error": repr(exc)}).encode(), 1
        with os.fdopen(w, "wb") as f:
            f.write(data)
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    result = json.loads(data)
    if "error" in result:
        raise RuntimeError(f"simulated rank failed: {result['error']}")
    return result


def measure(world_size: int, repeats: int) -> dict:
    """Sampled ranks (encoder, first and last language stage), `repeats` times each, with the
    factory's fast path on and off (alternating)."""
    half = world_size // 2
    samples = [0, half, world_size - 1]
    runs = {True: [], False: []}
    for _ in range(repeats):
        for fast in (True, False):
            runs[fast] += [forked(play_rank, world_size, r, fast) for r in samples]
    fast = runs[True]
    return {"W": world_size, "ranks": samples,
            "build_s": median([x["build_s"] for x in fast]),
            "build_max_s": max(x["build_s"] for x in fast),
            "slow_build_s": median([x["build_s"] for x in runs[False]]),
            "hwm_mib": max(x["hwm_kib"] for x in fast) / 1024,
            "growth_mib": max(x["growth_kib"] for x in fast) / 1024,
            "world_calls": fast[0]["world_calls"],
            "member_calls": max(x["member_calls"] for x in fast),
            "wrong": sorted({w for x in runs[True] + runs[False] for w in x["wrong"]})}
