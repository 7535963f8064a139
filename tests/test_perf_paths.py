"""Correctness of the fast paths (benchmarks/ measures their speed): the group factory's
non-member skip with groups stored straight into the grid, against HyperCommGrid's public
`create_pg` (MIMO_LAUNCH_NO_FAST_PATHS=1); the embedding groups' creation from gathered pairs;
host-name encoding.

Large worlds are played one rank at a time on torch's fake backend (no data moves), each in a
forked child so that no default group leaks into other tests.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore

from conftest import layout
from mimo_launch import compat
from mimo_launch.checks.verify import decode_host, encode_host
from mimo_launch.groups.group_factory import GroupFactory
from mimo_launch.layout.group_kinds import GRID_GROUPS, dims_of
from mimo_launch.layout.layout_oracle import expected_layout
from mimo_launch.mimo_builder import MimoGroups, ModuleGroups, _build_grids, _embedding_groups

WORLD = 256
CFG = layout(vision=dict(tp=4, dp=32, rank_offset=0),
             language=dict(tp=2, cp=2, pp=4, dp=8, rank_offset=128))


def _in_child(fn, *args):
    """Run `fn(*args) -> JSON-able` in a forked child and return its result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            data = json.dumps({"ok": fn(*args)})
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            data = json.dumps({"error": repr(exc)})
        with os.fdopen(w, "w") as f:
            f.write(data)
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        result = json.loads(f.read())
    os.waitpid(pid, 0)
    assert "error" not in result, result.get("error")
    return result["ok"]


def _ranks(group):
    return None if group is None else sorted(dist.get_process_group_ranks(group))


def _play(rank: int, fast: bool) -> dict:
    os.environ["WORLD_SIZE"] = str(WORLD)
    if not fast:  # HyperCommGrid.create_pg, and dist.new_group for every group on every rank
        os.environ[compat.NO_FAST_PATHS] = "1"
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=WORLD)
    factory = GroupFactory(dist.get_backend())
    grids = _build_grids(CFG, factory)
    out, built = {}, {}
    for name, grid in grids.items():
        pp = np.asarray(grid.get_rank_enum(["pp"]))
        pairs = np.repeat(np.stack([pp.min(1), pp.max(1)], 1), 3, axis=0)  # as gathered
        pairs = np.concatenate([pairs, [[-1, -1]]])[::-1]  # outsiders, any order
        pos, embd = _embedding_groups(grid.get_pg(["pp"]), pairs, factory)
        groups = {kind: grid.get_pg(dims_of(kind)) for kind in GRID_GROUPS}
        built[name] = ModuleGroups(grid, groups, pos, embd)
        groups |= {"pos_embd": pos, "embd": embd}
        out[name] = {kind: [_ranks(g), None if g is None else g.group_name]
                     for kind, g in groups.items()}
    result = {"groups": out, "world_calls": factory.new_group_calls,
              "member_calls": factory.member_calls, "counter": compat.group_count(),
              "registered": compat.can_register_groups(
                  type(grids["language"]), list(grids["language"].dim_names),
                  [dims_of(kind) for kind in GRID_GROUPS])}
    MimoGroups(built).destroy()
    dist.destroy_process_group()
    return result


@pytest.mark.parametrize("rank", [0, 127, 128, 131, 200, 255])
def test_fast_path_matches_oracle_and_torchs_own_naming(rank):
    fast, slow = _in_child(_play, rank, True), _in_child(_play, rank, False)
    expected = expected_layout(CFG, WORLD)
    for name, groups in fast["groups"].items():
        for kind, (members, _) in groups.items():
            assert members == expected.modules[name].members(kind, rank), (name, kind)
    # same groups under the same torch names, and the same counter afterwards, as when
    # HyperCommGrid.create_pg makes them and every list goes through dist.new_group
    assert fast["registered"] and not slow["registered"]
    assert fast["groups"] == slow["groups"]
    assert fast["counter"] == slow["counter"] and fast["world_calls"] == slow["world_calls"]
    assert fast["member_calls"] <= len(GRID_GROUPS) + 2 < slow["member_calls"]


def _ragged(rank: int) -> list:
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=8)
    factory = GroupFactory()
    first = factory.new_subgroups([[1, 0], [2], [3]])  # unsorted members, ragged widths
    again = factory.new_subgroups([[0, 1], [5, 4, 6]])  # [0, 1] again: a group of its own
    out = [_ranks(first), _ranks(again), factory.new_group_calls,
           first is not None and first is again]
    for group in {id(g): g for g in (first, again) if g is not None}.values():
        dist.destroy_process_group(group)
    dist.destroy_process_group()
    return out


def test_factory_makes_a_new_group_for_every_list_ragged_and_unsorted_too():
    assert _in_child(_ragged, 0) == [[0, 1], [0, 1], 5, False]
    assert _in_child(_ragged, 3) == [[3], None, 5, False]
    assert _in_child(_ragged, 5) == [None, [4, 5, 6], 5, False]


@pytest.mark.parametrize("host", ["node-001", "", "x" * 80, "nœud-ü"])
def test_host_names_travel_as_fixed_size_words(host):
    words = encode_host(host)
    assert words.dtype == np.int64 and words.shape == (8,)
    assert decode_host(words) == host.encode()[:64].decode(errors="replace")
