"""The health stage (check=health, SPEC section 6): real gloo runs of `mimo-launch`, the
slow-rank rehearsal, bad input, and the numbers' conventions on hand-written timings."""

from __future__ import annotations

import json

import pytest

from conftest import layout, run_cli
from mimo_launch.checks.health import boundary_links, measured_kinds, pipeline_links, plan_steps
from mimo_launch.checks.health_report import analyse, bus_factor, join_groups
from mimo_launch.settings.health_config import MIB, check_memory, health_settings

# ---- the numbers, by nccl-tests' conventions, on timings written by hand ---------------------


def _rec(kind, op, ranks, times, size=1_000_000, module="m"):
    return {"kind": kind, "op": op, "size": size, "module": module, "ranks": ranks,
            "times_s": times}


def test_busbw_follows_nccl_tests_conventions():
    assert bus_factor("all_reduce", 4) == 1.5
    assert bus_factor("all_gather", 4) == 0.75
    assert bus_factor("reduce_scatter", 2) == 0.5
    assert bus_factor("send_recv", 2) == 1.0
    hosts = ["a"] * 8
    groups = join_groups([_rec("dp", "all_reduce", [0, 1, 2, 3], [0.001, 0.001, 0.001]),
                          _rec("dp", "all_gather", [4, 5, 6, 7], [0.002, 0.002, 0.002]),
                          _rec("pp", "send_recv", [0, 4], [0.0005])], hosts)
    # 1e6 bytes in 1 ms: algbw 1 GB/s; all-reduce over 4: busbw 1.5 GB/s
    assert [(g["algbw"], g["busbw"]) for g in groups] == [(1.0, 1.5), (0.5, 0.375), (2.0, 2.0)]


def test_a_group_time_is_the_slowest_members_mean_iteration():
    records = [_rec("tp", "all_reduce", [0, 1], [0.001, 0.004, 0.001]),
               _rec("tp", "all_reduce", [0, 1], [0.002, 0.003, 0.004])]
    (group,) = join_groups(records, ["a", "a"])
    assert group["time_s"] == pytest.approx(0.003)  # means 0.002 and 0.003


def test_a_slow_rank_is_named_and_its_peers_are_not():
    # four dp groups, rank 5's twice as slow as the others; pp links: 4->5 slow, 6->7 not
    records = [_rec("dp", "all_reduce", r, [t]) for r, t in
               (([0, 2], 0.001), ([1, 3], 0.001), ([4, 6], 0.001), ([5, 7], 0.004))]
    records += [_rec("pp", "send_recv", [4, 5], [0.004]), _rec("pp", "send_recv", [6, 7], [0.001])]
    health = analyse(records, ["n0"] * 8, 0.7)
    assert health["suspects"]["ranks"] == [5]
    assert health["suspects"]["nodes"] == []  # the node's other groups are fine
    assert len(health["suspects"]["groups"]) == 2 and health["problem"]
    assert health["headline"].startswith("health PROBLEM: rank(s) 5 slow: 2 group(s)")


def test_intra_and_inter_node_groups_are_compared_apart_and_a_slow_node_is_named():
    hosts = ["n0", "n0", "n1", "n1", "n2", "n2", "n3", "n3"]
    # intra-node groups are 10x faster by design: never suspects for that
    records = [_rec("tp", "all_reduce", [2 * i, 2 * i + 1], [0.0001]) for i in range(4)]
    # inter-node: every group that touches n3 (ranks 6, 7) is slow
    records += [_rec("dp", "all_reduce", r, [t]) for r, t in
                (([0, 2], 0.001), ([1, 3], 0.001), ([4, 6], 0.003), ([5, 7], 0.003),
                 ([0, 4], 0.001), ([3, 5], 0.001))]
    health = analyse(records, hosts, 0.7)
    assert health["suspects"]["nodes"] == ["n3"]
    assert health["suspects"]["ranks"] == [6, 7]
    rows = {(r["kind"], r["where"]): r for r in health["rows"]}
    assert rows[("tp", "intra-node")]["suspects"] == 0
    assert rows[("dp", "inter-node")]["groups"] == 6 and rows[("dp", "inter-node")]["suspects"] == 2


