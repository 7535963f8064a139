"""Property tests: random valid layouts keep the oracle's invariants (W <= 64), and random
layouts through the real builder on real gloo groups match the oracle (W <= 16)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_memberships_match, collect_memberships, world
from mimo_launch.layout.group_kinds import GRID_GROUPS, dims_of
from mimo_launch.layout.layout_oracle import expected_layout
from mimo_launch.mimo_config import MimoParallelismConfig, ModuleParallelismConfig

NAMES = ["language", "vision", "audio", "video"]
POW2 = st.sampled_from([1, 2, 4])


@st.composite
def layouts(draw, max_world: int):
    """A valid layout of 1-4 modules, colocated or not, and its world size (<= max_world).
    DP sizes are powers of two times one common factor, so every pair divides."""
    n = draw(st.integers(1, 4))
    names = draw(st.permutations(NAMES))[:n]
    if "language" not in names:
        names[0] = "language"
    shapes = [dict(tp=draw(POW2), cp=draw(st.sampled_from([1, 2])),
                   etp=draw(st.sampled_from([1, 2])), pp=draw(st.sampled_from([1, 2, 3, 4])))
              for _ in names]
    mps = [s["tp"] * s["cp"] * s["etp"] * s["pp"] for s in shapes]
    colocated = n > 1 and draw(st.booleans())
    if colocated:
        lcm = math.lcm(*mps)
        world_size = lcm * draw(st.sampled_from([1, 2, 4]))
        dps = [world_size // mp for mp in mps]
        # DP pairs must divide: keep the layout only if they do
        if any(max(a, b) % min(a, b) for a in dps for b in dps):
            dps = None
        offsets = [0] * n
    else:
        base = draw(st.sampled_from([1, 3]))
        dps = [base * draw(POW2) for _ in names]
        offsets = list(np.cumsum([0] + [mp * dp for mp, dp in zip(mps, dps)])[:-1])
        world_size = sum(mp * dp for mp, dp in zip(mps, dps))
    if dps is None or world_size > max_world:
        from hypothesis import reject

        reject()
    cfg = MimoParallelismConfig({
        name: ModuleParallelismConfig(s["tp"], s["pp"], s["cp"], s["etp"], dp, int(off))
        for name, s, dp, off in zip(names, shapes, dps, offsets)})
    return cfg, int(world_size)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(layouts(max_world=64))
def test_oracle_invariants(case):
    cfg, world_size = case
    exp = expected_layout(cfg, world_size)
    resolved = cfg.validate(world_size)
    covered = np.zeros(world_size, dtype=int)
    for name, mod in exp.modules.items():
        spec = resolved.module_parallelisms[name]
        inside = np.zeros(world_size, dtype=bool)
        inside[spec.rank_offset:spec.rank_offset + spec.total_ranks] = True
        covered += inside
        for kind in GRID_GROUPS:
            groups = mod.groups[kind]
            want = math.prod(mod.shape[d] for d in dims_of(kind))
            assert groups.shape == (spec.total_ranks // want, want)
            # disjoint, covering the module exactly, members ascending
            assert sorted(groups.ravel().tolist()) == list(spec.rank_range)
            assert (np.diff(groups, axis=1) > 0).all()
            # each rank of the module in exactly one group of the kind; none outside
            assert ((mod.group_index[kind] >= 0) == inside).all()
            assert all(r in groups[mod.group_index[kind][r]] for r in spec.rank_range)
        pp = mod.groups["pp"]
        assert mod.groups["pos_embd"].tolist() == pp[:, :1].tolist()
        assert (mod.first_stage[~inside]).all() and (mod.last_stage[~inside]).all()
        assert mod.first_stage[inside].sum() == len(pp) == mod.last_stage[inside].sum()
        for row, group in zip(pp, mod.groups["embd"]):
            assert group.tolist() == sorted({int(row[0]), int(row[-1])})
    # colocated: every rank in every module; otherwise in exactly one
    assert (covered == (len(exp.modules) if resolved.colocated else 1)).all()


@pytest.mark.timeout(600)
@settings(max_examples=12, deadline=None, database=None,
          suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(layouts(max_world=16))
def test_real_builder_matches_the_oracle(tmp_path_factory, case):
    cfg, world_size = case
    tmp = tmp_path_factory.mktemp("world")
    results = world(tmp, world_size, collect_memberships(cfg))
    assert_memberships_match(results, cfg, world_size)
