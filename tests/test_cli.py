"""`mimo-launch` as a user runs it: a subprocess, real ranks, real exit codes."""

import json

import pytest

from conftest import run_cli


@pytest.mark.timeout(240)
def test_default_run_passes_and_writes_the_report(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is True and report["world_size"] == 8
    assert report["backend"] == "gloo" and report["mismatches"] == []
    assert list(report["modules"]) == ["vision", "language"]
    assert "PASSED" in proc.stdout
    assert sorted((out / "logs").iterdir()) and len(list((out / "logs").iterdir())) == 8
    # a passing rank's log holds no warning of any kind (torch's deprecations filled them once)
    noisy = {p.name: p.read_text() for p in (out / "logs").iterdir() if "Warning" in p.read_text()}
    assert noisy == {}


@pytest.mark.timeout(240)
def test_a_second_run_never_overwrites_the_first(tmp_path):
    out = tmp_path / "run"
    assert run_cli(f"hydra.run.dir={out}", cwd=tmp_path).returncode == 0
    first = (out / "report.json").read_text()
    proc = run_cli(f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0
    assert (out / "report.json").read_text() == first
    assert (tmp_path / "run-2" / "report.json").exists()


@pytest.mark.timeout(240)
def test_a_failed_verification_exits_1_and_lists_mismatches(mismatch_run):
    proc, out = mismatch_run
    assert proc.returncode == 1, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False and report["mismatches"]
    assert "FAILED" in proc.stdout and "rank 0 module vision group dp" in proc.stdout


@pytest.mark.timeout(240)
def test_the_preset_verified_against_and_the_exit_code_are_in_the_report(mismatch_run):
    proc, out = mismatch_run
    report = json.loads((out / "report.json").read_text())
    assert report["verify_against"] == "vlm_8" and report["exit_code"] == proc.returncode == 1
    heading = ("mimo-launch verification FAILED: world size 8, backend gloo, verified against "
               "preset vlm_8 (verify_against)")
    assert heading in proc.stdout
    assert (out / "report.md").read_text().startswith(f"# {heading}\n")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("override,fragment", [
    ("mimo.modules.language.tp=3", "power of two, got 3"),
    ("mimo.modules.vision.dp=3", "overlap"),
    ("mimo.modules.language.tp=abc", "must be an integer, got 'abc'"),
])
def test_bad_override_exits_2_with_one_line_and_starts_nothing(tmp_path, override, fragment):
    out = tmp_path / "run"
    proc = run_cli(override, f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not out.exists()  # no run directory: no rank was started


# example lines of --help that need what a test does not have (a Slurm job, your own function)
NOT_RUNNABLE = ("RUN_DIR", "pkg.module:function", "./site")  # ./site: test_hydra_app


@pytest.mark.timeout(240)
def test_every_runnable_example_of_help_validates_as_a_plan(tmp_path):
    """Each `mimo-launch ...` example of --help, run with mode=plan (start nothing), exits 0."""
    help_text = run_cli("--help", cwd=tmp_path).stdout
    examples = [line.strip().split("  ")[0].split()[1:] for line in help_text.splitlines()
                if line.startswith("  mimo-launch")]
    runnable = [ex for ex in examples if not any(p in " ".join(ex) for p in NOT_RUNNABLE)]
    assert ["mimo=single_8", "mimo.modules.language.tp=4"] in runnable and len(runnable) >= 7
    for example in runnable:
        plan = [] if any(a.startswith("mode=") for a in example) else ["mode=plan"]
        proc = run_cli(*example, *plan, "plan.picture=false", cwd=tmp_path, timeout=60)
        assert proc.returncode == 0, (example, proc.stderr)


@pytest.mark.timeout(120)
def test_cfg_prints_the_composed_config(tmp_path):
    proc = run_cli("--cfg", "mimo=single_8", cwd=tmp_path)
    assert proc.returncode == 0
    assert "language:" in proc.stdout and "data_parallel_size" not in proc.stdout
    assert "    tp: 2\n" in proc.stdout and "    dp: null\n" in proc.stdout  # derived at run time


@pytest.mark.timeout(240)
def test_without_fast_paths_every_group_is_a_new_group_call(tmp_path, monkeypatch):
    """MIMO_LAUNCH_NO_FAST_PATHS=1 turns off the non-member skip, the grid storage and the
    light import (HyperCommGrid.create_pg makes the grid groups): the same verdict, with rank 0
    calling new_group once per group of the world.

    vlm_8, by hand, one group per (grid, kind) and member list: vision TP2 DP2 has 2 tp, 4 cp,
    4 ep, 4 pp, 2 dp, 2 dp+cp, 2 tp+pp, 2 tp+ep+pp, 2 dp+ep, 1 whole = 25 groups, and 4
    pipelines of one stage: 4 pos_embd + 4 embd; language PP2 DP2 has 4+4+4+2+2+2+2+2+2+1 = 25
    and 2 pipelines: 2 + 2. In all 62. Rank 0 (vision) is in 10 grid groups + 2 embedding."""
    fast = json.loads(_run_ok(tmp_path / "fast").read_text())
    monkeypatch.setenv("MIMO_LAUNCH_NO_FAST_PATHS", "1")
    plain = json.loads(_run_ok(tmp_path / "plain").read_text())
    assert fast["new_group_calls"] == plain["new_group_calls"] == 62
    assert plain["member_new_group_calls"] == 62
    assert fast["member_new_group_calls"] == 12


def _run_ok(run_dir):
    proc = run_cli(f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir / "report.json"


def _readme_error_examples() -> list[tuple[list[str], str]]:
    """The README's `$ mimo-launch ...` lines followed by the error lines they print."""
    import shlex

    from conftest import REPO

    examples, current = [], None
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("$ mimo-launch "):
            current = (shlex.split(line)[2:], [])
            examples.append(current)
        elif current is not None and line.startswith("mimo-launch: "):
            current[1].append(line)
        else:
            current = None
    return [(args, "\n".join(lines) + "\n") for args, lines in examples if lines]


@pytest.mark.timeout(240)
def test_the_readmes_error_examples_print_what_it_shows(tmp_path):
    examples = _readme_error_examples()
    assert len(examples) >= 3, examples
    for args, shown in examples:
        proc = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=60)
        assert (proc.returncode, proc.stderr) == (2, shown), args