def test_one_slow_group_whose_members_are_fast_elsewhere_is_reported_not_blamed():
    # dp [0, 2] is slow; ranks 0 and 2 are each in two other groups, with other peers, fast
    records = [_rec("dp", "all_reduce", r, [t]) for r, t in
               (([0, 2], 0.004), ([1, 3], 0.001), ([4, 6], 0.001), ([5, 7], 0.001))]
    records += [_rec("tp", "all_reduce", r, [0.001]) for r in ([0, 1], [2, 3], [4, 5], [6, 7])]
    records += [_rec("cp", "all_reduce", r, [0.001]) for r in ([0, 3], [1, 2], [4, 7], [5, 6])]
    health = analyse(records, ["n0"] * 8, 0.7)
    assert health["suspects"]["ranks"] == [] and not health["problem"]
    assert health["headline"] == (
        "health OK, no rank or node to blame, but 1 group(s) below 0.7x of their kind's median "
        "busbw; worst m dp all_reduce ranks 0, 2: 0.25 GB/s (0.25x median)")


def test_groups_of_different_sizes_are_compared_apart():
    # colocated modules: dp groups of 4 ranks are slower than dp groups of 2, by design
    records = [_rec("dp", "all_reduce", r, [0.004]) for r in ([0, 2, 4, 6], [1, 3, 5, 7])]
    records += [_rec("dp", "all_reduce", r, [0.001]) for r in ([0, 4], [1, 5], [2, 6], [3, 7])]
    health = analyse(records, ["a"] * 8, 0.7)
    assert [(r["n"], r["groups"], r["suspects"]) for r in health["rows"]] == [(2, 4, 0), (4, 2, 0)]
    assert not health["suspects"]["groups"]


def test_only_the_largest_size_is_judged_and_a_lone_group_never_is():
    records = [_rec("dp", "all_reduce", [0, 1], [0.010], size=1000),
               _rec("dp", "all_reduce", [2, 3], [0.001], size=1000),
               _rec("tp", "all_reduce", [0, 2], [1.0])]
    health = analyse(records + [_rec("dp", "all_reduce", [0, 1], [0.001]),
                                _rec("dp", "all_reduce", [2, 3], [0.001])], ["a"] * 4, 0.7)
    assert not health["problem"] and health["suspects"]["groups"] == []
    assert health["headline"].startswith("health OK")


def test_pipeline_and_boundary_links_are_each_judged_against_their_own_kinds_median():
    # boundary links are 2.5x slower than pipeline links by design (another module's ranks):
    # against a median of both kinds together they would all be suspects
    records = [_rec("pp", "send_recv", r, [0.001]) for r in ([4, 5], [6, 7])]
    records += [_rec("boundary", "send_recv", r, [0.0025]) for r in ([0, 4], [2, 6])]
    health = analyse(records, ["a"] * 8, 0.7)
    assert health["suspects"]["groups"] == [] and not health["problem"]
    # a slow pipeline link: its ratio is to the pp row's median, the one the table shows
    records += [_rec("pp", "send_recv", [8, 9], [0.004])]
    health = analyse(records, ["a"] * 10, 0.7)
    pp_row = next(r for r in health["rows"] if r["kind"] == "pp")
    assert pp_row["busbw_median"] == pytest.approx(1.0)  # links at 1, 1 and 0.25 GB/s
    (slow,) = [g for g in health["groups"] if g["suspect"]]
    assert slow["ranks"] == [8, 9] and slow["ratio"] == pytest.approx(0.25)
    assert health["suspects"]["groups"] == ["m pp send_recv ranks 8-9: 0.25 GB/s (0.25x median)"]


# ---- what is measured: kinds, pipelines, module boundaries -----------------------------------


def test_kinds_of_size_one_or_repeated_membership_are_not_measured_twice():
    cfg = layout(language=dict(tp=2, cp=1, pp=1, dp=4)).validate(8)
    assert measured_kinds(cfg.module_parallelisms["language"]) == ["tp", "dp"]  # dp+cp = dp
    cfg = layout(language=dict(tp=1, cp=2, pp=1, dp=2)).validate(4)
    assert measured_kinds(cfg.module_parallelisms["language"]) == ["cp", "dp", "dp+cp"]


