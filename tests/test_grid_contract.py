"""HyperCommGrid's own contract on what `build_hypercomm_grids` returns (SPEC section 1), in real
gloo worlds, with the fast paths on and off (HyperCommGrid.create_pg), on whichever
megatron-core this environment has (CI runs 0.16.1 on Python 3.11 and 0.19.x on Python 3.12):

- one group object per (grid, kind), even where kinds or colocated modules share members;
- `dist.destroy_process_group` per kind, and `grid.destroy()` where megatron-core has it;
- destroying one grid leaves a colocated grid working;
- build, destroy, build again: fresh, working groups and no hang.
"""

from __future__ import annotations

import os
import warnings
from importlib.metadata import version

import pytest
import torch
import torch.distributed as dist

from conftest import layout
from mimo_launch import compat
from mimo_launch.layout.group_kinds import GRID_GROUPS, dims_of
from mimo_launch.mimo_builder import (
    HyperCommGrid,
    build_hypercomm_grids,
    destroy_grid,
    is_pp_first_stage,
    is_pp_last_stage,
    populate_embedding_and_position_groups,
)

FAST = pytest.mark.parametrize("fast", [True, False], ids=["fast-paths", "create_pg"])
WORLD_TIMEOUT_S = 30  # a hang in group creation fails the world well before gloo's 60 s


def _megatron_minor() -> tuple[int, int]:
    major, minor = version("megatron-core").split(".")[:2]
    return int(major), int(minor)


def _set_fast(fast: bool) -> None:
    if not fast:
        os.environ[compat.NO_FAST_PATHS] = "1"


def _sum_of_ranks(group) -> int:
    t = torch.tensor([dist.get_rank()])
    dist.all_reduce(t, group=group)
    return int(t.item())


def _kind_groups(grid) -> dict:
    return {kind: grid.get_pg(dims_of(kind)) for kind in GRID_GROUPS}


def test_grid_destroy_exists_exactly_where_megatron_core_has_it():
    """The legs below take `grid.destroy()` on 0.17+ and the per-kind fallback before: make sure
    each CI leg exercises the branch it claims to."""
    assert callable(getattr(HyperCommGrid, "destroy", None)) == (_megatron_minor() >= (0, 17))


@FAST
@pytest.mark.timeout(120)
def test_every_kind_owns_its_group_and_each_one_destroys(fast, tmp_path, run_world):
    """One rank, every size 1: all ten kinds have the same member list [0]. Each must be its
    own object, and destroying each with plain torch must work (9 of 10 raised before)."""
    cfg = layout(language=dict())

    def body(rank):
        _set_fast(fast)
        grid = build_hypercomm_grids(cfg)["language"]
        groups = _kind_groups(grid)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pos, embd = populate_embedding_and_position_groups(groups["pp"])
        everything = list(groups.values()) + [pos, embd]
        distinct = len({id(g) for g in everything})
        sums = [_sum_of_ranks(g) for g in everything]
        for group in everything:
            dist.destroy_process_group(group)
        return {"distinct": distinct, "sums": sums, "warnings": [str(w.message) for w in caught]}

    (res,) = run_world(tmp_path, 1, body, WORLD_TIMEOUT_S)
    # no deprecation noise from torch's collectives in every rank's log either
    assert res == {"distinct": len(GRID_GROUPS) + 2, "sums": [0] * (len(GRID_GROUPS) + 2),
                   "warnings": []}


@FAST
@pytest.mark.timeout(120)
def test_grid_destroy_or_its_fallback_tears_down_every_group(fast, tmp_path, run_world):
    """`destroy_grid` is `grid.destroy()` on megatron-core >= 0.17, else per-kind destroy;
    either way every kind's group is gone afterwards and nothing raises."""
    cfg = layout(language=dict(tp=2, pp=2))

    def body(rank):
        _set_fast(fast)
        grid = build_hypercomm_grids(cfg)["language"]
        groups = _kind_groups(grid)
        destroy_grid(grid)
        alive = [kind for kind, g in groups.items() if _alive(g)]
        return {"alive": alive}

    res = run_world(tmp_path, 4, body, WORLD_TIMEOUT_S)
    assert res == [{"alive": []}] * 4


