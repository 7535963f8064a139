"""Slurm: submission through submitit and the sbatch script, on the real local cluster.

Tests marked `slurm` need root: a session fixture (conftest.py) runs `slurm/local/start.sh`
(n1..n4, 4 CPUs each) and stops the cluster at the end only if this session started it. The
unmarked tests (Slurm variables, allocation checks, the sbatch header) need no Slurm.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import MIMO_LAUNCH, REPO, run_cli
from mimo_launch.launchers.slurm_report import task_errors
from mimo_launch.launchers.slurm_submit import allocation, warning_signal_s
from mimo_launch.settings.app_config import UsageError, load_settings
from mimo_launch.slurm_task import (
    WARNING_SIGNAL,
    SlurmRank,
    first_node,
    master_port,
    rendezvous_store,
    slurm_rank,
)

SBATCH_SCRIPT = REPO / "slurm" / "mimo_launch.sbatch"


# --- no Slurm needed ------------------------------------------------------------------------

def test_slurm_variables_decide_the_rendezvous_not_an_inherited_master_addr():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "41",
           "SLURM_JOB_NODELIST": "gpu[07-08],gpu11", "MASTER_ADDR": "elsewhere",
           "MASTER_PORT": "1"}
    me = slurm_rank(env)
    assert (me.rank, me.world_size, me.local_rank) == (5, 8, 1)
    assert me.master_addr == "gpu07" and me.master_port == master_port(41) == 20041
    assert first_node("n1") == "n1"
    with pytest.raises(RuntimeError, match="not inside a Slurm task"):
        slurm_rank({})
    step = slurm_rank(env | {"SLURM_STEP_NODELIST": "gpu[09-10]"})  # srun -w on part of it
    assert step.master_addr == "gpu09"


def test_the_warning_signal_never_comes_at_a_short_jobs_start():
    # submitit's USR2 90 s before the limit fired at once with time_min=1 (a healthy job died)
    assert [warning_signal_s(m) for m in (1, 2, 5, 6, 20)] == [15, 30, 75, 90, 90]


@pytest.mark.timeout(60)
def test_the_warning_signal_spares_a_task_that_has_no_handler_yet(tmp_path):
    """Slurm may send the time-limit warning up to 60 s early, so with `time_min=1` it can
    reach a task still importing torch: submitit's USR2 ended such a task (a healthy job
    failed under load). The job asks for WARNING_SIGNAL, which a process without a handler
    survives; real signal, real process, and the batch script the job really gets."""
    script = run_cli("cluster=local_slurm", "dry_run=true", "cluster.time_min=1",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=50)
    assert script.returncode == 0, script.stdout + script.stderr
    assert f"#SBATCH --signal={WARNING_SIGNAL.name.removeprefix('SIG')}@15" in script.stdout
    assert "USR2" not in script.stdout
    task = subprocess.Popen([sys.executable, "-c", "import sys, time; print(1, flush=True); "
                             "time.sleep(1.5)"], stdout=subprocess.PIPE, text=True)
    task.stdout.readline()  # the interpreter is up; no handler of its own
    task.send_signal(WARNING_SIGNAL)
    assert task.wait(timeout=30) == 0


def test_rendezvous_ports_stay_below_the_ephemeral_range():
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {master_port(job) for job in range(0, 100_000, 7)}
    assert min(ports) == 20000 and max(ports) < min(low, 32768)


def test_a_taken_rendezvous_port_names_mimo_master_port():
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        me = SlurmRank(rank=0, world_size=2, local_rank=0, job_id=1, master_addr="127.0.0.1",
                       master_port=port)
        with pytest.raises(RuntimeError, match=f"cannot listen on port {port} .*MIMO_MASTER_PORT"):
            rendezvous_store(me, timeout_s=5)


def _settings(*overrides):
    return load_settings(["cluster=slurm", *overrides])


@pytest.mark.parametrize("overrides,message", [
    (["cluster.nodes=3", "cluster.gpus_per_node=4"],
     "cluster.nodes=3 x cluster.tasks_per_node=4 = 12 tasks but the layout's world size is 8"),
    (["cluster.tasks_per_node=2"],
     "cluster.tasks_per_node=2 but cluster.gpus_per_node=8"),
    (["cluster.gpus_per_node=0"], "give cluster.tasks_per_node"),
    (["cluster.gpus_per_node=0", "cluster.tasks_per_node=3"],
     "world size 8 is not a multiple of cluster.tasks_per_node=3"),
    (["cluster.gpus_per_node=0", "cluster.tasks_per_node=4", "device=cuda"],
     "device=cuda but cluster.gpus_per_node=0"),
])
def test_allocation_that_does_not_fit_the_layout_is_refused(overrides, message):
    with pytest.raises(UsageError) as err:
        allocation(_settings(*overrides))
    assert message in str(err.value)


def test_device_comes_from_the_cluster_config_not_the_login_node():
    assert allocation(_settings()).device == "cuda"  # 8 GPUs per node, none here
    alloc = allocation(_settings("mimo=vlm_16", "cluster=local_slurm"))
    assert (alloc.nodes, alloc.tasks_per_node, alloc.device) == (4, 4, "cpu")


def test_sbatch_header_agrees_with_the_default_layout():
    header = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", SBATCH_SCRIPT.read_text(), re.M))
    tasks = int(header["nodes"]) * int(header["ntasks-per-node"])
    assert tasks == load_settings(["cluster=local_slurm"]).world_size
    assert "--kill-on-bad-exit=1" in SBATCH_SCRIPT.read_text()


def test_srun_task_errors_are_parsed(tmp_path):
    log = tmp_path / "1_0_log.err"
    log.write_text("srun: error: n1: task 3: Killed\n"
                   "srun: error: n2: tasks 4-5,7: Exited with exit code 3\n")
    assert task_errors(log) == [("n1", [3], "Killed"), ("n2", [4, 5, 7], "Exited with exit code 3")]


# --- the local Slurm cluster ----------------------------------------------------------------

def _cli(*args, cwd: Path, timeout: float = 150, **env) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **env)
    return subprocess.run([str(MIMO_LAUNCH), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def _job_id(stdout: str) -> str:
    match = re.search(r"submitted job (\d+)", stdout)
    assert match, stdout
    return match.group(1)


def _gone(job_id: str, run_dir: Path, within_s: float = 10) -> bool:
    """The job left the queue and no process names the run directory."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True,
                                text=True).stdout.strip()
        procs = [ln for ln in subprocess.run(["pgrep", "-af", str(run_dir)], capture_output=True,
                                             text=True).stdout.splitlines() if "pgrep" not in ln]
        if not queued and not procs:
            return True
        time.sleep(0.2)
    return False


