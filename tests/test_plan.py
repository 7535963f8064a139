"""`mimo-launch mode=plan`: every preset and a 16,384-rank layout, planned without starting a
rank; bounded output; a rank's groups; bad plan input."""

import subprocess
import sys
import time

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import REPO, layout, run_cli
from mimo_launch.layout.plan import MAX_PLAN_RANKS, format_members, format_plan, make_plan
from mimo_launch.layout.rank_text import format_rank_set
from mimo_launch.settings.app_config import layout_from

PRESETS = sorted(p.stem for p in (REPO / "conf" / "mimo").glob("*.yaml"))


def _preset(name):
    cfg = layout_from(OmegaConf.load(REPO / "conf" / "mimo" / f"{name}.yaml"))
    world = OmegaConf.load(REPO / "conf" / "mimo" / f"{name}.yaml").world_size
    return cfg, world


@pytest.mark.timeout(60)
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_plans_without_starting_anything(preset, tmp_path):
    out = tmp_path / "plan"
    proc = run_cli("mode=plan", f"mimo={preset}", "plan.rank=0", f"hydra.run.dir={out}",
                   cwd=tmp_path, timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cfg, world = _preset(preset)
    assert f"world size {world}" in proc.stdout and "nothing started" in proc.stdout
    for name in cfg.module_parallelisms:
        assert f"module {name}: ranks [" in proc.stdout
    assert "rank 0: node 0, GPU 0" in proc.stdout
    assert (out / "plan.png").stat().st_size > 0 and (out / "plan.svg").stat().st_size > 0
    assert not (out / "logs").exists() and not (out / "report.json").exists()


@pytest.mark.timeout(60)
def test_a_signal_while_the_plan_is_drawn_says_the_picture_is_not_written(tmp_path):
    import signal

    from conftest import MIMO_LAUNCH

    out = tmp_path / "plan"
    proc = subprocess.Popen([str(MIMO_LAUNCH), "mode=plan", "mimo=large_16k",
                             f"hydra.run.dir={out}"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the plan is printed before the picture is drawn
        if "nothing started" in line:
            break
    # the picture takes ~5 s here: 1 s on, the process is past its print (a signal landing
    # as print returns, before the drawing starts, is not this test's case)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stdout + stderr
    assert "plan.png not written (interrupted while drawing); the plan above is complete" in \
        stderr and "mimo-launch: interrupted (SIGTERM)" in stderr
    assert not (out / "plan.png").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cluster,nodes", [
    (["cluster=local_slurm"], "2 node(s) x 4 tasks"),  # CPU nodes: counted by tasks_per_node
    (["cluster=local_slurm", "cluster.gpus_per_node=4"], "2 node(s) x 4 GPUs"),
    ([], "1 node(s) x 8 GPUs"),  # a local run is planned for one GPU node
])
def test_the_plan_says_what_holds_each_rank_on_a_node(cluster, nodes, tmp_path):
    proc = run_cli("mode=plan", "plan.picture=false", "plan.rank=5", *cluster, cwd=tmp_path,
                   timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"world size 8, {nodes}," in proc.stdout
    slot = "GPU" if nodes.endswith("GPUs") else "task"
    assert f"rank 5: node {5 // int(nodes.split()[-2])}, {slot} " in proc.stdout


@pytest.mark.timeout(60)
def test_plan_text_matches_the_oracle_for_vlm_16():
    cfg, world = _preset("vlm_16")
    plan = make_plan(cfg, world, ranks_per_node=8)
    text = format_plan(plan, [9])
    # language TP1 CP2 PP4 on 8-15: first stage 8-9, last 14-15, two nodes of 8
    assert "first-stage ranks: 8-9" in text and "last-stage ranks:  14-15" in text
    assert "2 node(s) x 8 GPUs" in text
    lang = plan.modules["language"]
    assert lang.groups["pp"] == (2, 4) and lang.groups["embd"] == (2, 2)
    assert plan.coords("language", 9) == {"tp": 0, "cp": 1, "etp": 0, "pp": 0, "dp": 0}
    assert "pp              [9, 11, 13, 15]" in text and "embd            [9, 15]" in text
    assert "vision: not a member" in text


@pytest.mark.timeout(60)
def test_a_16k_layout_plans_in_well_under_a_second_with_bounded_output():
    cfg, world = _preset("large_16k")
    assert world == 16384
    start = time.perf_counter()
    plan = make_plan(cfg, world, ranks_per_node=8)
    text = format_plan(plan, [0, 12345, 16383])
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, elapsed
    lines = text.splitlines()
    assert len(lines) < 80 and max(len(ln) for ln in lines) < 200, text
    assert "2048 node(s)" in text and "nodes 1024-2047 (1024)" in text
    assert "(1024 ranks in 128 runs of 8, every 64)" in text  # language first stages
    assert "pp 1024x8" in text and "dp 64x128" in text
    # rank 12345: language TP8 PP8 from 8192; local 4153 -> tp 1, pp 7, dp 64
    assert "language: tp=1 cp=0 etp=0 pp=7 dp=64  (last stage)" in text
    assert "dp              [8249, 8313, ..., 16377] (128 ranks, every 64)" in text


@pytest.mark.timeout(60)
def test_a_16k_plan_through_the_command_is_fast(tmp_path):
    out = tmp_path / "plan"
    start = time.monotonic()
    proc = run_cli("mode=plan", "mimo=large_16k", "plan.rank=12345", f"hydra.run.dir={out}",
                   cwd=tmp_path, timeout=50)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) < 80
    assert elapsed < 15, elapsed  # interpreter + Hydra + the drawing, on a loaded 2-core box
    assert (out / "plan.png").exists()


@pytest.mark.timeout(60)
def test_gpus_per_node_changes_the_node_span_and_flags_split_tp_groups():
    cfg = layout(vision=dict(tp=8, dp=1), language=dict(tp=8, pp=2, dp=1, rank_offset=8))
    plan = make_plan(cfg, 24, ranks_per_node=4)
    text = format_plan(plan)
    assert "6 node(s) x 4 GPUs" in text and "nodes 2-5 (4)" in text
    assert "warning: 2 of 2 TP groups span more than one node (4 GPUs per node)" in text
    assert "warning" not in format_plan(make_plan(cfg, 24, ranks_per_node=8))


def test_abbreviations():
    assert format_rank_set([4, 6]) == "4, 6"
    assert format_rank_set(np.arange(0, 64)) == "0-63"
    text = format_rank_set(np.concatenate([np.arange(s, s + 2) for s in range(0, 800, 10)]))
    assert text.startswith("0-1, 10-11") and "(160 ranks in 80 runs of 2, every 10)" in text
    assert format_members([1, 3]) == "[1, 3]"
    assert format_members(range(0, 200, 2)) == "[0, 2, ..., 198] (100 ranks, every 2)"
    assert format_members([0, 1, 2, 3, 8, 9, 10, 11, 16]) == "[0, 1, 2, 3, ..., 11, 16] (9 ranks)"


@pytest.mark.timeout(60)
def test_plan_groups_agree_with_the_oracle():
    """vlm_16 by hand: vision TP2 ETP2 DP2 on 0-7 (rank = tp + 2*ep + 4*dp), language TP1 CP2
    PP4 on 8-15 (rank = 8 + cp + 2*pp); (number of groups, size) per kind."""
    cfg = layout(vision=dict(tp=2, etp=2, dp=2), language=dict(cp=2, pp=4, dp=1, rank_offset=8))
    plan = make_plan(cfg, 16)
    want = {
        "vision": {"tp": (4, 2), "cp": (8, 1), "ep": (4, 2), "pp": (8, 1), "dp": (4, 2),
                   "dp+cp": (4, 2), "tp+pp": (4, 2), "tp+ep+pp": (2, 4), "dp+ep": (2, 4),
                   "tp+cp+ep+pp+dp": (1, 8), "pos_embd": (8, 1), "embd": (8, 1)},
        "language": {"tp": (8, 1), "cp": (4, 2), "ep": (8, 1), "pp": (2, 4), "dp": (8, 1),
                     "dp+cp": (4, 2), "tp+pp": (2, 4), "tp+ep+pp": (2, 4), "dp+ep": (8, 1),
                     "tp+cp+ep+pp+dp": (1, 8), "pos_embd": (2, 1), "embd": (2, 2)},
    }
    assert {name: dict(mod.groups) for name, mod in plan.modules.items()} == want
    assert plan.modules["vision"].first_stage.tolist() == list(range(8))
    assert plan.modules["vision"].last_stage.tolist() == list(range(8))
    assert plan.modules["language"].first_stage.tolist() == [8, 9]
    assert plan.modules["language"].last_stage.tolist() == [14, 15]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("override,fragment", [
    ("plan.rank=8", "plan.rank=8 is not a rank of the world [0, 8)"),
    ("plan.rank=abc", "plan.rank='abc'"),
    ('plan.rank="3"', "plan.rank='3' is not an integer (a rank of the world [0, 8)"),
    ("plan.rank=true", "plan.rank=true is not an integer"),
    ("plan.rank=[]", "plan.rank=[] names no rank"),
    ("plan.gpus_per_node=0", "plan.gpus_per_node must be a positive integer, got 0"),
    ("+plan.colour=red", "unknown key 'plan.colour' (known: rank, gpus_per_node, picture)"),
])
def test_bad_plan_input_exits_2_with_one_line_and_no_run_dir(override, fragment, tmp_path):
    out = tmp_path / "plan"
    proc = run_cli("mode=plan", override, f"hydra.run.dir={out}", cwd=tmp_path, timeout=50)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert proc.stdout == "" and not out.exists()


_MEMORY_CAP = """
import resource, sys
cap = 1 << 30  # 1 GiB of address space: the oracle for 10^9 ranks would need tens of GiB
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
from mimo_launch.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.timeout(60)
def test_a_billion_rank_plan_is_refused_in_one_line_under_a_memory_cap(tmp_path):
    """Its cost does not grow with W: no GiB arrays, no MemoryError, one line, exit 2."""
    out = tmp_path / "plan"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _MEMORY_CAP, "mode=plan", "mimo=single_8",
                           "mimo.modules.language.dp=null", "mimo.world_size=1000000000",
                           f"hydra.run.dir={out}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=50)
    assert time.monotonic() - start < 20
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == ("mimo-launch: error: mode=plan lays out at most 1,048,576 ranks "
                           "(every group is held in memory); the world size 1,000,000,000 is "
                           "larger\n")
    assert proc.stdout == "" and not out.exists()


def test_the_largest_plan_is_laid_out_and_one_rank_more_is_refused():
    plan = make_plan(layout(language=dict(tp=2, pp=2)), MAX_PLAN_RANKS)
    assert plan.modules["language"].shape["dp"] == MAX_PLAN_RANKS // 4
    with pytest.raises(ValueError, match="at most 1,048,576 ranks"):
        make_plan(layout(language=dict(tp=2, pp=2)), MAX_PLAN_RANKS + 4)
