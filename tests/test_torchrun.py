"""Ranks started by real `torchrun` agents (`python -m mimo_launch.torchrun_task`).

Two agents on this machine stand for two nodes (`--nnodes=2 --nproc-per-node=4`, a c10d
rendezvous), as on a cluster without Slurm.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from conftest import REPO, run_cli

TORCHRUN = Path(sys.executable).parent / "torchrun"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_agents(tmp_path: Path, *overrides: str, nnodes: int = 2, nproc: int = 4,
                    timeout: float = 180) -> list[subprocess.CompletedProcess]:
    """Start `nnodes` torchrun agents of `nproc` workers each (one c10d rendezvous) running
    mimo_launch.torchrun_task with `overrides`; wait for all; return each agent's result."""
    endpoint = f"127.0.0.1:{free_port()}"
    cmd = [str(TORCHRUN), f"--nnodes={nnodes}", f"--nproc-per-node={nproc}",
           "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", "--rdzv-id=mimo-test",
           "--max-restarts=0", "-m", "mimo_launch.torchrun_task", *overrides]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    agents = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True) for _ in range(nnodes)]
    results = []
    for agent in agents:
        try:
            out, _ = agent.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for a in agents:
                a.kill()
            raise
        results.append(subprocess.CompletedProcess(cmd, agent.returncode, out, ""))
    return results


