"""Submit the ranks to Slurm with submitit, follow the job, print the report rank 0 wrote.

The submitting process (a login node; it needs no GPU) checks the allocation against the layout
before anything is submitted (exit 2), submits one job of nodes x tasks_per_node tasks running
`slurm_task.run_task`, prints the job's state on each change, and ends with rank 0's
report.json and its exit code (0 pass, 1 mismatch, 3 failure, 130/143/129 Ctrl-C/SIGTERM/
SIGHUP: the job is cancelled, running or pending). It never waits on submitit's result
pickles: it reads squeue/sacct and the report.
A failed report gets the job's Slurm state, srun's task errors and the log paths appended;
where rank 0 wrote none (it crashed, the job was cancelled early), one is written here.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .app_config import DEVICES, LaunchSettings, UsageError
from .compat import sbatch_script
from .diagnosis import tail as log_tail
from .interrupts import signal_of
from .launch import rank_job
from .phases import ENTRYPOINT_PHASE
from .report import (REPORT_NAME, Report, format_summary, read_report, record_failure,
                     write_report)
from .slurm_task import PHASES_NAME

EXIT_USAGE = 2
EXIT_FAILURE = 3
POLL_S = 0.5
# After rank 0 reported a failure, how long the job may take to end by itself before scancel.
SETTLE_S = 10.0
# After scancel, how long to wait for the job to leave the nodes (Slurm's KillWait and more).
CANCEL_WAIT_S = 60.0
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
          "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}
_SRUN_ERROR = re.compile(r"srun: error: (\S+): tasks? ([\d,\-]+): (.+)")


@dataclass(frozen=True)
class Allocation:
    """What the job asks Slurm for, and the device its ranks use."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    device: str  # 'cuda' (nccl) or 'cpu' (gloo)
    time_min: int = 20  # the job's time limit, minutes


def _count(cluster, key: str, default=None, minimum: int = 1):
    value = cluster.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"cluster.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def allocation(settings: LaunchSettings) -> Allocation:
    """The allocation the cluster config asks for; UsageError unless it fits the layout."""
    cluster, world = settings.cluster, settings.world_size
    gpus = _count(cluster, "gpus_per_node", 0, minimum=0)
    tasks = _count(cluster, "tasks_per_node")
    if tasks is None:
        if not gpus:
            raise UsageError("cluster.tasks_per_node is not set and cluster.gpus_per_node=0: "
                             "give cluster.tasks_per_node")
        tasks = gpus
    if gpus and tasks != gpus:
        raise UsageError(f"cluster.tasks_per_node={tasks} but cluster.gpus_per_node={gpus}: "
                         f"each task drives one GPU (its local rank), so they must be equal")
    nodes = _count(cluster, "nodes")
    if nodes is None:
        if world % tasks:
            raise UsageError(f"the layout's world size {world} is not a multiple of "
                             f"cluster.tasks_per_node={tasks}")
        nodes = world // tasks
    if nodes * tasks != world:
        raise UsageError(f"cluster.nodes={nodes} x cluster.tasks_per_node={tasks} = "
                         f"{nodes * tasks} tasks but the layout's world size is {world}")
    requested = str(settings.device)
    if requested not in DEVICES:
        raise UsageError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "cuda" and not gpus:
        raise UsageError("device=cuda but cluster.gpus_per_node=0")
    device = "cpu" if requested == "cpu" or not gpus else "cuda"
    minutes = _count(cluster, "time_min", 20)
    if minutes is None:
        raise UsageError("cluster.time_min must be an integer >= 1 (minutes), got None")
    return Allocation(nodes, tasks, gpus, device, minutes)


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def setup_lines(cluster) -> list[str]:
    """The batch script's lines before srun: `cluster.setup`, then `export` of `cluster.env`."""
    env = cluster.get("env") or {}
    return _as_list(cluster.get("setup")) + [
        f"export {key}={shlex.quote(str(value))}" for key, value in env.items()]


def srun_args(cluster) -> list[str]:
    """srun flags: kill the step when a task fails, the pyxis container, then `srun_args`."""
    args = ["--kill-on-bad-exit=1"]
    if cluster.get("container_image"):
        args.append(f"--container-image={cluster.container_image}")
    mounts = _as_list(cluster.get("container_mounts"))
    if mounts:
        args.append(f"--container-mounts={','.join(mounts)}")
    if cluster.get("container_workdir"):
        args.append(f"--container-workdir={cluster.container_workdir}")
    return args + _as_list(cluster.get("srun_args"))