def _wait_until_hung(proc: subprocess.Popen, run_dir: Path, rank: int,
                     within_s: float = 90) -> None:
    """Wait until `rank`'s log shows its injected hang; fail if the launcher ends first."""
    log = run_dir / "logs" / f"rank{rank}.log"
    deadline = time.monotonic() + within_s
    while not (log.exists() and "hangs" in log.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None, f"rank {rank} never hung"
        time.sleep(0.2)


def _last_job_id() -> int:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-a", "-o", "JobID", "-S", "now-1days"],
                         capture_output=True, text=True).stdout.split()
    queued = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    ids = [int(x) for x in out + queued.split() if x.isdigit()]
    return max(ids, default=0)


@pytest.mark.slurm
@pytest.mark.timeout(150)
@pytest.mark.parametrize("preset,nodes,minutes", [("vlm_8", 2, 1), ("vlm_16", 4, 20)])
def test_layout_spreads_over_the_nodes(slurm_cluster, preset, nodes, minutes, tmp_path):
    """Also: a one-minute time limit does not kill a healthy job (submitit's warning signal
    came 90 s before the limit, so at once)."""
    run_dir = tmp_path / "run"
    proc = _cli("cluster=local_slurm", f"mimo={preset}", f"hydra.run.dir={run_dir}",
                f"cluster.time_min={minutes}", cwd=tmp_path, MASTER_ADDR="inherited.invalid",
                MASTER_PORT="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"job \d+ (PENDING|RUNNING)", proc.stdout), proc.stdout
    assert "PASSED" in proc.stdout and f"report: {run_dir / 'report.json'}" in proc.stdout
    report = json.loads((run_dir / "report.json").read_text())
    assert report["passed"] and report["world_size"] == 4 * nodes
    assert report["hosts"] == [f"n{n}" for n in range(1, nodes + 1) for _ in range(4)]
    assert _gone(_job_id(proc.stdout), run_dir)


@pytest.mark.slurm
@pytest.mark.timeout(150)
def test_sbatch_script_runs_the_same_entry_point(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, MIMO_PYTHON=sys.executable, MIMO_RUN_DIR=str(run_dir))
    job_id = subprocess.run(["sbatch", "--parsable", str(SBATCH_SCRIPT), "cluster=local_slurm"],
                            cwd=tmp_path, env=env, capture_output=True, text=True,
                            check=True).stdout.strip().split(";")[0]
    while subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True,
                         text=True).stdout.strip():
        time.sleep(0.5)
    output = (tmp_path / f"mimo-launch-{job_id}.out").read_text()
    assert "mimo-launch verification PASSED: world size 8" in output, output
    assert f"report: {run_dir / 'report.json'}" in output
    report = json.loads((run_dir / "report.json").read_text())
    assert report["hosts"] == ["n1"] * 4 + ["n2"] * 4
    logs = sorted(p.name for p in (run_dir / "logs").iterdir())
    assert logs == [f"rank{r}.log" for r in range(8)]


