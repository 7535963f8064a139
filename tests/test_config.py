"""One test per validation rule of SPEC section 2; each message names module(s) and numbers."""

import pytest

from conftest import layout
from mimo_launch.mimo_config import MimoConfigError, MimoParallelismConfig, ModuleParallelismConfig


def _fails(cfg, world, *fragments):
    with pytest.raises(MimoConfigError) as info:
        cfg.validate(world)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_language_module_is_required():
    _fails(layout(vision=dict(dp=4)), 4, "'language'", "'vision'")


def test_no_modules():
    _fails(MimoParallelismConfig({}), 4, "no modules")


@pytest.mark.parametrize("field,short", [("tp", "TP"), ("pp", "PP"), ("cp", "CP"),
                                         ("etp", "ETP"), ("dp", "DP")])
@pytest.mark.parametrize("value", [0, -2])
def test_sizes_must_be_at_least_one(field, short, value):
    _fails(layout(language={field: value, **({} if field == "dp" else {"dp": 1})}), 1,
           "'language'", f"({short})", ">= 1", str(value))


@pytest.mark.parametrize("value", ["abc", 2.5, True, None])
def test_sizes_must_be_integers(value):
    _fails(layout(language=dict(tp=value, dp=1)), 1, "'language'", "(TP)", "integer",
           repr(value))


def test_rank_offset_not_negative():
    _fails(layout(language=dict(dp=1, rank_offset=-1)), 1, "'language'", "rank_offset", "-1")


@pytest.mark.parametrize("tp", [3, 6, 12])
def test_tp_power_of_two(tp):
    _fails(layout(language=dict(tp=tp, dp=1)), tp, "'language'", "power of two", str(tp))


def test_partial_overlap():
    cfg = layout(vision=dict(tp=2, dp=3), language=dict(tp=2, dp=3, rank_offset=4))
    _fails(cfg, 10, "'vision' [0, 6)", "'language' [4, 10)", "[4, 6)")


def test_colocated_ranges_must_be_identical_not_partial():
    cfg = layout(vision=dict(tp=2, dp=2), language=dict(tp=2, dp=4))
    _fails(cfg, 8, "'vision' [0, 4)", "'language' [0, 8)", "overlap")


def test_gap_between_modules():
    cfg = layout(vision=dict(tp=2, dp=1), language=dict(tp=2, dp=1, rank_offset=4))
    _fails(cfg, 6, "[2, 4)", "no module", "'language'")


def test_gap_at_the_end():
    cfg = layout(vision=dict(tp=2, dp=1), language=dict(tp=2, dp=1, rank_offset=2))
    _fails(cfg, 8, "[4, 8)", "no module", "8")


def test_range_past_the_world():
    cfg = layout(vision=dict(tp=2, dp=2), language=dict(tp=2, pp=2, dp=1, rank_offset=4))
    _fails(cfg, 6, "'language' [4, 8)", "world size is 6")


def test_dp_derived_must_divide():
    _fails(layout(language=dict(tp=2, pp=2)), 6, "'language'", "6", "model-parallel size 4")


def test_dp_required_when_not_colocated():
    cfg = layout(vision=dict(tp=2, dp=2), language=dict(tp=2, rank_offset=4))
    _fails(cfg, 8, "'language'", "must be given", "rank_offset=4")


def test_dp_pairs_divide_each_other():
    cfg = layout(vision=dict(dp=2), language=dict(dp=3, rank_offset=2))
    _fails(cfg, 5, "'vision' (DP 2)", "'language' (DP 3)", "divide")


def test_world_size_must_be_positive():
    _fails(layout(language=dict(dp=1)), 0, "world size", "0")


def test_derivation_single_and_colocated():
    single = layout(language=dict(tp=2, pp=2)).validate(8)
    assert single.module_parallelisms["language"].data_parallel_size == 2
    colo = layout(vision=dict(tp=2), language=dict(tp=2, pp=2)).validate(8)
    assert [m.data_parallel_size for m in colo.module_parallelisms.values()] == [4, 2]
    assert colo.colocated


def test_module_order_is_kept_and_sizes_add_up():
    cfg = layout(vision=dict(tp=2, cp=2, etp=1, dp=1), language=dict(pp=2, dp=2, rank_offset=4))
    resolved = cfg.validate(8)
    assert resolved.module_names == ["vision", "language"]
    assert resolved.module_parallelisms["vision"].total_model_parallel_size == 4
    assert resolved.module_parallelisms["language"].rank_range == range(4, 8)
    assert ModuleParallelismConfig().data_parallel_size is None
