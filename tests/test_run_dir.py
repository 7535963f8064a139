"""The run directory: claimed atomically, refused in one line when unusable, readable by others."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import MIMO_LAUNCH, run_cli
from mimo_launch.settings.run_dir import RUN_MARKER, SWEEP_MARKER, RunDirError, claim_run_dir


def _claim(path: str, start, out) -> None:
    start.wait()
    out.put(str(claim_run_dir(path)))


def test_runs_started_together_each_get_their_own_directory(tmp_path):
    """8 real processes claim the same path at the same moment: 8 different directories."""
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path / "run"), start, out))
             for _ in range(8)]
    for p in procs:
        p.start()
    start.set()
    got = sorted(out.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(30)
    names = [str(tmp_path / "run")] + [str(tmp_path / f"run-{n}") for n in range(2, 9)]
    assert got == sorted(names)
    assert all((Path(d) / RUN_MARKER).is_file() for d in got)


def test_a_directory_without_a_run_is_used_as_it_is(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert claim_run_dir(tmp_path) == tmp_path
    assert claim_run_dir(tmp_path) == tmp_path.with_name(tmp_path.name + "-2")  # now it has one
    earlier = tmp_path / "old"  # a run made before the marker existed
    (earlier / "logs").mkdir(parents=True)
    assert claim_run_dir(earlier) == tmp_path / "old-2"
    sweep = tmp_path / "sweep"  # a sweep's directory is not a single run's either
    sweep.mkdir()
    (sweep / SWEEP_MARKER).write_text("")
    assert claim_run_dir(sweep) == tmp_path / "sweep-2"


@pytest.mark.parametrize("where, message", [
    ("a_file", "a file of that name exists"),
    ("a_file/below", "a part of the path is a file"),
    ("/", "is the file-system root"),
])
def test_an_unusable_path_is_refused(tmp_path, where, message):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(RunDirError, match=message):
        claim_run_dir(tmp_path / where if where != "/" else "/")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["a_file", "a_file/below", "/"])
def test_the_cli_refuses_an_unusable_run_dir_in_one_line_before_any_rank(tmp_path, where):
    (tmp_path / "a_file").write_text("x")
    target = "/" if where == "/" else str(tmp_path / where)
    proc = run_cli(f"hydra.run.dir={target}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("mimo-launch: error: run directory ")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert (tmp_path / "a_file").read_text() == "x"


@pytest.mark.timeout(240)
def test_two_cli_runs_started_together_keep_both_reports(tmp_path):
    """The user's case: `mimo-launch hydra.run.dir=X & mimo-launch mimo=colocated_8
    hydra.run.dir=X &`. Each report lands in its own directory, whole."""
    out = tmp_path / "X"
    env = dict(os.environ, CI="1")
    procs = [subprocess.Popen([str(MIMO_LAUNCH), *extra, f"hydra.run.dir={out}"], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for extra in ([], ["mimo=colocated_8"])]
    assert [p.wait(timeout=200) for p in procs] == [0, 0]
    reports = [json.loads((d / "report.json").read_text()) for d in (out, tmp_path / "X-2")]
    modules = sorted(tuple(sorted((m, r["modules"][m]["first_rank"]) for m in r["modules"]))
                     for r in reports)
    # vlm_8: vision at 0, language at 4; colocated_8: both at 0
    assert modules == [(("language", 0), ("vision", 0)), (("language", 4), ("vision", 0))]
    assert all(len(list((d / "logs").iterdir())) == 8 for d in (out, tmp_path / "X-2"))


@pytest.mark.timeout(120)
def test_dot_is_the_current_directory_and_reports_are_readable_by_others(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    old = os.umask(0o022)
    try:
        proc = run_cli("hydra.run.dir=.", cwd=tmp_path)
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not tmp_path.with_name(tmp_path.name + "-2").exists()
    for name in ("report.json", "report.md"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


@pytest.mark.timeout(60)
def test_a_run_directory_with_dot_dot_is_named_normalised(tmp_path):
    # `a/../out` is `out`: the paths printed and recorded must say so (they said `/x/a/../out`)
    proc = run_cli("mode=plan", "plan.picture=true", "hydra.run.dir=a/../out", cwd=tmp_path,
                   timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"rank map: {tmp_path / 'out' / 'plan.png'} " in proc.stdout, proc.stdout
    assert ".." not in proc.stdout and (tmp_path / "out" / RUN_MARKER).exists()
