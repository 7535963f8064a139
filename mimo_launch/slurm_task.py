"""One Slurm task is one rank: rendezvous from Slurm's variables, then the local ranks' code path.

`run_task(job)` is what submitit runs in every task of the job `slurm_launcher` submits.
`python -m mimo_launch.slurm_task [OVERRIDE ...]` is the same for sbatch scripts: it composes the
config like `mimo-launch` (same overrides; `hydra.run.dir` is taken as is so that every task
agrees on it, default `outputs/slurm-<job id>`), checks that the allocation has the layout's
world size (exit 2), runs the rank, and rank 0 prints the report. Exit codes: rank 0 the
report's (0 pass, 1 mismatch), other ranks 0 once they are done; 3 on a failure, every rank;
124 a rank whose teardown overran `timeout_s` (`phases.TeardownWatchdog`).

Both take rank, world size and local rank from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, the
master address from the first node of the step (SLURM_STEP_NODELIST, else SLURM_JOB_NODELIST)
and the port from the job id (an inherited MASTER_ADDR / MASTER_PORT is overwritten, not read),
bind to GPU `local_rank` with nccl, and call `rank_runner.run_rank`. Each task writes its output
to `<run dir>/logs/rank<N>.log` (the local launcher's layout) and its phase and ending to
`<run dir>/status/rank<N>.json` (`rank_status`). SIGTERM (scancel, or a task that failed under
`--kill-on-bad-exit=1`) ends a task at once with code 3; rank 0 first writes a diagnosis to
report.json, unless a report is already there (other than one still waiting for the entry
point to finish).

`python -m mimo_launch.slurm_task --check-tasks=N [OVERRIDE ...]` only composes the config and
checks that N tasks hold the layout's world size (exit 0, or 2 with one line): the sbatch
script runs it once before srun, so that a wrong-sized allocation exits 2, not with whatever
srun makes of every task refusing at once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import usage_error

# The signal Slurm sends the tasks before the time limit (sbatch `--signal`,
# `slurm_submit.warning_params`). submitit asks for USR2, which ends a task that has not yet
# installed a handler, and Slurm may send it up to 60 s early: with a short limit, at a healthy
# job's start. SIGURG is ignored by default; `run_task` logs it once its handler is in.
WARNING_SIGNAL = signal.SIGURG

# Rendezvous ports 20000-31999: below Linux's ephemeral range (32768-60999 by default), where any
# outgoing connection on the node may hold a port for a while.
PORT_BASE = 20000
PORT_SPAN = 12000


@dataclass(frozen=True)
class SlurmRank:
    """Where this task sits in its job."""

    rank: int
    world_size: int
    local_rank: int
    job_id: int
    master_addr: str
    master_port: int


def first_node(nodelist: str) -> str:
    """The first host of a Slurm node list ('n[1-2],gpu7' -> 'n1'), via scontrol if present."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    match = re.match(r"([^,\[]+)(?:\[(\d+))?", nodelist)  # fallback: prefix + first number
    if not match:
        raise RuntimeError(f"cannot read the first node of SLURM_JOB_NODELIST={nodelist!r}")
    return match.group(1) + (match.group(2) or "")


def master_port(job_id: int) -> int:
    """A port derived from the job id, so concurrent jobs on shared nodes do not collide:
    `PORT_BASE + job_id % PORT_SPAN` (20000-31999), or `MIMO_MASTER_PORT` where set."""
    override = os.environ.get("MIMO_MASTER_PORT")
    return int(override) if override else PORT_BASE + job_id % PORT_SPAN


def slurm_rank(env=None) -> SlurmRank:
    """This task's place from Slurm's variables (the step's: rank, task count and nodes of the
    srun step, which may be part of the allocation); RuntimeError outside a Slurm task."""
    env = os.environ if env is None else env
    missing = [k for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_JOB_NODELIST")
               if k not in env]
    if missing:
        raise RuntimeError(f"not inside a Slurm task ({', '.join(missing)} not set): run this "
                           f"through srun, or use mimo-launch")
    job_id = int(env["SLURM_JOB_ID"])
    # the step's nodes: a step on part of the allocation (srun -w n3,n4) has rank 0 on n3
    nodes = env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"]
    return SlurmRank(rank=int(env["SLURM_PROCID"]), world_size=int(env["SLURM_NTASKS"]),
                     local_rank=int(env.get("SLURM_LOCALID", 0)), job_id=job_id,
                     master_addr=first_node(nodes), master_port=master_port(job_id))


def run_task(job) -> int:
    """Run this Slurm task as rank SLURM_PROCID of `job` (a RankJob); return run_rank's code.

    Raises on failure, like run_rank. The allocation must have `job.world_size` tasks.
    """
    from .rank.rank_runner import rank_environment
    from .rank.task_entry import log_to_rank_file, run_rank_task

    me = slurm_rank()
    if me.world_size != job.world_size:
        raise RuntimeError(f"the job has {me.world_size} tasks but the layout's world size is "
                           f"{job.world_size}")
    # torchrun's variables (inherited values replaced)
    os.environ.update(rank_environment(me.rank, me.world_size, me.local_rank, me.master_addr,
                                       me.master_port))
    log_to_rank_file(Path(job.run_dir), me.rank)
    # Slurm's time-limit warning (WARNING_SIGNAL; USR2 where a site sends submitit's own, whose
    # handler would end a task that cannot checkpoint): logged, no more. The limit itself still
    # ends the job (SIGTERM), and timeout_s bounds every phase.
    for warning in (WARNING_SIGNAL, signal.SIGUSR2):
        signal.signal(warning, lambda signum, _: print(
            f"rank {me.rank}: Slurm's time-limit warning ({signal.Signals(signum).name}); "
            f"going on", flush=True))
    return run_rank_task(job, me.rank, me.local_rank, "Slurm",
                         lambda: rendezvous_store(me, job.timeout_s),
                         (me.master_addr, me.master_port))


def rendezvous_store(me: SlurmRank, timeout_s: float):
    """The job's TCPStore on rank 0's node (`rank_runner.tcp_store`). Raises RuntimeError naming
    the port and `MIMO_MASTER_PORT` when rank 0 cannot listen on it (another process holds it)."""
    import torch.distributed as dist

    from .rank.rank_runner import tcp_store

    try:
        return tcp_store(me.rank, me.world_size, me.master_addr, me.master_port, timeout_s)
    except dist.DistNetworkError as exc:
        if me.rank != 0 or "EADDRINUSE" not in str(exc):
            raise
        raise RuntimeError(f"rank 0 cannot listen on port {me.master_port} of {me.master_addr}: "
                           f"another process holds it; set MIMO_MASTER_PORT to a free port "
                           f"(e.g. cluster.env.MIMO_MASTER_PORT=29500)") from None


def main(argv: list[str] | None = None) -> int:
    """The sbatch entry point (see the module docstring); returns the task's exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    check = [a for a in args if a.startswith("--check-tasks=")]
    args = [a for a in args if a not in check]
    if check:
        tasks = check[-1].partition("=")[2]
        me = None
    else:
        try:
            me = slurm_rank()
        except RuntimeError as exc:
            return usage_error(str(exc), prog="mimo_launch.slurm_task")
        tasks = me.world_size
        if not any(a.startswith("hydra.run.dir=") for a in args):
            args.append(f"hydra.run.dir=outputs/slurm-{me.job_id}")
    from .rank.rank_job import rank_job
    from .rank.task_entry import finish_task, task_settings

    found = task_settings("mimo_launch.slurm_task", me is None or me.rank == 0, args, tasks,
                          f"the allocation has {tasks} tasks (SLURM_NTASKS: nodes x "
                          f"ntasks-per-node)")
    if isinstance(found, int) or me is None:
        return found if isinstance(found, int) else 0
    settings, device = found
    job = rank_job(settings, device=device, launcher_concludes=False)  # rank 0 concludes
    return finish_task(me.rank, settings, lambda: run_task(job))


if __name__ == "__main__":
    sys.exit(main())
