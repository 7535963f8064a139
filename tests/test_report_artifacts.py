"""What every run leaves beside report.json: report.md and the rank map (PNG + SVG), read back
with Pillow; and the console's progress lines and final table."""

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from conftest import REPO, layout, run_cli
from mimo_launch.layout.plan import make_plan
from mimo_launch.reports.console import PhaseProgress, print_final
from mimo_launch.reports.rankmap import (
    FAIL_COLOUR,
    MAX_DRAWN_NODES,
    MODULE_COLOURS,
    draw_rankmap,
    figure_size,
)
from mimo_launch.reports.report import Report, verdict_line
from mimo_launch.settings.app_config import layout_from


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _rgb(colour: str) -> tuple[int, ...]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def _mask(png, colour: str) -> np.ndarray:
    img = np.asarray(Image.open(png).convert("RGB"))
    return np.all(img == _rgb(colour), axis=-1)


def count_cells(png, colour: str) -> int:
    """Rectangles filled with exactly `colour`: bands of rows holding it, then runs of columns
    within each band (cells are separated by white gaps; text inside a cell does not split it)."""
    mask = _mask(png, colour)
    return sum(len(_runs(mask[r0:r1].any(axis=0))) for r0, r1 in _runs(mask.any(axis=1)))


def _plan_of(preset: str, per_node: int = 8):
    path = REPO / "conf" / "mimo" / f"{preset}.yaml"
    return make_plan(layout_from(OmegaConf.load(path)), OmegaConf.load(path).world_size, per_node)


def test_count_cells_can_fail(tmp_path):
    """The counter sees what is drawn: a 2-module picture has 4+1 cells of each colour, and
    none of red."""
    plan = make_plan(layout(vision=dict(tp=2, dp=2), language=dict(pp=2, dp=2, rank_offset=4)), 8)
    png, _ = draw_rankmap(plan, tmp_path / "map")
    assert count_cells(png, MODULE_COLOURS[0]) == 5
    assert count_cells(png, MODULE_COLOURS[1]) == 5
    assert count_cells(png, FAIL_COLOUR) == 0
    assert count_cells(png, MODULE_COLOURS[2]) == 0