def test_two_agents_pass_the_default_layout(tmp_path):
    out = tmp_path / "run"
    agents = torchrun_agents(tmp_path, f"hydra.run.dir={out}")
    logs = "\n".join(a.stdout for a in agents)
    assert [a.returncode for a in agents] == [0, 0], logs[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is True and report["world_size"] == 8
    assert report["backend"] == "gloo" and report["mismatches"] == []
    assert list(report["modules"]) == ["vision", "language"]
    assert "verification PASSED" in logs
    assert (out / "report.md").is_file()
    # every worker keeps its own log, as the local launcher's and Slurm's ranks do
    assert sorted(p.name for p in (out / "logs").iterdir()) == [f"rank{r}.log" for r in range(8)]


def test_with_no_launcher_rank_0_keeps_report_json_through_the_run(tmp_path, monkeypatch):
    """torchrun concludes nothing: rank 0 writes report.json itself, the verdict in it while
    the entry point still runs (a job killed then still leaves it)."""
    out = tmp_path / "run"
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the entry point's package, tests/
    agents = torchrun_agents(tmp_path, f"hydra.run.dir={out}",
                             "entrypoint=tests.handoff_entrypoints:record_reports")
    assert [a.returncode for a in agents] == [0, 0], "\n".join(a.stdout for a in agents)[-3000:]
    seen = json.loads((out / "reports_seen.json").read_text())
    assert seen["report.json"] is True and seen["handoff"] is None
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and report["entrypoint_finished"]


def test_a_killed_worker_is_named_and_every_worker_exits_3(tmp_path):
    out = tmp_path / "run"
    agents = torchrun_agents(tmp_path, f"hydra.run.dir={out}", "fault.kill_rank=5",
                             "fault.phase=grids", "timeout_s=10")
    logs = "\n".join(a.stdout for a in agents)
    assert all(a.returncode != 0 for a in agents), logs[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False
    assert report["failed_ranks"] == [5] and report["failed_phase"] == "grids", report
    assert "exitcode  : 3" in logs  # torchrun's summary: the workers' own failure code
    assert "rank      : 5" in logs and "(SIGKILL)" in logs
    # a surviving worker's end is in its own log: its own failure, traceback and all, when it
    # timed out naming rank 5 first, or torchrun's SIGTERM when its agent stopped it first
    # (which comes first depends on the machine's load)
    rank0 = (out / "logs" / "rank0.log").read_text()
    timed_out = "Traceback" in rank0 and "rank(s) 5" in rank0
    assert timed_out or "rank 0: SIGTERM from torchrun, stopping" in rank0, rank0[-2000:]


def test_a_health_problem_is_exit_4_in_rank_0s_report_and_1_for_the_shell(tmp_path):
    out = tmp_path / "run"
    # one agent: with two, the one whose workers all exit 0 would wait in torchrun's exit
    # barrier (300 s) for the agent whose rank 0 exited 4
    (agent,) = torchrun_agents(tmp_path, f"hydra.run.dir={out}", "check=health",
                               "fault.slow_rank=5", "fault.slow_factor=4", nnodes=1, nproc=8)
    report = json.loads((out / "report.json").read_text())
    # the shell sees torchrun's status (1: a worker failed), the worker's code is rank 0's 4
    assert agent.returncode == 1 and "exitcode  : 4" in agent.stdout, agent.stdout[-3000:]
    assert report["exit_code"] == 4 and report["health"]["problem"] is True
    assert 5 in report["health"]["suspects"]["ranks"], report["health"]["suspects"]


def test_a_worker_hung_in_teardown_is_stopped_and_named_the_verdict_kept(tmp_path):
    """After a passing verification rank 6 hangs while destroying its groups: its own
    watchdog ends it timeout_s later (exit 124), rank 0, waiting for every rank's teardown,
    names it; torchrun's agents do not wait forever."""
    out = tmp_path / "run"
    agents = torchrun_agents(tmp_path, f"hydra.run.dir={out}", "fault.hang_rank=6",
                             "fault.phase=teardown", "timeout_s=10", timeout=150)
    logs = "\n".join(a.stdout for a in agents)
    assert all(a.returncode != 0 for a in agents), logs[-3000:]
    assert "mimo-launch verification PASSED, teardown FAILED" in logs, logs[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert (report["failed_phase"], report["failed_ranks"], report["mismatches"]) == \
        ("teardown", [6], []), report
    assert report["failure"].startswith("phase 'teardown': rank(s) 6 did not end within 10s "
                                        "of entering phase 'teardown'; stopped"), report
    assert "exitcode  : 124" in logs


def test_a_world_of_the_wrong_size_is_refused_with_exit_2(tmp_path):
    agents = torchrun_agents(tmp_path, f"hydra.run.dir={tmp_path / 'run'}", nnodes=1, nproc=2)
    log = agents[0].stdout
    assert agents[0].returncode != 0
    assert ("mimo_launch.torchrun_task: error: torchrun started 2 workers (WORLD_SIZE: nnodes x "
            "nproc-per-node) but the layout's world size is 8") in log
    assert log.count("mimo_launch.torchrun_task: error:") == 1  # rank 0 says it, once
    assert "exitcode  : 2" in log
    # torchrun prints its own ChildFailedError traceback; none comes from a worker
    assert not [ln for ln in log.splitlines() if 'File "' in ln and "mimo_launch" in ln]
    assert not (tmp_path / "run" / "report.json").exists()


def test_health_buffers_beyond_the_nodes_memory_are_refused_before_the_rendezvous(tmp_path):
    (agent,) = torchrun_agents(tmp_path, f"hydra.run.dir={tmp_path / 'run'}", "check=health",
                               "health.sizes=[100GiB]", nnodes=1, nproc=8)
    errors = [ln for ln in agent.stdout.splitlines() if "mimo_launch.torchrun_task: error:" in ln]
    assert len(errors) == 1 and "exitcode  : 2" in agent.stdout, agent.stdout[-3000:]
    assert ("health.sizes: 100 GiB per message needs about 2.4e+03 GiB of host memory (3 buffers "
            "x 8 ranks on this machine)") in errors[0]
    assert not (tmp_path / "run" / "report.json").exists()


def test_outside_torchrun_the_entry_point_says_how_to_start_it(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-m", "mimo_launch.torchrun_task"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "mimo_launch.torchrun_task: error: not a torchrun worker (RANK, WORLD_SIZE, LOCAL_RANK, "
        "MASTER_ADDR, MASTER_PORT not set): start it with torchrun ... -m "
        "mimo_launch.torchrun_task, or use mimo-launch")


def test_mimo_launch_with_the_torchrun_cluster_says_to_use_torchrun(tmp_path):
    proc = run_cli("cluster=torchrun", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("mimo-launch: error: cluster=torchrun: torchrun starts the "
                                  "ranks; run `torchrun")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing claimed, nothing started