def warning_signal_s(time_min: int) -> int:
    """Seconds before the time limit at which Slurm signals the job (submitit's USR2, sbatch
    `--signal`): submitit's 90 s, but at most a quarter of the limit, so that a short limit
    (`cluster.time_min=1`) does not signal a healthy job at its start."""
    return min(90, time_min * 60 // 4)


def make_executor(settings: LaunchSettings, alloc: Allocation):
    """A submitit SlurmExecutor for the cluster config, its folder inside the run directory."""
    from submitit import SlurmExecutor

    cluster = settings.cluster
    folder = settings.run_dir / str(cluster.get("submitit_dir") or "submitit")
    try:
        executor = SlurmExecutor(folder=folder, python=cluster.get("python"))
    except RuntimeError:  # submitit looks for srun
        raise UsageError("srun not found: run mimo-launch cluster=... on a Slurm login node, "
                         "or use cluster=local") from None
    params = dict(job_name=str(cluster.get("job_name") or "mimo-launch"), nodes=alloc.nodes,
                  ntasks_per_node=alloc.tasks_per_node, time=alloc.time_min,
                  signal_delay_s=warning_signal_s(alloc.time_min),
                  setup=setup_lines(cluster), srun_args=srun_args(cluster))
    for key in ("partition", "account", "qos", "cpus_per_task"):
        if cluster.get(key) is not None:
            params[key] = cluster.get(key)
    if alloc.gpus_per_node:
        params["gpus_per_node"] = alloc.gpus_per_node
    if cluster.get("mem_gb") is not None:
        params["mem"] = cluster.mem_gb
    if cluster.get("exclusive"):
        params["exclusive"] = True
    try:
        executor.update_parameters(**params)
    except ValueError as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    return executor


def _run(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def live_state(job_id: str) -> str | None:
    """The job's state as slurmctld knows it, or None once it has forgotten the job."""
    out = _run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"])
    return out.split()[0] if out and out.split() else None


def final_state(job_id: str, tries: int = 10) -> tuple[str, str]:
    """(state, exit code) from accounting, falling back on squeue's state; 'UNKNOWN' if neither."""
    for _ in range(tries):
        out = _run(["sacct", "-X", "-n", "-P", "-o", "State,ExitCode", "-j", job_id])
        line = out.strip().splitlines()[0] if out and out.strip() else ""
        if "|" in line:
            state, code = line.split("|", 1)
            if state.split()[0] not in ACTIVE:
                return state.split()[0], code
        time.sleep(0.5)
    return live_state(job_id) or "UNKNOWN", "?"


def scancel(job_id: str) -> None:
    _run(["scancel", job_id])


def task_errors(err_log: Path) -> list[tuple[str, list[int], str]]:
    """srun's task failures from the batch log: (node, tasks, what), in order."""
    try:
        text = err_log.read_text(errors="replace")
    except OSError:
        return []
    found = []
    for node, spec, what in _SRUN_ERROR.findall(text):
        tasks = []
        for part in spec.split(","):
            low, _, high = part.partition("-")
            tasks += list(range(int(low), int(high or low) + 1))
        found.append((node, tasks, what.strip()))
    return found


@dataclass
class JobFiles:
    """Where one submitted job leaves its per-task logs (submitit's naming)."""

    folder: Path
    job_id: str

    def log(self, task: int, kind: str = "out") -> Path:
        return self.folder / f"{self.job_id}_{task}_log.{kind}"

    def describe(self) -> str:
        return (f"logs: {self.folder}/{self.job_id}_<task>_log.out|err (srun's messages in "
                f"{self.log(0, 'err')})")


def follow(job_id: str, run_dir: Path) -> tuple[bool, str | None]:
    """Wait until the job has left the nodes; print its state on each change.

    Returns (cancelled_here, the name of the signal that interrupted the launcher or None). A
    job still running SETTLE_S after rank 0 wrote a failed report is cancelled; Ctrl-C,
    SIGTERM and SIGHUP cancel it too, running or pending.
    """
    seen, failed_at, cancelled = None, None, False
    try:
        while True:
            state = live_state(job_id)
            if state and state != seen:
                print(f"mimo-launch: job {job_id} {state}", flush=True)
                seen = state
            if state is None or state not in ACTIVE:
                return cancelled, None
            if failed_at is None and (run_dir / REPORT_NAME).exists():
                report = read_report(run_dir)
                if report is not None and report.failure:
                    failed_at = time.monotonic()
            if failed_at is not None and not cancelled and \
                    time.monotonic() - failed_at > SETTLE_S:
                scancel(job_id)
                cancelled = True
            time.sleep(POLL_S)
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP (interrupts.install)
        signame = signal.Signals(signal_of(exc)).name
        print(f"mimo-launch: interrupted ({signame}), cancelling job {job_id}", flush=True)
        scancel(job_id)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while (state := live_state(job_id)) in ACTIVE and time.monotonic() < deadline:
            time.sleep(POLL_S)
        return True, signame


def _blame_the_dead(report: Report, errors, run_dir: Path) -> None:
    """When the first task srun saw end did so by a signal (not an exit code, not the SIGTERM
    Slurm sends to stop a step), blame it and the phase it was in."""
    if not errors or errors[0][2].startswith("Exited with exit code") or \
            errors[0][2] == "Terminated":
        return
    node, tasks, what = errors[0]
    try:
        phases = json.loads((run_dir / PHASES_NAME).read_text())
    except (OSError, ValueError):
        phases = {}
    phase = phases.get(str(tasks[0]))
    report.failed_ranks = tasks
    report.failed_phase = phase or report.failed_phase
    where = f" in phase '{phase}'" if phase else ""
    report.failure = (f"rank(s) {','.join(map(str, tasks))} died on {node} ({what}){where}; "
                      f"Slurm stopped the other tasks\n{report.failure}")


def conclude(job, job_id: str, files: JobFiles, interrupted: str | None) -> Report:
    """The run's report: rank 0's, completed with the Slurm facts when it is a failure."""
    run_dir = Path(job.run_dir)
    state, code = final_state(job_id)
    report = read_report(run_dir)
    errors = task_errors(files.log(0, "err"))
    if report is not None and not report.failure and state == "COMPLETED" and not interrupted:
        return report
    if report is None:
        report = Report(passed=False, world_size=job.world_size, backend=job.backend,
                        failure=f"job {job_id} ended {state} before rank 0 wrote a report")
        if errors:
            report.failed_ranks = errors[0][1]
    elif report.awaiting_entrypoint:  # rank 0 ended before it could say why
        record_failure(report, f"job {job_id} ended {state} before the entry point finished "
                               f"on every rank", ENTRYPOINT_PHASE, errors[0][1] if errors else [])
    elif not report.failure:
        if state == "COMPLETED" or not interrupted:
            return report  # rank 0's verdict stands; the job's end is noted in its logs
        report.failure = f"job {job_id} ended {state}"
    _blame_the_dead(report, errors, run_dir)
    lines = [f"slurm: job {job_id} {state} (exit code {code})"]
    lines += [f"srun: {node}: task(s) {','.join(map(str, tasks))}: {what}"
              for node, tasks, what in errors[:8]]
    for rank in report.failed_ranks[:1]:
        tail = log_tail(files.log(rank, "err"), 10) or log_tail(files.log(rank), 10)
        if tail:
            lines.append(f"last lines of {files.log(rank, 'err')}:\n{tail}")
            found = re.findall(r"phase '(\w+)'", tail)
            if report.failed_phase is None and found:
                report.failed_phase = found[-1]
    lines.append(files.describe())
    report.passed = False
    report.failure += "\n" + "\n".join(lines)
    report.interrupted, report.interrupted_by = interrupted is not None, interrupted
    write_report(run_dir, report)
    return report


def launch_slurm(settings: LaunchSettings) -> int:
    """Submit, follow and report (see the module docstring); return the exit code."""
    try:
        alloc = allocation(settings)
        executor = make_executor(settings, alloc)
    except UsageError as exc:
        print(f"mimo-launch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    job = replace(rank_job(settings), device=alloc.device)
    if settings.config.get("dry_run"):
        print(sbatch_script(executor), end="")
        return 0
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    from .slurm_task import run_task

    try:
        submitted = executor.submit(run_task, job)
    except (FailedJobError, FailedSubmissionError, subprocess.SubprocessError, OSError) as exc:
        message = " ".join(str(exc).split())[:400]
        print(f"mimo-launch: error: sbatch refused the job: {message}", file=sys.stderr)
        return EXIT_USAGE
    job_id = str(submitted.job_id)
    files = JobFiles(Path(executor.folder), job_id)
    report_path = settings.run_dir / REPORT_NAME
    backend = "NCCL on GPUs" if alloc.device == "cuda" else "gloo on CPU"
    print(f"mimo-launch: submitted job {job_id}: {alloc.nodes} node(s) x "
          f"{alloc.tasks_per_node} task(s), {backend}; output in {settings.run_dir}", flush=True)
    if not settings.config.get("wait", True):
        print(f"report: {report_path} (once job {job_id} ends; squeue -j {job_id})")
        return 0
    _, interrupted = follow(job_id, settings.run_dir)
    report = conclude(job, job_id, files, interrupted)
    print(format_summary(report))
    print(f"report: {report_path}")
    return report.exit_code
