"""Megatron-Bridge's config API (SPEC section 4b): `finalize` in place, Bridge's names, the
ETP-with-PP warning, Bridge's own config objects taken duck-typed, and a Bridge-style script
that runs unchanged apart from its import lines, in a real gloo world."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import assert_memberships_match, collect_memberships, layout
from mimo_launch.mimo_config import (
    MimoConfigError,
    MimoParallelismConfig,
    ModuleParallelismConfig,
    as_mimo_config,
)

SCRIPT = Path(__file__).with_name("bridge_style_script.py")
BRIDGE_IMPORTS = {
    "from megatron.bridge.models.mimo.mimo_builder import":
        "from mimo_launch.mimo_builder import",
    "from megatron.bridge.models.mimo.mimo_config import":
        "from mimo_launch.mimo_config import",
}


def test_finalize_resolves_dp_in_place_and_answers_bridges_names():
    vision = ModuleParallelismConfig(tensor_model_parallel_size=2)
    language = ModuleParallelismConfig(tensor_model_parallel_size=2,
                                       pipeline_model_parallel_size=2)
    cfg = MimoParallelismConfig({"vision": vision, "language": language})
    assert cfg.finalize(8) is None
    assert (vision.data_parallel_size, language.data_parallel_size) == (4, 2)  # same objects
    assert cfg.get_parallelism("language") is language
    assert (language.total_model_parallel_size, language.total_ranks) == (4, 8)
    assert cfg.total_world_size == 8 and cfg.module_names == ["vision", "language"]
    with pytest.raises(KeyError, match="'audio'.*'vision', 'language'"):
        cfg.get_parallelism("audio")


def test_total_world_size_without_dp_and_when_empty():
    assert MimoParallelismConfig({}).total_world_size == 0
    unresolved = layout(language=dict(tp=2))
    with pytest.raises(MimoConfigError, match="data_parallel_size is not resolved"):
        _ = unresolved.total_world_size
    with pytest.raises(MimoConfigError, match="not resolved"):
        _ = unresolved.get_parallelism("language").total_ranks
    given = layout(vision=dict(tp=2, dp=2), language=dict(pp=2, dp=4, rank_offset=4))
    assert given.total_world_size == 12  # 4 + PP2 x DP4, by hand
    given.finalize(None)  # Bridge's finalize(None): the world the modules cover
    assert [m.data_parallel_size for m in given.module_parallelisms.values()] == [2, 4]


def test_a_failing_finalize_changes_nothing():
    language = ModuleParallelismConfig(tensor_model_parallel_size=2,
                                       pipeline_model_parallel_size=2)
    cfg = MimoParallelismConfig({"language": language})
    with pytest.raises(MimoConfigError, match="6 ranks .* not a multiple of model-parallel size 4"):
        cfg.finalize(6)
    assert language.data_parallel_size is None


def test_module_finalize_derives_and_checks():
    mod = ModuleParallelismConfig(context_parallel_size=2, expert_tensor_parallel_size=2)
    mod.finalize(8)
    assert (mod.data_parallel_size, mod.total_ranks) == (2, 8)
    with pytest.raises(MimoConfigError, match="no world size"):
        ModuleParallelismConfig().finalize()
    with pytest.raises(MimoConfigError, match=r"^module: tensor_model_parallel_size \(TP\) must "
                                              r"be a power of two, got 3$"):
        ModuleParallelismConfig(tensor_model_parallel_size=3).finalize(3)


def test_expert_tensor_with_pipeline_warns_once_per_module():
    cfg = layout(vision=dict(etp=2, pp=2, dp=1), audio=dict(etp=2, dp=2, rank_offset=4),
                 language=dict(etp=2, pp=2, dp=1, rank_offset=8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg.finalize(12)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages  # audio has PP1: no warning
    assert messages[0].startswith("module 'vision': expert_tensor_parallel_size (ETP) 2 > 1 "
                                  "with pipeline_model_parallel_size (PP) 2 > 1")
    assert messages[1].startswith("module 'language': ")
    assert all(w.category is UserWarning for w in caught)


@dataclass
class BridgeModule:
    """Stands for Megatron-Bridge's own ModuleParallelismConfig: same fields, another class."""

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    context_parallel_size: int = 1
    expert_tensor_parallel_size: int = 1
    data_parallel_size: int | None = None
    rank_offset: int = 0