@pytest.mark.timeout(240)
def test_a_passing_run_writes_report_md_and_the_rank_map(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for fragment in ("init (rendezvous): all 8 ranks arrived", "verification: all 8 ranks",
                     "checks passed", f"report.md: {out / 'report.md'}",
                     f"rank map: {out / 'rankmap.png'}"):
        assert fragment in proc.stdout, proc.stdout
    assert "\x1b[" not in proc.stdout  # plain text off a terminal
    md = (out / "report.md").read_text()
    assert md.startswith("# mimo-launch verification PASSED") and "![rank map](rankmap.png)" in md
    assert "| vision | [0, 4) | 2 | 1 | 1 | 1 | 2 |" in md and "## Mismatches (0)" in md
    png, svg = out / "rankmap.png", out / "rankmap.svg"
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    # by hand (rankmap.geometry, 100 dpi): 8 cells of 1.1 in + 1.25 + 0.25 margins = 10.3 in;
    # title 0.45 + legend 3 rows x 0.24 + 0.3 + one node row 0.62 + bottom 0.25 = 2.34 in
    assert Image.open(png).size == (1030, 234)
    # 4 vision + 4 language ranks, each colour once more in the legend; nothing red
    assert count_cells(png, MODULE_COLOURS[0]) == 5
    assert count_cells(png, MODULE_COLOURS[1]) == 5
    assert count_cells(png, FAIL_COLOUR) == 0


@pytest.mark.timeout(240)
def test_a_run_with_mismatches_lists_them_all_in_report_md(mismatch_run):
    proc, out = mismatch_run
    assert proc.returncode == 1, proc.stderr
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    rows = [ln for ln in md.splitlines() if re.match(r"\| \d+ \| (vision|language) \|", ln)]
    # all of them, not the console's 20. By hand, colocated_8 built, vlm_8 expected: vision
    # (TP2 DP4 on 0-7, expected TP2 DP2 on 0-3): 12 kinds on each of ranks 4-7 (48), dp, dp+cp,
    # dp+ep and the whole module on 0-3 (16); language (TP2 PP2 DP2 on 0-7, expected PP2 DP2 on
    # 4-7): ranks 0-3 have 10 grid kinds, pos_embd on 0-1, embd and a stage flag on each (50);
    # on 4-7 every grid kind but cp and ep (32), pos_embd of 5 and 6, embd (4), stage of 5, 6.
    assert len(rows) == len(report["mismatches"]) == 48 + 16 + 50 + 32 + 2 + 4 + 2
    first = report["mismatches"][0]
    assert (f"| {first['rank']} | {first['module']} | {first['group']} | {first['check']} | "
            f"{first['expected']} | {first['actual']} |") in md
    assert f"## Mismatches ({len(report['mismatches'])})" in md and "**FAILED** (exit code 1)" in md
    bad = {m["rank"] for m in report["mismatches"]}
    assert count_cells(out / "rankmap.png", FAIL_COLOUR) == len(bad) + 1  # + legend


@pytest.mark.timeout(240)
def test_a_failed_runs_picture_marks_the_failing_rank(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("fault.kill_rank=3", "fault.phase=grids", "timeout_s=3",
                   f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "checks not run" in proc.stdout
    md = (out / "report.md").read_text()
    assert "## Failure" in md and "rank(s): 3." in md and "killed by signal SIGKILL" in md
    png = out / "rankmap.png"
    assert Image.open(png).size == (1030, 258)  # as passing, one legend row (0.24 in) more
    assert count_cells(png, FAIL_COLOUR) == 2  # rank 3's cell and the legend's swatch
    # the red cell is the 4th of the 8 cells of the node's row (GPU 3)
    red = _mask(png, FAIL_COLOUR)
    cells = _mask(png, MODULE_COLOURS[0]) | _mask(png, MODULE_COLOURS[1]) | red
    grid_rows = _runs(cells.any(axis=1))[-1]
    columns = _runs(cells[grid_rows[0]:grid_rows[1]].any(axis=0))
    red_cols = _runs(red[grid_rows[0]:grid_rows[1]].any(axis=0))
    assert len(columns) == 8 and red_cols == [columns[3]]


@pytest.mark.timeout(120)
def test_a_16k_rank_map_is_aggregated_by_node(tmp_path):
    plan = _plan_of("large_16k")
    start = time.perf_counter()
    png, svg = draw_rankmap(plan, tmp_path / "big", failed=[12345])
    elapsed = time.perf_counter() - start
    assert elapsed < 30, elapsed
    width, height = Image.open(png).size
    # by hand: 2048 nodes, 32 per row of 0.42 in: 1.25 + 13.44 + 0.25 = 14.94 in; 64 rows of
    # 0.3 in + title 0.45 + legend 4 x 0.24 + 0.3 + bottom 0.25 = 21.16 in
    assert (width, height) == (1494, 2116)
    # 2048 nodes: 1024 per module, one node red (rank 12345 is on node 1543)
    assert count_cells(png, MODULE_COLOURS[0]) == 1024 + 1
    assert count_cells(png, MODULE_COLOURS[1]) == 1024 + 1
    assert count_cells(png, FAIL_COLOUR) == 1 + 1
    assert svg.stat().st_size < 5_000_000


def test_a_colocated_picture_has_one_band_per_module_in_every_cell(tmp_path):
    png, _ = draw_rankmap(_plan_of("colocated_8"), tmp_path / "co", failed={5: "mismatch"})
    # 8 cells, each with a vision and a language band (rank 5's as a strip under the red)
    assert count_cells(png, MODULE_COLOURS[0]) == 8 + 1
    assert count_cells(png, MODULE_COLOURS[1]) == 8 + 1
    assert count_cells(png, FAIL_COLOUR) == 1 + 1


class _FakeStore:
    def __init__(self, counts):
        self.counts = counts

    def add(self, key, amount):
        return self.counts.get(key.split("/")[-1], 0)


def test_plain_progress_prints_one_line_per_completed_phase(capsys):
    progress = PhaseProgress(4, rich=False)
    with progress:
        progress(_FakeStore({"init": 4, "grids": 2}))
        progress(_FakeStore({"init": 4, "grids": 4}))
        progress(_FakeStore({"init": 4, "grids": 4, "embedding": 4}))
        progress.finish(Report(passed=True, world_size=4, backend="gloo"))
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split("] ")[1] for ln in lines] == [
        "init (rendezvous): all 4 ranks arrived", "grids: all 4 ranks arrived",
        "embedding groups: all 4 ranks arrived", "verification: all 4 ranks arrived"]


def test_final_table_on_a_terminal_and_plain_text_elsewhere(capsys):
    report = Report(passed=False, world_size=8, backend="gloo",
                    mismatches=[{"rank": 2, "module": "language", "group": "pp",
                                 "check": "members", "expected": [0, 2], "actual": [2]}],
                    timings={"init": 0.1, "grids": 0.2},
                    modules={"language": {"shape": {"tp": 2, "cp": 1, "etp": 1, "pp": 2,
                                                    "dp": 2}, "first_rank": 0, "end_rank": 8}})
    print_final(report, rich=True)
    out = capsys.readouterr().out
    assert "language" in out and "failed: members 1" in out and "phase times" in out
    assert "rank 2 module language group pp (members)" in out
    print_final(report, rich=False)
    out = capsys.readouterr().out
    assert "module language     ranks [0, 8)  TP2 CP1 ETP1 PP2 DP2  checks FAILED: members 1" \
        in out and "┃" not in out



def test_aggregated_node_labels_name_every_stage_on_the_node():
    """With PP3 and TP1, a node of 8 ranks holds stages 0, 1 and 2 (not just its ends')."""
    from mimo_launch.layout.plan import make_plan
    from mimo_launch.reports.rankmap import _node_label

    plan = make_plan(layout(language=dict(pp=3, dp=256)), 768)
    assert _node_label(plan, "language", 0, 8) == "P0-2"
    plan = make_plan(layout(language=dict(tp=8, pp=4, dp=32)), 1024)
    assert [_node_label(plan, "language", n * 8, n * 8 + 8) for n in range(5)] == \
        ["P0", "P1", "P2", "P3", "P0"]
    plan = make_plan(layout(language=dict(tp=4, dp=256)), 1024)
    assert _node_label(plan, "language", 8, 16) == "D2-3"


@pytest.mark.timeout(120)
def test_the_picture_of_a_huge_world_stays_bounded(tmp_path):
    """Past MAX_DRAWN_NODES nodes, the picture is that of MAX_DRAWN_NODES nodes plus one row
    that counts the rest: 4096 and 65536 nodes give the same size."""
    lang = dict(tp=1, pp=1)
    sizes = {n: figure_size(make_plan(layout(language=lang), n, 1)) for n in (2048, 4096, 65536)}
    assert MAX_DRAWN_NODES == 2048
    assert sizes[4096] == sizes[65536] == (sizes[2048][0], sizes[2048][1] + 30)  # 0.3 in row
    png, svg = draw_rankmap(make_plan(layout(language=lang), 4096, 1), tmp_path / "huge",
                            failed=[5, 3000, 4000])
    assert Image.open(png).size == figure_size(make_plan(layout(language=lang), 4096, 1), True)
    assert "... 2,048 more nodes (ranks 2,048-4,095) not drawn; 2 of their ranks failed" \
        in svg.read_text()
    assert count_cells(png, FAIL_COLOUR) == 1 + 1  # rank 5, and the legend


_CUT_SCRIPT = """
import dataclasses, os, signal, sys
from pathlib import Path
from mimo_launch.app import interrupts
from mimo_launch.reports import artifacts
from mimo_launch.reports.report import Report
from mimo_launch.settings.app_config import load_settings

run_dir = Path(sys.argv[1])
run_dir.mkdir()
settings = dataclasses.replace(load_settings([]), run_dir=run_dir)
real_draw = artifacts._draw

def draw(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # report.md is written; the rank map is cut
    return real_draw(*args, **kwargs)

artifacts._draw = draw
interrupts.install()
with interrupts.one_run(), interrupts.held(lasting=True) as came:
    artifacts.files_after_verdict(settings, Report(passed=True, world_size=8, backend="gloo"),
                                  came)
print(sorted(p.name for p in run_dir.iterdir()))
"""


def test_an_interrupt_after_the_verdict_names_exactly_the_files_not_written(tmp_path):
    """report.md written, the rank map cut by SIGTERM: the note names the rank map only."""
    out = subprocess.run([sys.executable, "-c", _CUT_SCRIPT, str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1] == "['report.md']", out.stdout
    assert ("mimo-launch: interrupted (SIGTERM) after the verdict: the rank map was not "
            "written; the verdict above and report.json stand") in out.stderr, out.stderr


@pytest.mark.parametrize("fields,verdict", [
    ({"passed": True}, "PASSED: world size 8, backend gloo"),
    ({"failure": "x", "failed_phase": "verify"}, "FAILED: world size 8"),
    ({"mismatches": [{}], "verify_against": "p"}, "FAILED: world size 8, backend gloo, "
                                                   "verified against preset p"),
    ({"failure": "x", "failed_phase": "grids", "verify_against": "p"},
     "NOT RUN, grids FAILED: world size 8, backend gloo, to verify against preset p"),
    ({"failure": "interrupted before the ranks started"}, "NOT RUN: world size 8"),
    ({"failure": "x", "timings": {"verify": 0.1}}, "FAILED: world size 8"),
    ({"failure": "x", "failed_phase": "entrypoint"}, "PASSED, entry point FAILED: world size"),
])
def test_the_verdict_line_says_whether_verification_ran(fields, verdict):
    report = Report(**{"passed": False, "world_size": 8, "backend": "gloo", **fields})
    assert verdict_line(report).startswith(f"mimo-launch verification {verdict}")

