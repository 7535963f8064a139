"""Real processes, real gloo process groups: memberships against the oracle, embedding
all-reduces that stay separate, and the verifier both passing and failing."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from conftest import assert_memberships_match, collect_memberships, layout
from mimo_launch.launchers.local_launcher import launch_local
from mimo_launch.mimo_builder import (
    build_mimo_groups,
    is_pp_first_stage,
    is_pp_last_stage,
    populate_embedding_and_position_groups,
)
from mimo_launch.rank.rank_runner import RankJob

LAYOUTS = {
    "vlm_8": (layout(vision=dict(tp=2, dp=2), language=dict(pp=2, dp=2, rank_offset=4)), 8),
    "single_8": (layout(language=dict(tp=2, pp=2)), 8),
    "colocated_8": (layout(vision=dict(tp=2), language=dict(tp=2, pp=2)), 8),
    "vlm_16": (layout(vision=dict(tp=2, etp=2, dp=2),
                      language=dict(cp=2, pp=4, dp=1, rank_offset=8)), 16),
    "three_modules_16": (layout(vision=dict(tp=2, dp=2), audio=dict(dp=4, rank_offset=4),
                                language=dict(tp=2, cp=2, pp=2, dp=1, rank_offset=8)), 16),
}


def _ranks(group):
    return None if group is None else sorted(dist.get_process_group_ranks(group))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", LAYOUTS)
def test_memberships_equal_the_oracle(name, tmp_path, run_world):
    cfg, world = LAYOUTS[name]
    results = run_world(tmp_path, world, collect_memberships(cfg))
    assert_memberships_match(results, cfg, world)


@pytest.mark.timeout(120)
def test_embedding_allreduces_of_two_pp_groups_stay_separate(tmp_path, run_world):
    """SPEC 4, first trap: PP groups [0,2] [1,3] [4,6] [5,7]; each rank calls the one-argument
    API with only its own PP group, then every embedding group all-reduces 2**rank at once.
    Each sum must be exactly its own members' (a cross-wired group would mix pipelines)."""
    pp_lists = [[0, 2], [1, 3], [4, 6], [5, 7]]

    def body(rank):
        my_pp = None
        for ranks in pp_lists:  # every rank creates every PP group, in the same order
            group = dist.new_group(ranks)
            if rank in ranks:
                my_pp = group
        pos, embd = populate_embedding_and_position_groups(my_pp)
        sums = {}
        for label, group in (("pos", pos), ("embd", embd)):
            if group is not None:
                t = torch.tensor([2 ** rank])
                dist.all_reduce(t, group=group)
                sums[label] = int(t.item())
        return {"pos": _ranks(pos), "embd": _ranks(embd), "sums": sums,
                "first": is_pp_first_stage(my_pp), "last": is_pp_last_stage(my_pp)}

    res = run_world(tmp_path, 8, body)
    for pp in pp_lists:
        first, last = pp
        assert res[first]["pos"] == [first] and res[first]["sums"]["pos"] == 2 ** first
        assert res[last]["pos"] is None
        for r in pp:
            assert res[r]["embd"] == pp
            assert res[r]["sums"]["embd"] == 2 ** first + 2 ** last
        assert (res[first]["first"], res[first]["last"]) == (True, False)
        assert (res[last]["first"], res[last]["last"]) == (False, True)


@pytest.mark.timeout(120)
def test_ranks_outside_a_module_get_none_after_taking_part(tmp_path, run_world):
    cfg, world = LAYOUTS["vlm_8"]

    def body(rank):
        groups = build_mimo_groups(cfg)
        lang = groups.modules["language"]
        out = {"tp": _ranks(lang.groups["tp"]), "pos": _ranks(lang.pos_embd),
               "embd": _ranks(lang.embd), "first": lang.is_first_stage,
               "calls": groups.new_group_calls}
        # a world-wide group after the build must still line up on every rank
        t = torch.tensor([1])
        dist.all_reduce(t, group=dist.new_group(list(range(world))))
        out["after"] = int(t.item())
        groups.destroy()
        return out

    res = run_world(tmp_path, world, body)
    for rank in range(4):
        assert res[rank] | {"calls": 0} == {"tp": None, "pos": None, "embd": None,
                                            "first": True, "calls": 0, "after": world}
    assert len({r["calls"] for r in res}) == 1  # every rank made the same new_group calls
    assert all(r["after"] == world for r in res)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["vlm_8", "colocated_8", "vlm_16"])
def test_presets_pass_verification(name, tmp_path):
    cfg, world = LAYOUTS[name]
    report = launch_local(RankJob(cfg, world, str(tmp_path), timeout_s=60))
    assert report.passed, report.mismatches[:5] or report.failure
    assert report.exit_code == 0 and report.mismatches == []
    assert set(report.timings) == {"init", "grids", "embedding", "verify"}
    assert len(report.hosts) == world and (tmp_path / "report.json").exists()


