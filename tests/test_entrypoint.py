"""The verified hand-off (`mimo-launch entrypoint=pkg.module:function`), locally: the example's
MIMO step with exact numbers, the context each rank gets, failures in the user's function
(raise, hang, a nonzero return) reported like the builder's, no start after a failed
verification, and bad values refused before any rank starts."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from conftest import REPO, run_cli

FAULTS = "tests.handoff_entrypoints"


def mimo_step_results(run_dir) -> dict[int, dict]:
    return {r: json.loads((run_dir / "mimo_step" / f"rank{r}.json").read_text())
            for r in range(8)}


# by hand, for vlm_8 (examples/mimo_step.py's docstring: D = 2, H = 4)
MIMO_STEP_EXPECTED = {
    0: {"module": "vision", "activation": [2.0] * 4, "weight_grad": [3.0]},
    1: {"module": "vision", "activation": [2.0] * 4, "weight_grad": [3.0]},
    2: {"module": "vision", "activation": [4.0] * 4, "weight_grad": [3.0]},
    3: {"module": "vision", "activation": [4.0] * 4, "weight_grad": [3.0]},
    4: {"module": "language", "position_grad": [2.0], "embedding_grad": [12.0]},
    5: {"module": "language", "loss": 8.0, "embedding_grad": [12.0], "total_loss": 24.0},
    6: {"module": "language", "position_grad": [2.0], "embedding_grad": [12.0]},
    7: {"module": "language", "loss": 16.0, "embedding_grad": [12.0], "total_loss": 24.0},
}


def _report(run_dir) -> dict:
    return json.loads((run_dir / "report.json").read_text())


def _leftovers(run_dir) -> list[str]:
    proc = subprocess.run(["pgrep", "-af", str(run_dir)], capture_output=True, text=True)
    return [ln for ln in proc.stdout.splitlines() if "pgrep" not in ln]


@pytest.mark.timeout(120)
def test_the_example_mimo_step_gets_the_numbers_it_should(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("entrypoint=examples.mimo_step:main", f"hydra.run.dir={run_dir}", cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "entry point examples.mimo_step:main: finished on every rank" in proc.stdout
    assert "UserWarning" not in proc.stderr  # megatron-core's import warnings are not shown
    report = _report(run_dir)
    assert report["passed"] and report["entrypoint_finished"]
    assert report["entrypoint"] == "examples.mimo_step:main" and "entrypoint" in report["timings"]
    assert mimo_step_results(run_dir) == MIMO_STEP_EXPECTED


@pytest.mark.timeout(120)
def test_each_rank_gets_its_verified_collections_and_the_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(f"entrypoint={FAULTS}:record_groups", f"hydra.run.dir={run_dir}", cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # vlm_8 by hand: vision dp [0,2] [1,3], language dp [4,6] [5,7]
    dp_sum = {0: 2, 1: 4, 2: 2, 3: 4, 4: 10, 5: 12, 6: 10, 7: 12}
    for rank in range(8):
        module = "vision" if rank < 4 else "language"
        assert (run_dir / f"handed{rank}.txt").read_text() == f"8 {{'{module}': {dp_sum[rank]}}}"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", ["local", pytest.param("local_slurm", marks=pytest.mark.slurm)])
def test_the_launcher_writes_report_json_once_from_rank_0s_hand_off(cluster, request, tmp_path):
    """Rank 0 hands its report over; only the launcher that concludes the run writes
    report.json, at the end (not while the entry point still runs)."""
    if cluster == "local_slurm":
        request.getfixturevalue("slurm_cluster")
    run_dir = tmp_path / "run"
    proc = run_cli(f"cluster={cluster}", f"entrypoint={FAULTS}:record_reports",
                   f"hydra.run.dir={run_dir}", cwd=REPO, timeout=170)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = json.loads((run_dir / "reports_seen.json").read_text())
    assert seen["report.json"] is False, seen
    assert seen["handoff"]["passed"] and seen["handoff"]["entrypoint_finished"] is False
    report = _report(run_dir)
    assert report["passed"] and report["entrypoint_finished"]
    assert report["mismatches"] == seen["handoff"]["mismatches"] == []


@pytest.mark.timeout(120)
def test_a_report_json_the_launcher_cannot_write_fails_the_run_after_the_verdict(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(f"entrypoint={FAULTS}:block_report_json", f"hydra.run.dir={run_dir}",
                   cwd=REPO)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "mimo-launch verification PASSED, report.json FAILED" in proc.stdout, proc.stdout
    assert "report.json could not be written: [Errno 21] Is a directory" in proc.stdout
    assert "mimo-launch: warning: report.json could not be written" in proc.stderr
    assert f"report: {run_dir / 'report.json'} not written (see above)" in proc.stdout
    assert (run_dir / "report.json").is_dir()  # nothing half-written over it


@pytest.mark.timeout(120)
def test_each_local_rank_has_torchruns_variables_not_the_shells(tmp_path):
    # a shell's stale WORLD_SIZE would size HyperCommGrid's grids (it reads the environment
    # first): each rank's own replaces it
    run_dir = tmp_path / "run"
    proc = run_cli(f"entrypoint={FAULTS}:record_environment", f"hydra.run.dir={run_dir}",
                   cwd=REPO, env={"WORLD_SIZE": "3", "RANK": "9", "LOCAL_RANK": "9"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = [json.loads((run_dir / f"env{rank}.json").read_text()) for rank in range(8)]
    assert [(e["RANK"], e["WORLD_SIZE"], e["LOCAL_RANK"]) for e in seen] == \
        [(str(rank), "8", str(rank)) for rank in range(8)]
    assert {(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in seen} == \
        {("127.0.0.1", seen[0]["MASTER_PORT"])} and int(seen[0]["MASTER_PORT"]) > 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("function,rank,words", [
    ("raise_on_rank_3", 3, "raised ValueError: rank 3 refuses"),
    ("hang_on_rank_5", 5, "did not return within 3s (entrypoint_timeout_s)"),
    ("return_7_on_rank_2", 2, "returned 7 (expected None or 0)"),
])
def test_a_failing_entry_point_is_named_with_its_rank_and_phase(function, rank, words,
                                                                tmp_path):
    run_dir = tmp_path / "run"
    start = time.monotonic()
    proc = run_cli(f"entrypoint={FAULTS}:{function}", "entrypoint_timeout_s=3",
                   f"hydra.run.dir={run_dir}", cwd=REPO)
    elapsed = time.monotonic() - start
    assert proc.returncode == 3, proc.stdout + proc.stderr
    report = _report(run_dir)
    assert report["failed_phase"] == "entrypoint" and report["failed_ranks"] == [rank], report
    assert f"phase 'entrypoint': rank {rank} failed" in report["failure"]
    assert words in report["failure"]
    assert report["mismatches"] == [] and len(report["hosts"]) == 8  # verification kept
    assert "PASSED, entry point FAILED" in proc.stdout and "did not finish" in proc.stdout
    # the module rows agree with the verdict line (they said 'checks not run')
    assert proc.stdout.count("checks passed") == 2 and "not run" not in proc.stdout
    assert elapsed < 30, elapsed
    assert _leftovers(run_dir) == []


@pytest.mark.timeout(120)
def test_the_entry_point_never_starts_after_a_failed_verification(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("mimo=colocated_8", "verify_against=vlm_8",
                   f"entrypoint={FAULTS}:record_groups", f"hydra.run.dir={run_dir}", cwd=REPO)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "not started (verification did not pass)" in proc.stdout
    assert list(run_dir.glob("handed*")) == []
    assert _report(run_dir)["entrypoint_finished"] is False


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value,message", [
    ("examples.mimo_step", "entrypoint must look like pkg.module:function, got "
                           "'examples.mimo_step'"),
    ("no_such_package_xyz.step:main", "entrypoint=no_such_package_xyz.step:main: cannot "
                                      "import module 'no_such_package_xyz.step': "
                                      "ModuleNotFoundError: No module named "
                                      "'no_such_package_xyz'"),
    ("examples.mimo_step:no_such_function", "entrypoint=examples.mimo_step:no_such_function: "
                                            "module 'examples.mimo_step' ("),
])
def test_a_bad_entry_point_is_refused_before_any_rank_starts(value, message, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(f"entrypoint={value}", f"hydra.run.dir={run_dir}", cwd=REPO)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"mimo-launch: error: {message}"), proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert not run_dir.exists()


# --- the same on the local Slurm cluster (tests/conftest.py's slurm_cluster) ------------------

@pytest.mark.slurm
@pytest.mark.timeout(180)
def test_the_example_mimo_step_on_slurm(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("cluster=local_slurm", "entrypoint=examples.mimo_step:main",
                   f"hydra.run.dir={run_dir}", cwd=REPO, timeout=170)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = _report(run_dir)
    assert report["entrypoint_finished"] and report["hosts"] == ["n1"] * 4 + ["n2"] * 4
    assert mimo_step_results(run_dir) == MIMO_STEP_EXPECTED


@pytest.mark.slurm
@pytest.mark.timeout(180)
@pytest.mark.parametrize("function,rank,words", [
    ("raise_on_rank_3", 3, "raised ValueError: rank 3 refuses"),
    ("hang_on_rank_5", 5, "did not return within 5s (entrypoint_timeout_s)"),
])
def test_a_failing_entry_point_on_slurm_is_named_and_the_job_stopped(slurm_cluster, function,
                                                                    rank, words, tmp_path):
    run_dir = tmp_path / "run"
    start = time.monotonic()
    proc = run_cli("cluster=local_slurm", f"entrypoint={FAULTS}:{function}",
                   "entrypoint_timeout_s=5", f"hydra.run.dir={run_dir}", cwd=REPO, timeout=170)
    elapsed = time.monotonic() - start
    assert proc.returncode == 3, proc.stdout + proc.stderr
    report = _report(run_dir)
    assert report["failed_phase"] == "entrypoint" and report["failed_ranks"] == [rank], report
    assert f"rank {rank} failed" in report["failure"] and words in report["failure"]
    assert "slurm: job " in report["failure"]
    assert elapsed < 120, elapsed
    assert _leftovers(run_dir) == []
