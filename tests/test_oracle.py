"""The expected-layout oracle: SPEC's worked example, every group kind, offsets, colocation."""

import numpy as np
import pytest

from conftest import layout
from mimo_launch.layout.layout_oracle import SPEC_GRID_KINDS as GRID_GROUPS
from mimo_launch.layout.layout_oracle import SPEC_KINDS as ALL_GROUPS
from mimo_launch.layout.layout_oracle import expected_layout


def test_spec_worked_example():
    mod = expected_layout(layout(language=dict(tp=2, pp=2, dp=2)), 8).modules["language"]
    assert mod.groups["tp"].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert mod.groups["pp"].tolist() == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert mod.groups["dp"].tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert mod.groups["tp+pp"].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert mod.groups["pos_embd"].tolist() == [[0], [1], [4], [5]]
    assert mod.groups["embd"].tolist() == [[0, 2], [1, 3], [4, 6], [5, 7]]
    for rank in (2, 3, 6, 7):
        assert mod.members("pos_embd", rank) is None
    assert mod.members("embd", 6) == [4, 6]
    assert mod.first_stage.tolist() == [True, True, False, False] * 2
    assert mod.last_stage.tolist() == [False, False, True, True] * 2


@pytest.mark.parametrize("kind", GRID_GROUPS)
def test_every_grid_group_matches_the_formula(kind):
    """Brute force over SPEC's formula: members share every coordinate outside the group's
    dims, ascending; ranks outside the module have no group."""
    offset, sizes = 5, dict(tp=2, cp=2, ep=2, pp=2, dp=5)
    cfg = layout(other=dict(dp=5), language=dict(tp=2, cp=2, etp=2, pp=2, dp=5, rank_offset=offset))
    mod = expected_layout(cfg, offset + 80).modules["language"]
    coords = {}
    for d in range(sizes["dp"]):
        for p in range(sizes["pp"]):
            for e in range(sizes["ep"]):
                for c in range(sizes["cp"]):
                    for t in range(sizes["tp"]):
                        rank = offset + t + 2 * (c + 2 * (e + 2 * (p + 2 * d)))
                        coords[rank] = dict(tp=t, cp=c, ep=e, pp=p, dp=d)
    dims = kind.split("+")
    for rank, here in coords.items():
        want = sorted(q for q, there in coords.items()
                      if all(there[k] == here[k] for k in here if k not in dims))
        assert mod.members(kind, rank) == want
    for rank in range(offset):
        assert mod.members(kind, rank) is None


def test_offsets_and_disjoint_modules():
    cfg = layout(vision=dict(tp=2, dp=2), language=dict(tp=2, pp=2, dp=1, rank_offset=4))
    exp = expected_layout(cfg, 8)
    assert exp.modules["vision"].groups["tp"].tolist() == [[0, 1], [2, 3]]
    assert exp.modules["language"].groups["pp"].tolist() == [[4, 6], [5, 7]]
    assert exp.modules["language"].members("tp", 0) is None
    assert exp.modules["vision"].members("tp+cp+ep+pp+dp", 5) is None
    assert exp.modules["language"].groups["embd"].tolist() == [[4, 6], [5, 7]]
    # outside the module, both stage flags are True (as is_pp_first_stage(None) is)
    assert exp.modules["language"].first_stage[:4].all()


def test_colocated_modules_share_ranks():
    cfg = layout(vision=dict(tp=2), language=dict(tp=2, pp=2))  # DP derived from the world
    exp = expected_layout(cfg, 8)
    assert exp.modules["vision"].groups["dp"].tolist() == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert exp.modules["language"].groups["dp"].tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    for kind in ALL_GROUPS:
        for name, mod in exp.modules.items():
            # every rank in exactly one group of each grid kind
            if kind in GRID_GROUPS:
                assert (mod.group_index[kind] >= 0).all(), (name, kind)


def test_pp1_embedding_groups_are_single_ranks():
    exp = expected_layout(layout(language=dict(tp=2, dp=2)), 4).modules["language"]
    assert exp.groups["pos_embd"].tolist() == [[0], [1], [2], [3]]
    assert exp.groups["embd"].tolist() == [[0], [1], [2], [3]]
    assert exp.first_stage.all() and exp.last_stage.all()


def test_partition_invariants_large_world():
    cfg = layout(vision=dict(tp=8, dp=2048), language=dict(tp=8, pp=8, cp=2, dp=1024,
                                                             rank_offset=16384))
    exp = expected_layout(cfg, 147456)
    for mod in exp.modules.values():
        for kind in GRID_GROUPS:
            g = mod.groups[kind]
            flat = np.sort(g.ravel())
            assert (flat == np.arange(mod.rank_offset, mod.rank_offset + mod.size)).all()
            assert (np.diff(g, axis=1) > 0).all()  # ascending members
