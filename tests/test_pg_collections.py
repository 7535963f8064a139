"""megatron-core ProcessGroupCollections from the built groups (SPEC 4b), and the verification
reading the groups as they sit in them (SPEC 5), in real gloo worlds, on whichever
megatron-core this environment has (CI: 0.16.1 on Python 3.11, 0.19.x on Python 3.12)."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from conftest import layout
from mimo_launch.checks.verify import verify
from mimo_launch.groups.pg_collections import (
    COLLECTION_FIELDS,
    build_mimo_process_groups,
    check_topology,
    default_topology,
    process_group_collection_class,
)
from mimo_launch.layout.layout_oracle import expected_layout

VLM_16 = layout(vision=dict(tp=2, etp=2, dp=2), language=dict(cp=2, pp=4, dp=1, rank_offset=8))
VLM_8 = layout(vision=dict(tp=2, dp=2), language=dict(pp=2, dp=2, rank_offset=4))


@pytest.fixture(scope="module", autouse=True)
def imported_once():
    """megatron-core's package init in this process, before the ranks fork (as the launcher
    does): seconds once instead of in every rank."""
    process_group_collection_class()


def _ranks(group):
    return None if group is None else sorted(dist.get_process_group_ranks(group))


def test_topology_defaults_and_checks():
    assert default_topology(["vision", "audio", "language"]) == {
        "vision": ["language"], "audio": ["language"], "language": []}
    assert check_topology({"vision": ["audio"]}, ["vision", "audio", "language"]) == {
        "vision": ["audio"], "audio": [], "language": []}
    with pytest.raises(ValueError, match="unknown module.*video; modules are vision, language"):
        check_topology({"video": ["language"]}, ["vision", "language"])
    with pytest.raises(ValueError, match="language feed themselves"):
        check_topology({"language": ["language"]}, ["vision", "language"])


@pytest.mark.timeout(120)
def test_collections_hold_the_built_groups_field_by_field(tmp_path, run_world):
    def body(rank):
        from megatron.core.process_groups_config import ProcessGroupCollection

        pgs = build_mimo_process_groups(VLM_16)
        out = {"rank_modules": pgs.rank_modules, "topology": pgs.topology}
        for name, collection in pgs.collections.items():
            if collection is None:
                out[name] = None
                continue
            mg = pgs.groups.modules[name]
            out[name] = {f: _ranks(getattr(collection, f)) for f in COLLECTION_FIELDS}
            out[name + "_same_objects"] = all(
                getattr(collection, f) is mg.group(k) for f, k in COLLECTION_FIELDS.items())
            out[name + "_class"] = isinstance(collection, ProcessGroupCollection)
        pgs.destroy()
        return out

    res = run_world(tmp_path, 16, body)
    exp = expected_layout(VLM_16, 16)
    for rank, r in enumerate(res):
        mine = "vision" if rank < 8 else "language"
        other = "language" if rank < 8 else "vision"
        assert r["rank_modules"] == [mine] and r[other] is None
        assert r["topology"] == {"vision": ["language"], "language": []}
        assert r[mine + "_same_objects"] and r[mine + "_class"]
        want = {f: exp.modules[mine].members(k, rank) for f, k in COLLECTION_FIELDS.items()}
        assert r[mine] == want, rank
    # by hand: vision TP2 ETP2 DP2 on 0-7 (rank = tp + 2*ep + 4*dp); language CP2 PP4 on 8-15
    # (rank = 8 + cp + 2*pp)
    assert res[5]["vision"] == {"tp": [4, 5], "dp": [1, 5], "pp": [5], "cp": [5], "ep": [5, 7],
                                "dp_cp": [1, 5], "mp": [4, 5], "tp_ep_pp": [4, 5, 6, 7],
                                "pos_embd": [5], "embd": [5]}
    assert res[11]["language"] == {"tp": [11], "dp": [11], "pp": [9, 11, 13, 15],
                                   "cp": [10, 11], "ep": [11], "dp_cp": [10, 11],
                                   "mp": [9, 11, 13, 15], "tp_ep_pp": [9, 11, 13, 15],
                                   "pos_embd": None, "embd": None}
    assert res[15]["language"]["embd"] == [9, 15] and res[8]["language"]["pos_embd"] == [8]


def _verify_collections(cfg, world_size, rewire=None):
    """A rank body: build the collections, let `rewire(pgs)` change them, verify them; rank 0
    returns the mismatches."""
    def body(rank):
        pgs = build_mimo_process_groups(cfg)
        if rewire is not None:
            rewire(pgs)
        verdict, _ = verify(pgs, expected_layout(cfg, world_size), "local")
        pgs.destroy()
        return {"passed": verdict.passed, "mismatches": [vars(m) for m in verdict.mismatches]}
    return body


@pytest.mark.timeout(120)
def test_right_collections_pass_verification(tmp_path, run_world):
    res = run_world(tmp_path, 8, _verify_collections(VLM_8, 8))
    assert res[0] == {"passed": True, "mismatches": []}
    assert all(r["passed"] for r in res)


@pytest.mark.timeout(120)
def test_a_collection_whose_dp_is_another_kinds_group_fails_verification(tmp_path, run_world):
    """Every vision rank's collection gets its `tp` group as `dp` (a typo a training script
    could make); the grid and every other field are right. Vision TP2 DP2 on ranks 0-3:
    dp should be [0,2] [1,3], tp is [0,1] [2,3]."""
    def wire_dp_to_tp(pgs):
        collection = pgs.collections["vision"]
        if collection is not None:
            collection.dp = collection.tp

    res = run_world(tmp_path, 8, _verify_collections(VLM_8, 8, wire_dp_to_tp))
    assert not any(r["passed"] for r in res)
    assert res[0]["mismatches"] == [
        {"rank": 0, "module": "vision", "group": "dp", "check": "members",
         "expected": [0, 2], "actual": [0, 1]},
        {"rank": 1, "module": "vision", "group": "dp", "check": "members",
         "expected": [1, 3], "actual": [0, 1]},
        {"rank": 2, "module": "vision", "group": "dp", "check": "members",
         "expected": [0, 2], "actual": [2, 3]},
        {"rank": 3, "module": "vision", "group": "dp", "check": "members",
         "expected": [1, 3], "actual": [2, 3]},
    ]