def test_pipeline_links_join_adjacent_stages_stage_by_stage():
    cfg = layout(vision=dict(tp=1, pp=1, dp=2),
                 language=dict(tp=2, pp=3, dp=1, rank_offset=2)).validate(8)
    assert pipeline_links(cfg) == [("language", 2, 4), ("language", 3, 5),
                                   ("language", 4, 6), ("language", 5, 7)]


@pytest.mark.parametrize("enc,lang,expected", [
    # fan-in: 4 encoder replicas (last stage, TP rank 0) onto 2 language replicas
    (dict(tp=1, pp=2, dp=4), dict(tp=1, pp=1, dp=2, rank_offset=8),
     [(1, 8), (3, 8), (5, 9), (7, 9)]),
    # fan-out: 1 encoder replica (TP2) to 4 language first-stage ranks (PP2)
    (dict(tp=2, pp=1, dp=1), dict(tp=1, pp=2, dp=4, rank_offset=2),
     [(0, 2), (0, 4), (0, 6), (0, 8)]),
])
def test_module_boundary_links_fan_in_or_out_by_dp(enc, lang, expected):
    world = 10
    cfg = layout(vision=enc, language=lang).validate(world)
    assert boundary_links(cfg) == [("vision->language", s, d) for s, d in expected]


def test_colocated_modules_have_no_link_from_a_rank_to_itself():
    cfg = layout(vision=dict(tp=1, pp=1, dp=4), language=dict(tp=1, pp=1, dp=4)).validate(4)
    assert boundary_links(cfg) == []
    assert [s.kind for s in plan_steps(cfg, [64])] == ["dp", "dp", "dp"]


# ---- real runs --------------------------------------------------------------------------------


def _health(run_dir) -> dict:
    return json.loads((run_dir / "report.json").read_text())["health"]