@dataclass
class BridgeMimo:
    module_parallelisms: dict
    special_token_ids: dict = field(default_factory=dict)


def test_bridge_objects_are_read_by_field_name():
    bridge = BridgeMimo({"vision": BridgeModule(tensor_model_parallel_size=2),
                         "language": BridgeModule(pipeline_model_parallel_size=2)}, {"img": 7})
    cfg = as_mimo_config(bridge).validate(8)
    want = layout(vision=dict(tp=2, dp=4), language=dict(pp=2, dp=4))
    assert cfg == MimoParallelismConfig(want.module_parallelisms, {"img": 7})
    assert as_mimo_config(cfg) is cfg

    @dataclass
    class NoOffset:
        tensor_model_parallel_size: int = 1

    with pytest.raises(MimoConfigError, match="module 'language': NoOffset has no "
                                              "pipeline_model_parallel_size, context_parallel"):
        as_mimo_config(BridgeMimo({"language": NoOffset()}))
    with pytest.raises(MimoConfigError, match="expected a MIMO parallelism config"):
        as_mimo_config(object())


@pytest.mark.timeout(120)
def test_build_takes_bridge_objects_in_a_real_world(tmp_path, run_world):
    bridge = BridgeMimo({"vision": BridgeModule(tensor_model_parallel_size=2,
                                                data_parallel_size=2),
                         "language": BridgeModule(pipeline_model_parallel_size=2,
                                                  data_parallel_size=2, rank_offset=4)})
    results = run_world(tmp_path, 8, collect_memberships(bridge))
    assert_memberships_match(results, bridge, 8)


def _ported_script() -> str:
    """The Bridge-style script with its Bridge import lines swapped, and nothing else."""
    original = SCRIPT.read_text()
    ported = original
    for bridge, ours in BRIDGE_IMPORTS.items():
        assert original.count(bridge) == 1, bridge
        ported = ported.replace(bridge, ours)
    changed = [(a, b) for a, b in zip(original.splitlines(), ported.splitlines()) if a != b]
    assert len(changed) == 2 and all(a.startswith("from megatron.bridge.") for a, _ in changed)
    return ported


@pytest.mark.timeout(120)
def test_a_bridge_style_script_runs_unchanged_apart_from_the_imports(tmp_path, run_world):
    source = _ported_script()

    def body(rank):
        namespace = {"__name__": "bridge_style_script"}
        exec(compile(source, str(SCRIPT), "exec"), namespace)
        return namespace["main"]()

    res = run_world(tmp_path, 8, body)
    # by hand: vision TP2 DP2 on ranks 0-3 (tp [0,1] [2,3]; dp [0,2] [1,3]; pp alone);
    # language PP2 DP2 on ranks 4-7 (pp [4,5] [6,7]; dp [4,6] [5,7]; tp alone).
    # Sums are of 2**member.
    tp = {0: 3, 1: 3, 2: 12, 3: 12}
    vision_dp = {0: 5, 1: 10, 2: 5, 3: 10}
    pp = {4: 48, 5: 48, 6: 192, 7: 192}
    language_dp = {4: 80, 5: 160, 6: 80, 7: 160}
    absent = {"tp": None, "dp": None, "pp": None, "pos_embd": None, "embd": None,
              "first": True, "last": True}
    for rank, r in enumerate(res):
        assert r["total_world_size"] == 8
        assert (r["vision"]["total_ranks"], r["language"]["total_ranks"]) == (4, 4)
        assert (r["vision"]["total_model_parallel_size"],
                r["language"]["total_model_parallel_size"]) == (2, 2)
        vision = {k: v for k, v in r["vision"].items() if not k.startswith("total")}
        language = {k: v for k, v in r["language"].items() if not k.startswith("total")}
        if rank < 4:
            assert vision == {"tp": tp[rank], "dp": vision_dp[rank], "pp": 2 ** rank,
                              "pos_embd": 2 ** rank, "embd": 2 ** rank,
                              "first": True, "last": True}, rank
            assert language == absent, rank
        else:
            first = rank in (4, 6)
            assert language == {"tp": 2 ** rank, "dp": language_dp[rank], "pp": pp[rank],
                                "pos_embd": 2 ** rank if first else None, "embd": pp[rank],
                                "first": first, "last": not first}, rank
            assert vision == absent, rank