def _alive(group) -> bool:
    try:
        dist.get_process_group_ranks(group)
        return True
    except (KeyError, ValueError, RuntimeError):
        return False


@FAST
@pytest.mark.timeout(120)
def test_colocated_modules_are_independent(fast, tmp_path, run_world):
    """Vision TP2 and language TP2 on the same 2 ranks: destroying vision's grid leaves every
    language group working; then language's grid destroys cleanly too."""
    cfg = layout(vision=dict(tp=2), language=dict(tp=2))

    def body(rank):
        _set_fast(fast)
        grids = build_hypercomm_grids(cfg)
        vision, language = _kind_groups(grids["vision"]), _kind_groups(grids["language"])
        shared = [k for k in GRID_GROUPS if vision[k] is language[k]]
        destroy_grid(grids["vision"])
        after = {kind: _sum_of_ranks(g) for kind, g in language.items()}
        destroy_grid(grids["language"])
        return {"shared": shared, "after": after}

    res = run_world(tmp_path, 2, body, WORLD_TIMEOUT_S)
    # by hand: tp, tp+pp, tp+ep+pp and the whole module hold ranks {0, 1} (sum 1); cp, ep, pp,
    # dp, dp+cp and dp+ep are singletons (sum = own rank)
    pair = {"tp", "tp+pp", "tp+ep+pp", "tp+cp+ep+pp+dp"}
    for rank, r in enumerate(res):
        assert r["shared"] == []
        assert r["after"] == {k: (1 if k in pair else rank) for k in GRID_GROUPS}


@FAST
@pytest.mark.timeout(120)
def test_build_destroy_build_again_gives_fresh_working_groups(fast, tmp_path, run_world):
    """Vision TP2 on ranks 0-1, language PP2 on ranks 2-3 (Bridge's build_infra may run more
    than once): build, populate the embedding groups, destroy everything, build and populate
    again. The second round must hold new groups that work (the old code hung here)."""
    cfg = layout(vision=dict(tp=2, dp=1), language=dict(pp=2, dp=1, rank_offset=2))

    def build_round():
        out, made = {}, []
        for name, grid in build_hypercomm_grids(cfg).items():
            groups = _kind_groups(grid)
            pos, embd = populate_embedding_and_position_groups(groups["pp"])
            made.append((grid, pos, embd))
            mine = {k: g for k, g in groups.items() if g is not None}
            out[name] = {"sums": {k: _sum_of_ranks(g) for k, g in mine.items()},
                         "pos": None if pos is None else _sum_of_ranks(pos),
                         "embd": None if embd is None else _sum_of_ranks(embd),
                         "stage": [is_pp_first_stage(groups["pp"]),
                                   is_pp_last_stage(groups["pp"])],
                         "ids": sorted(id(g) for g in mine.values())}
        return out, made

    def body(rank):
        _set_fast(fast)
        first, made = build_round()
        for grid, pos, embd in made:
            destroy_grid(grid)
            for group in (pos, embd):
                if group is not None:
                    dist.destroy_process_group(group)
        second, _ = build_round()
        for name in first:
            first[name].pop("ids")
            second[name].pop("ids")
        return {"first": first, "second": second}

    res = run_world(tmp_path, 4, body, WORLD_TIMEOUT_S)
    for rank, r in enumerate(res):
        assert r["first"] == r["second"], rank
    # by hand, language on ranks 2-3 as one pipeline [2, 3]: rank 2 is the first stage
    lang2, lang3 = res[2]["second"]["language"], res[3]["second"]["language"]
    assert (lang2["pos"], lang2["embd"], lang2["stage"]) == (2, 5, [True, False])
    assert (lang3["pos"], lang3["embd"], lang3["stage"]) == (None, 5, [False, True])
    assert res[0]["second"]["vision"]["sums"]["tp"] == 1 and res[0]["second"]["language"] == {
        "sums": {}, "pos": None, "embd": None, "stage": [True, True]}