@pytest.mark.timeout(120)
def test_check_health_on_the_default_layout_prints_and_writes_every_kind(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("check=health", "health.sizes=[64KiB,256KiB]", "health.fail=false",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    health = _health(run_dir)
    rows = {(r["kind"], r["op"], r["size"]): r["groups"] for r in health["rows"]}
    expected = {("tp", "all_reduce"): 2, ("dp", "all_reduce"): 4, ("dp", "all_gather"): 4,
                ("dp", "reduce_scatter"): 4, ("pp", "send_recv"): 2,
                ("boundary", "send_recv"): 2}
    assert rows == {(k, op, size): n for (k, op), n in expected.items()
                    for size in (65536, 262144)}
    links = sorted(g["ranks"] for g in health["groups"]
                   if g["kind"] in ("pp", "boundary") and g["size"] == 65536)
    assert links == [[0, 4], [2, 6], [4, 5], [6, 7]]
    assert all(r["where"] == "intra-node" and r["busbw_median"] > 0 for r in health["rows"])
    assert "health stage:" in proc.stdout and "reduce_scatter  256KiB" in proc.stdout
    md = (run_dir / "report.md").read_text()
    assert "## Communication health" in md and "| dp | all_gather | 64KiB |" in md
    assert (run_dir / "health.png").stat().st_size > 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fail,code", [("true", 4), ("false", 0)])
def test_a_slow_rank_is_named_and_exits_4_unless_report_only(fail, code, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("check=health", "fault.slow_rank=5", "fault.slow_factor=4",
                   f"health.fail={fail}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == code, proc.stdout + proc.stderr
    health = _health(run_dir)
    suspects = health["suspects"]
    # rank 5 is named and is the worst; on a CPU shared by many processes a neighbour whose
    # every group ran with rank 5's may be named beside it, never instead of it
    scores = suspects["rank_scores"]
    assert 5 in suspects["ranks"] and min(scores, key=scores.get) == "5", suspects
    assert health["headline"].startswith("health PROBLEM: rank(s) ")
    assert health["headline"] in proc.stdout


@pytest.mark.timeout(120)
def test_a_rank_that_dies_in_the_health_stage_is_named_and_verification_kept(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("check=health", "fault.kill_rank=3", "fault.phase=health", "timeout_s=5",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    report = json.loads((run_dir / "report.json").read_text())
    assert report["failed_phase"] == "health" and report["failed_ranks"] == [3], report
    assert report["mismatches"] == [] and "verify" in report["timings"]
    assert report["health"] is None


@pytest.mark.timeout(120)
def test_a_step_that_outlasts_timeout_s_names_the_ranks_still_in_it(tmp_path):
    """Rank 1 (vision, tp group [0, 1]) makes the first step, vision's tp all-reduce, last
    several timeout_s (each iteration well under it); the ranks done with it time out at the
    next step's barrier. Blamed: ranks 0-1, still in the step, not the ranks that waited."""
    run_dir = tmp_path / "run"
    proc = run_cli("check=health", "health.sizes=[1MiB]", "health.iters=50",
                   "health.budget_s=600", "fault.slow_rank=1", "fault.slow_factor=100",
                   "timeout_s=3", f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=100)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    report = json.loads((run_dir / "report.json").read_text())
    assert report["failed_phase"] == "health" and report["failed_ranks"] == [0, 1], report
    assert "rank(s) 0-1 did not finish step 1/" in report["failure"], report["failure"]
    assert "(tp all_reduce 1MiB) while the others waited at the barrier after it" \
        in report["failure"], report["failure"]
    assert "rank(s) 0-1" in report["failure"].split(";")[0]  # the head names them, as waited for
    assert "timed out waiting for rank(s) 0-1" in report["failure"], report["failure"]
    assert report["mismatches"] == [] and "verify" in report["timings"]


def test_the_health_buffers_must_fit_the_memory_of_the_machines_ranks():
    settings = health_settings("health", {"sizes": ["1MiB", "64KiB"]})
    check_memory(settings, "gloo", 8, available=3 * 8 * MIB)  # 3 buffers x 1 MiB x 8 ranks
    with pytest.raises(ValueError, match=r"needs about 0.0234 GiB .*\(3 buffers x 8 ranks"):
        check_memory(settings, "gloo", 8, available=3 * 8 * MIB - 1)
    check_memory(settings, "nccl", 8, available=0)  # GPU memory is each rank's own GPU's
    check_memory(None, "gloo", 8, available=0)  # check=verify allocates nothing


@pytest.mark.parametrize("args,message", [
    (["check=helth"], "check must be one of verify, health, got 'helth'"),
    (["check=health", "health.threshold=2"], "health.threshold must be a number in (0, 1], got 2"),
    (["check=health", "health.sizes=[1MB]"], "health.sizes: '1MB' is not a size"),
    (["check=health", "health.iters=0"], "health.iters must be an integer >= 1, got 0"),
    (["fault.slow_rank=5"], "fault.slow_rank acts in the health stage only: add check=health"),
    (["check=health", "fault.slow_rank=8"], "fault.slow_rank=8 is not a rank of the world [0, 8)"),
    (["check=health", "fault.slow_rank=5", "fault.slow_factor=0.5"],
     "fault.slow_factor must be a number >= 1, got 0.5"),
    (["fault.kill_rank=3", "fault.phase=health"],
     "fault.phase=health needs check=health (no health phase otherwise)"),
    (["check=health", "+health.colour=red"], "unknown key 'health.colour' (known: sizes"),
    (["check=health", "health.sizes=[5]"], "health.sizes: 5 is below the floor of 64KiB"),
    (["check=health", "health.sizes=[65538]"],
     "health.sizes: 65538 is not a multiple of 4 bytes (whole float32 elements)"),
    (["check=health", "health.sizes=[1MiB,64KiB,1MiB]"],
     "health.sizes: 1048576 bytes given more than once"),
    (["check=health", "health.sizes=[100GiB]"],
     "health.sizes: 100 GiB per message needs about 2.4e+03 GiB of host memory (3 buffers x 8 "
     "ranks on this machine)"),
    (["health.sizes=[1MiB]"],
     "health.sizes=[1MiB] acts in the health stage only: add check=health"),
    (["++health.fail=false"],
     "++health.fail=false acts in the health stage only: add check=health"),
])
def test_bad_health_input_is_one_line_and_exit_2(args, message, tmp_path):
    proc = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mimo-launch: error: {message}"), lines
    assert not (tmp_path / "run").exists()