@pytest.mark.slurm
@pytest.mark.timeout(150)
def test_failed_verification_exits_1(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    proc = _cli("cluster=local_slurm", "mimo=colocated_8", "verify_against=vlm_8",
                f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "mismatch" in proc.stdout
    assert json.loads((run_dir / "report.json").read_text())["mismatches"]


@pytest.mark.slurm
@pytest.mark.timeout(150)
def test_a_step_on_part_of_the_allocation_meets_on_its_own_first_node(slurm_cluster, tmp_path):
    """A 4-node job whose step runs on n3 and n4 only: rank 0 is on n3, so every task must
    dial n3, not n1 (the allocation's first node). The local nodes share one host, where
    dialing n1 would work by accident: so each task prints where it dials, from real Slurm's
    step variables, and the whole layout also passes there."""
    run_dir = tmp_path / "run"
    where = (f"{sys.executable} -c 'from mimo_launch.slurm_task import slurm_rank; "
             f"me = slurm_rank(); print(me.rank, me.world_size, me.master_addr)'")
    steps = (f"srun -n 8 -N 2 -w n3,n4 {where} && srun -n 8 -N 2 -w n3,n4 {sys.executable} "
             f"-m mimo_launch.slurm_task cluster=local_slurm hydra.run.dir={run_dir}")
    job = subprocess.run(["sbatch", "--parsable", "--wait", "-N", "4", "--ntasks-per-node=4",
                          "--time=5", f"--output={tmp_path / 'job.out'}", f"--wrap={steps}"],
                         capture_output=True, text=True, timeout=140, cwd=tmp_path)
    out = (tmp_path / "job.out").read_text()
    assert job.returncode == 0, job.stderr + out
    dialed = sorted(ln.split() for ln in out.splitlines() if re.fullmatch(r"\d+ 8 n\d", ln))
    assert dialed == sorted([str(r), "8", "n3"] for r in range(8)), out
    report = json.loads((run_dir / "report.json").read_text())
    assert report["passed"] and report["hosts"] == ["n3"] * 4 + ["n4"] * 4


@pytest.mark.slurm
@pytest.mark.timeout(120)
def test_killed_rank_is_named_with_its_phase_and_slurm_state(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    start = time.monotonic()
    proc = _cli("cluster=local_slurm", "fault.kill_rank=3", "fault.phase=grids", "timeout_s=20",
                f"hydra.run.dir={run_dir}", cwd=tmp_path)
    elapsed = time.monotonic() - start
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert elapsed < 60, elapsed
    report = json.loads((run_dir / "report.json").read_text())
    assert report["failed_phase"] == "grids" and report["failed_ranks"] == [3], report
    job_id = _job_id(proc.stdout)
    assert f"slurm: job {job_id} FAILED" in report["failure"]
    assert "task(s) 3: Killed" in report["failure"]
    # the excerpt comes from the rank's own log (the local launcher's layout), not submitit's
    assert f"last lines of {run_dir}/logs/rank3.log:\n" in report["failure"]
    assert "fault injection: rank 3 kills itself" in report["failure"], report["failure"]
    assert sorted(p.name for p in (run_dir / "logs").iterdir()) == [
        f"rank{r}.log" for r in range(8)]
    assert _gone(job_id, run_dir)


@pytest.mark.slurm
@pytest.mark.timeout(120)
def test_cancelled_job_is_reported_with_its_state(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([str(MIMO_LAUNCH), "cluster=local_slurm", "fault.hang_rank=1",
                             "fault.phase=embedding", "timeout_s=120",
                             f"hydra.run.dir={run_dir}"], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    job_id = _job_id(proc.stdout.readline())
    _wait_until_hung(proc, run_dir, 1, within_s=80)
    cancelled = time.monotonic()
    subprocess.run(["scancel", job_id], check=True)
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - cancelled < 60
    assert proc.returncode == 3, out + err
    report = json.loads((run_dir / "report.json").read_text())
    assert f"slurm: job {job_id} CANCELLED" in report["failure"], report["failure"]
    assert "logs: " in report["failure"]
    assert _gone(job_id, run_dir)


@pytest.mark.slurm
@pytest.mark.timeout(60)
def test_world_size_mismatch_submits_nothing(slurm_cluster, tmp_path):
    before = _last_job_id()
    proc = _cli("cluster=local_slurm", "cluster.nodes=3", f"hydra.run.dir={tmp_path / 'run'}",
                cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == ("mimo-launch: error: cluster.nodes=3 x "
                                   "cluster.tasks_per_node=4 = 12 tasks but the layout's world "
                                   "size is 8")
    assert _last_job_id() == before and not (tmp_path / "run").exists()


@pytest.mark.slurm
@pytest.mark.timeout(60)
@pytest.mark.parametrize("cluster,lines", [
    ("local_slurm", ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
                     "#SBATCH --partition=debug", "#SBATCH --job-name=mimo-launch",
                     "#SBATCH --time=5"]),
    ("example_site", ["#SBATCH --nodes=1", "#SBATCH --gpus-per-node=8", "#SBATCH --exclusive",
                      "#SBATCH --account=my_project", "#SBATCH --qos=normal",
                      "export NCCL_DEBUG=WARN",
                      "--container-image=/shared/images/mimo-launch-0.1.0.sqsh",
                      "--container-mounts=/shared/runs:/shared/runs",
                      "--container-workdir=/workspace"]),
])
@pytest.mark.parametrize("fast", ["1", "0"], ids=["submitit-text", "public-parameters"])
def test_dry_run_prints_the_sbatch_script_and_submits_nothing(slurm_cluster, cluster, lines,
                                                              fast, tmp_path):
    """submitit's own script text (a private method), and the fallback from the executor's
    public parameters (MIMO_LAUNCH_NO_FAST_PATHS=1): the same #SBATCH lines either way."""
    before = _last_job_id()
    # example_site runs in a container that mounts /shared/runs: the run dir must be there
    run_dir = (Path("/shared/runs") / tmp_path.name) if cluster == "example_site" \
        else tmp_path / "run"
    proc = _cli(f"cluster={cluster}", "dry_run=true", f"hydra.run.dir={run_dir}",
                cwd=tmp_path, MIMO_LAUNCH_NO_FAST_PATHS="0" if fast == "1" else "1")
    assert proc.returncode == 0, proc.stderr
    for line in lines:
        assert line in proc.stdout, proc.stdout
    assert "--kill-on-bad-exit=1" in proc.stdout
    assert _last_job_id() == before and not run_dir.exists()


@pytest.mark.slurm
@pytest.mark.timeout(60)
def test_dry_run_script_carries_gigabytes_and_resolved_values(slurm_cluster, tmp_path):
    """sbatch reads a bare --mem as megabytes; an interpolation in the cluster section is
    resolved in the whole config; an env flag is exported as written in YAML."""
    proc = _cli("cluster=local_slurm", "dry_run=true", "cluster.mem_gb=16",
                "cluster.job_name=${cluster.name}-${cluster.partition}", "+cluster.env.FLAG=true",
                "+cluster.env.N=3", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in ("#SBATCH --mem=16G\n", "#SBATCH --job-name=local_slurm-debug\n",
                 "export FLAG=true\n", "export N=3\n"):
        assert line in proc.stdout, proc.stdout


@pytest.mark.slurm
@pytest.mark.timeout(200)
def test_health_stage_runs_through_slurm_and_names_the_slow_rank(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    proc = _cli("cluster=local_slurm", "check=health", "health.sizes=[256KiB]",
                "fault.slow_rank=5", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    health = json.loads((run_dir / "report.json").read_text())["health"]
    assert 5 in health["suspects"]["ranks"], health["suspects"]
    assert health["headline"] in proc.stdout