@pytest.mark.timeout(120)
def test_the_verifier_fails_on_another_layout(tmp_path):
    """Build TP2 PP2 DP2 and check it against TP2 PP1 DP4: PP, DP and embedding groups differ."""
    built = layout(language=dict(tp=2, pp=2))
    other = layout(language=dict(tp=2, pp=1))
    report = launch_local(RankJob(built, 8, str(tmp_path), timeout_s=60, expected=other))
    assert not report.passed and report.exit_code == 1
    found = {(m["rank"], m["group"], m["check"]): m for m in report.mismatches}
    assert found[(0, "pp", "members")]["expected"] == [0]
    assert found[(0, "pp", "members")]["actual"] == [0, 2]
    assert found[(2, "dp", "members")]["expected"] == [0, 2, 4, 6]
    assert found[(2, "dp", "members")]["actual"] == [2, 6]
    assert found[(2, "pos_embd", "members")]["expected"] == [2]
    assert found[(2, "pos_embd", "members")]["actual"] is None
    assert found[(2, "stage", "stage")]["actual"] == {"first": False, "last": True}
    assert (0, "tp", "members") not in found  # TP groups are the same in both layouts
    assert all(m["module"] == "language" for m in report.mismatches)


def test_a_rank_refuses_a_world_size_variable_of_another_world(monkeypatch):
    # HyperCommGrid sizes its grids by the environment's WORLD_SIZE before the world's own
    from mimo_launch.rank.rank_runner import init_distributed

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(RuntimeError, match="WORLD_SIZE=3 in this rank's environment, but the "
                                           "world has 8 ranks"):
        init_distributed(0, 8, "gloo", 5, store=None)
    assert not dist.is_initialized()


@pytest.mark.timeout(120)
def test_a_world_destroyed_behind_our_back_gets_fresh_groups(tmp_path, run_world):
    """Build, destroy the world with plain torch (not MimoGroups.destroy), init a new world on
    a new store and build again: every group must be created anew and be right."""
    from mimo_launch.rank.rank_runner import init_distributed

    cfg, world_size = LAYOUTS["single_8"]

    def body(rank):
        store = dist.distributed_c10d._get_default_store()
        build_mimo_groups(cfg)
        dist.destroy_process_group()
        fresh = dist.PrefixStore("second", store)
        init_distributed(rank, world_size, "gloo", 60, fresh)
        groups = build_mimo_groups(cfg)
        t = torch.tensor([2 ** rank])
        dist.all_reduce(t, group=groups.modules["language"].embd)
        out = {"embd": _ranks(groups.modules["language"].embd), "sum": int(t.item())}
        groups.destroy()
        return out

    res = run_world(tmp_path, world_size, body)
    for pp in ([0, 2], [1, 3], [4, 6], [5, 7]):
        for r in pp:
            assert res[r]["embd"] == pp and res[r]["sum"] == sum(2 ** m for m in pp)


@pytest.mark.timeout(120)
def test_the_failure_path_collects_a_bounded_number_of_member_lists(tmp_path, monkeypatch):
    """Every mismatch is listed, but only MAX_DETAILED of them carry the actual member list
    (sent by the rank concerned); the rest summarise the actual group by size, min and max."""
    from mimo_launch.checks import verify as verify_module

    built = layout(language=dict(tp=2, pp=2))
    other = layout(language=dict(tp=2, pp=1))
    full = launch_local(RankJob(built, 8, str(tmp_path / "full"), timeout_s=60, expected=other))
    monkeypatch.setattr(verify_module, "MAX_DETAILED", 2)  # the forked ranks inherit it
    capped = launch_local(RankJob(built, 8, str(tmp_path / "capped"), timeout_s=60,
                                  expected=other))
    assert capped.exit_code == 1
    key = [(m["rank"], m["group"], m["check"]) for m in full.mismatches]
    assert [(m["rank"], m["group"], m["check"]) for m in capped.mismatches] == key
    lists = [m for m in capped.mismatches if isinstance(m["actual"], list)]
    assert len(lists) == 2 and lists == [m for m in full.mismatches
                                         if isinstance(m["actual"], list)][:2]
    summarised = [m for m in capped.mismatches
                  if m["check"] == "members" and isinstance(m["actual"], dict)]
    assert summarised and all(set(m["actual"]) == {"size", "min", "max"} for m in summarised)
    pp0 = next(m for m in capped.mismatches if (m["rank"], m["group"]) == (2, "pp"))
    assert pp0["actual"] == {"size": 2, "min": 0, "max": 2}  # rank 2's PP group is [0, 2]
