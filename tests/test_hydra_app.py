"""`mimo-launch` as a Hydra app: sweeps (-m), Hydra's flags, site configs, unknown keys.

Every test runs the real console script (conftest.run_cli); sweeps run real 8-rank worlds."""

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import MIMO_LAUNCH, run_cli
from mimo_launch.app.sweep import Point, worst


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mimo-launch: error: "), proc.stderr
    return lines[0]


# --- sweeps ---------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_a_sweep_runs_each_point_in_its_own_dir_and_exits_with_the_worst(tmp_path):
    """Three points: one passes (0), one is a rehearsed mismatch (1), one is bad input (2, the
    sweep goes on). The worst by severity is the mismatch."""
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("-m", "mimo=colocated_8", "verify_against=null,vlm_8,nope",
                   f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    points = summary["points"]
    assert [p["exit_code"] for p in points] == [0, 1, 2]
    assert [p["verdict"] for p in points] == ["passed", "mismatch", "bad input"]
    assert points[1]["overrides"] == ["mimo=colocated_8", "verify_against=vlm_8"]
    assert "no mimo preset 'nope'" in points[2]["error"]
    assert summary["exit_code"] == 1 and summary["interrupted"] is False
    for num, passed in ((0, True), (1, False)):  # each point's own directory and report
        report = json.loads((sweep_dir / str(num) / "report.json").read_text())
        assert report["passed"] is passed and points[num]["run_dir"] == str(sweep_dir / str(num))
    assert not (sweep_dir / "2" / "report.json").exists()  # bad input: nothing started
    md = (sweep_dir / "sweep.md").read_text()
    assert "| 1 | mimo=colocated_8 verify_against=vlm_8 | mismatch | 1 |" in md
    assert "| 1 | mimo=colocated_8 verify_against=vlm_8 | mismatch | 1 |" in proc.stdout
    assert "no mimo preset 'nope'" in proc.stderr  # the bad point's one line


def test_worst_exit_code_by_severity():
    assert worst([]) == 0 and worst([0, 0]) == 0
    assert worst([0, 2, 1]) == 1 and worst([2, 4]) == 4 and worst([5, 4]) == 4
    assert worst([1, 3, 5]) == 3 and worst([3, 143]) == 143 and worst([2, 0]) == 2


@pytest.mark.timeout(120)
def test_a_point_hydra_cannot_compose_refuses_the_whole_sweep_and_leaves_nothing(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("-m", "mimo=vlm_8,nope", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert "Could not find 'mimo/nope'" in _one_error_line(proc)
    assert "sweep point" not in proc.stdout and not sweep_dir.exists()


@pytest.mark.timeout(120)
def test_a_sweep_dir_holding_an_earlier_sweep_is_refused_before_any_point(tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / ".mimo-launch-sweep").write_text("")
    proc = run_cli("-m", "mimo=vlm_8,single_8", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert "holds an earlier sweep" in _one_error_line(proc)
    # nothing written into the earlier sweep's directory, not even Hydra's multirun.yaml
    assert [p.name for p in sweep_dir.iterdir()] == [".mimo-launch-sweep"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("earlier", [".mimo-launch-run", "report.json", "logs"])
def test_a_sweep_dir_holding_an_earlier_single_run_is_refused_before_any_point(earlier,
                                                                             tmp_path):
    """Single runs and sweeps keep out of each other's directories, both ways round."""
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / earlier).mkdir() if earlier == "logs" else (sweep_dir / earlier).write_text("")
    proc = run_cli("-m", "mimo=vlm_8,single_8", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert "holds an earlier single run" in _one_error_line(proc)
    assert sorted(p.name for p in sweep_dir.iterdir()) == [earlier]


@pytest.mark.timeout(120)
def test_a_sweep_dir_gets_the_run_dirs_checks_and_points_stay_inside_it(tmp_path):
    """hydra.sweep.dir=/ is refused as hydra.run.dir=/ is (nothing written into /); a file is
    named as a file, not an earlier sweep; a subdir climbing out or absolute is refused."""
    before = set(os.listdir("/"))
    line = _one_error_line(run_cli("-m", "mode=plan", "hydra.sweep.dir=/", cwd=tmp_path))
    assert "hydra.sweep.dir / is the file-system root" in line, line
    assert set(os.listdir("/")) == before
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    line = _one_error_line(run_cli("-m", "mode=plan", f"hydra.sweep.dir={a_file}",
                                   cwd=tmp_path))
    assert line.endswith("cannot be used: a file of that name exists"), line
    for subdir in ("../esc", str(tmp_path / "abs")):
        line = _one_error_line(run_cli("-m", "mode=plan", f"hydra.sweep.dir={tmp_path / 'sw'}",
                                       f"hydra.sweep.subdir={subdir}", cwd=tmp_path))
        assert "would put points outside the sweep directory" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def _start_sweep(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", CI="1")
    return subprocess.Popen([str(MIMO_LAUNCH), "-m", *args,
                             f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, prefix: str) -> None:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return
    pytest.fail(f"never printed {prefix!r}: " + "".join(seen) + proc.stderr.read())


@pytest.mark.timeout(200)
def test_sigterm_during_a_point_stops_the_sweep_and_writes_the_summary(tmp_path):
    """Point 1 hangs (a rehearsed hang in phase grids, timeout 60 s); SIGTERM there stops its
    ranks, and the sweep ends with the points done: exit 143, no point 2."""
    proc = _start_sweep(tmp_path, "fault.hang_rank=null,3,null", "fault.phase=grids",
                        "timeout_s=60")
    _wait_for(proc, "mimo-launch: sweep point #1")
    _wait_for(proc, "  [")  # point 1's ranks are running (a progress line)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out + err
    summary = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [p["exit_code"] for p in summary["points"]] == [0, 143]
    assert summary["interrupted"] is True and summary["exit_code"] == 143
    assert not (tmp_path / "sweep" / "2").exists()
    assert "stopped by an interrupt after 2 point(s)" in out


@pytest.mark.timeout(200)
def test_sigterm_after_a_points_verdict_keeps_it_and_stops_the_sweep(tmp_path):
    """The verdict of point 0 stands (exit 0 for that point) but the sweep does not go on to
    point 1: the held signal is handed back between points."""
    proc = _start_sweep(tmp_path, "fault.artifacts_delay_s=30,0")
    _wait_for(proc, "report: ")  # point 0's verdict is out; it waits 30 s before report.md
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out + err
    summary = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [p["exit_code"] for p in summary["points"]] == [0]
    assert not (tmp_path / "sweep" / "1").exists()


# --- unknown keys, Hydra's hints ------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("override,fragments", [
    ("+timeout=5", ["unknown key 'timeout'", "did you mean 'timeout_s'?"]),
    ("mimo.modules.language.tpp=2", ["'mimo.modules.language.tpp'",
                                     "did you mean 'mimo.modules.language.tp'?"]),
    ("+mimo.modules.language.tpp=2", ["unknown key 'mimo.modules.language.tpp' (did you mean "
                                      "'mimo.modules.language.tp'?)"]),
    ("+fault.phse=grids", ["unknown key 'fault.phse' (did you mean 'fault.phase'?)"]),
    ("fault.phase=bogus", ["fault.phase must be one of", "'bogus'"]),
    ("fault.kill_rank=1", ["fault.phase must be one of", "when a fault is set, got null"]),
])
def test_an_unknown_key_is_refused_with_the_closest_one(override, fragments, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(override, f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=50)
    line = _one_error_line(proc)
    for fragment in fragments:
        assert fragment in line, line
    assert proc.stdout == "" and not run_dir.exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("prefix", ["+", ""])
def test_a_misspelt_cluster_key_is_refused_with_the_closest_one(prefix, tmp_path):
    proc = run_cli("cluster=local_slurm", f"{prefix}cluster.partiton=gpu", cwd=tmp_path,
                   timeout=50)
    line = _one_error_line(proc)
    # the same form with or without +
    assert line.startswith("mimo-launch: error: unknown key 'cluster.partiton'"), line
    assert "(did you mean 'cluster.partition'?)" in line, line


@pytest.mark.timeout(60)
def test_an_ambiguous_value_keeps_hydras_hint_in_one_more_line(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("cluster.env.NCCL_SOCKET_IFNAME=ib0,ib1", f"hydra.run.dir={run_dir}",
                   cwd=tmp_path, timeout=50)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    error, hint = proc.stderr.strip().splitlines()
    assert error.startswith("mimo-launch: error: Ambiguous value") and "ib0,ib1" in error
    assert hint.startswith("mimo-launch: hint: ") and "quote the value" in hint
    assert not run_dir.exists()


# --- a site's own cluster config ------------------------------------------------------------

SITE = """defaults:
  - slurm
  - _self_

name: mysite
{key}: gpu
gpus_per_node: 4
"""


def _site(tmp_path: Path, key: str) -> Path:
    (tmp_path / "site" / "cluster").mkdir(parents=True, exist_ok=True)
    (tmp_path / "site" / "cluster" / "mysite.yaml").write_text(SITE.format(key=key))
    return tmp_path / "site"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["config-dir", "searchpath"])
def test_a_site_cluster_config_in_its_own_folder(how, tmp_path):
    site = _site(tmp_path, "partition")
    where = ["--config-dir", str(site)] if how == "config-dir" \
        else [f"hydra.searchpath=[file://{site}]"]
    proc = run_cli(*where, "cluster=mysite", "mode=plan", "plan.picture=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 node(s) x 4 GPUs" in proc.stdout, proc.stdout  # the site's gpus_per_node
    shown = run_cli("--cfg", "job", "-p", "cluster", *where, "cluster=mysite", cwd=tmp_path)
    assert shown.returncode == 0 and "partition: gpu" in shown.stdout, shown.stderr
    _site(tmp_path, "partiton")  # the typo: refused before anything starts
    run_dir = tmp_path / "run"
    proc = run_cli(*where, "cluster=mysite", "dry_run=true", f"hydra.run.dir={run_dir}",
                   cwd=tmp_path)
    line = _one_error_line(proc)
    assert "unknown key 'cluster.partiton' for cluster.launcher=slurm (did you mean " \
           "'cluster.partition'?)" in line, line
    assert not run_dir.exists()


# --- Hydra's own flags ----------------------------------------------------------------------

def test_the_sweep_table_escapes_its_cells_and_shows_overrides_as_written(tmp_path):
    from mimo_launch.app.sweep import Point, Sweep

    sweep = Sweep(tmp_path)
    sweep.record(Point(0, ["entrypoint=examples.mimo_step\\:main", "tag=a|b"], "/r/0"), 2,
                 1.0, "bad | value")
    row = sweep.table().splitlines()[2]
    assert row == ("| 0 | entrypoint=examples.mimo_step:main tag=a\\|b | bad input: bad \\| "
                   "value | 2 | 1.0 | /r/0 |"), row
    assert len(re.findall(r"(?<!\\)\|", row)) == 7  # six cells, whatever the values hold


def test_points_that_verify_nothing_are_not_called_passed(tmp_path):
    from mimo_launch.app.hydra_app import _unverified
    from mimo_launch.settings.app_config import load_settings

    assert _unverified(load_settings(["cluster=slurm", "dry_run=true"])) == "dry run"
    assert _unverified(load_settings(["cluster=slurm"])) is None
    sweep_dir = tmp_path / "sw"
    proc = run_cli("-m", "mode=plan", "plan.picture=false,true", f"hydra.sweep.dir={sweep_dir}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    points = json.loads((sweep_dir / "sweep.json").read_text())["points"]
    assert [p["verdict"] for p in points] == ["planned", "planned"]
    assert "| planned |" in (sweep_dir / "sweep.md").read_text()


def test_cfg_with_an_unknown_package_is_bad_input(tmp_path):
    line = _one_error_line(run_cli("--cfg", "job", "-p", "nope", cwd=tmp_path))
    assert line.startswith("mimo-launch: error: package 'nope' not found in config"), line


@pytest.mark.timeout(120)
def test_hydras_flags_work_as_hydra_documents_them(tmp_path):
    helped = run_cli("--help", cwd=tmp_path)
    assert helped.returncode == 0 and "mimo-launch -m mimo=vlm_8,single_8" in helped.stdout
    assert "mimo: colocated_8" in helped.stdout and "--multirun,-m" in helped.stdout
    package = run_cli("--cfg", "job", "-p", "mimo", "mimo=single_8", cwd=tmp_path)
    assert package.returncode == 0 and package.stdout.startswith("# @package mimo")
    assert "cluster:" not in package.stdout
    hydra_cfg = run_cli("--cfg", "hydra", cwd=tmp_path)
    assert hydra_cfg.returncode == 0 and "sweep:" in hydra_cfg.stdout
    info = run_cli("--info", "searchpath", "-cd", str(tmp_path), cwd=tmp_path)
    assert info.returncode == 0 and f"file://{tmp_path}" in info.stdout
    install = run_cli("-sc", "install=bash", cwd=tmp_path)
    assert install.returncode == 0 and "hydra_bash_completion" in install.stdout
    env = dict(os.environ, COMP_LINE="mimo-launch mimo=vlm")
    query = subprocess.run([str(MIMO_LAUNCH), "-sc", "query=bash"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert query.returncode == 0 and "mimo=vlm_8" in query.stdout.split()
    missing = run_cli("-cn", "nope", cwd=tmp_path)
    assert "Cannot find primary config 'nope'" in _one_error_line(missing)
    assert list(tmp_path.iterdir()) == []  # none of them made a directory


# --- a sweep on the local Slurm (each point one job through mimo-launch's Slurm launcher) ----

@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_a_sweep_on_the_local_slurm_runs_one_job_per_point(slurm_cluster, tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("-m", "cluster=local_slurm", "fault.kill_rank=null,3", "fault.phase=grids",
                   "timeout_s=20", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=280)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    points = json.loads((sweep_dir / "sweep.json").read_text())["points"]
    assert [(p["exit_code"], p["verdict"]) for p in points] == [(0, "passed"), (3, "failure")]
    assert len(set(re.findall(r"submitted job (\d+)", proc.stdout))) == 2, proc.stdout
    failed = json.loads((sweep_dir / "1" / "report.json").read_text())
    assert failed["failed_ranks"] == [3] and failed["failed_phase"] == "grids"
    assert json.loads((sweep_dir / "0" / "report.json").read_text())["passed"] is True


@pytest.mark.parametrize("given,shown", [
    ("dry_run=True", "dry_run=true"),  # Hydra's spelling of a swept boolean
    ("health.fail=False", "health.fail=false"),
    ("+x=[True,False]", "+x=[true,false]"),
    ("cluster.job_name='True'", "cluster.job_name='True'"),  # a quoted string stays
    ("cluster.job_name=TrueNorth", "cluster.job_name=TrueNorth"),
    ("entrypoint=examples.mimo_step\\:main", "entrypoint=examples.mimo_step:main"),
])
def test_a_sweep_point_is_labelled_as_the_user_wrote_it(given, shown):
    assert Point(0, [given, "mimo=vlm_8"], "out").label == f"{shown} mimo=vlm_8"
    assert Point(0, [], "out").label == "(defaults)"
