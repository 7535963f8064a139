"""One torchrun worker is one rank: `torchrun ... -m mimo_launch.torchrun_task [OVERRIDE ...]`.

For clusters without Slurm (Kubernetes' PyTorchJob, `srun torchrun`, plain `torchrun` on each
node): torchrun starts the processes and sets its documented variables (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_RUN_ID). Every worker composes the config like
`mimo-launch` with `cluster=torchrun` (same overrides), checks that WORLD_SIZE is the layout's
world size (exit 2, rank 0 says why), joins the rendezvous through torch's public `env://`
handler (`torch.distributed.rendezvous`: under a c10d rendezvous it connects to the agent's
store, else rank 0 hosts one on MASTER_ADDR:MASTER_PORT), then runs the same per-rank code as
the other launchers (`rank_runner.run_rank`). Rank 0 writes report.json and prints the verdict.

`hydra.run.dir` must be the same on every node; the default is `outputs/torchrun-<run id>`
(torchrun's `--rdzv-id`). Each worker's output goes to `<run dir>/logs/rank<N>.log` while it
runs (`task_entry.rank_log`). Exit codes: rank 0 the report's (0 pass, 1 mismatch, 4 a health
problem), other ranks 0 once done; 2 bad input; 3 a failure, on every rank; 124 a worker whose
teardown overran `timeout_s` (`phases.TeardownWatchdog`; rank 0 names it beside the verdict).
torchrun itself exits 0 or 1; report.json keeps the report's `exit_code`. When torchrun stops
the workers (SIGTERM, after one of them failed) rank 0 first writes its diagnosis to
report.json, as on Slurm.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

from .errors import EXIT_USAGE, usage_error

PROG = "mimo_launch.torchrun_task"
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class TorchrunRank:
    """Where this worker sits in the world, from torchrun's variables."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    run_id: str


def torchrun_rank(env=None) -> TorchrunRank:
    """This worker's place; RuntimeError (one line) when torchrun's variables are missing or
    not numbers."""
    env = os.environ if env is None else env
    missing = [k for k in TORCHRUN_VARS if k not in env]
    if missing:
        raise RuntimeError(f"not a torchrun worker ({', '.join(missing)} not set): start it with "
                           f"torchrun ... -m mimo_launch.torchrun_task, or use mimo-launch")
    try:
        return TorchrunRank(rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
                            local_rank=int(env["LOCAL_RANK"]), master_addr=env["MASTER_ADDR"],
                            master_port=int(env["MASTER_PORT"]),
                            run_id=env.get("TORCHELASTIC_RUN_ID") or "none")
    except ValueError as exc:
        raise RuntimeError(f"torchrun's variables are not numbers: {exc}") from None


def rendezvous_store(timeout_s: float):
    """The world's store from torch's public env:// handler (reads RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT); torchrun's agent store where torchrun provides one."""
    import torch.distributed as dist

    store, _, _ = next(dist.rendezvous("env://", timeout=timedelta(seconds=timeout_s)))
    return store


def _local_world_size() -> int:
    """Workers on this node (torchrun's LOCAL_WORLD_SIZE; 1 where it is not a number)."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def main(argv: list[str] | None = None) -> int:
    """The torchrun entry point (see the module docstring); returns the worker's exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        me = torchrun_rank()
    except RuntimeError as exc:
        return usage_error(str(exc), prog=PROG)
    if not any(a.startswith("cluster=") for a in args):
        args.insert(0, "cluster=torchrun")
    if not any(a.startswith("hydra.run.dir=") for a in args):
        args.append(f"hydra.run.dir=outputs/torchrun-{me.run_id}")
    from .rank.rank_job import rank_job
    from .rank.task_entry import finish_task, rank_log, run_rank_task, task_settings

    found = task_settings(PROG, me.rank == 0, args, me.world_size,
                          f"torchrun started {me.world_size} workers (WORLD_SIZE: nnodes x "
                          f"nproc-per-node)",
                          ranks_on_node=_local_world_size())
    if isinstance(found, int):
        return found
    settings, device = found
    if settings.cluster.launcher != "torchrun":
        message = (f"cluster={settings.cluster.name} is not a torchrun cluster (use "
                   f"cluster=torchrun, or one with launcher: torchrun)")
        return usage_error(message, prog=PROG) if me.rank == 0 else EXIT_USAGE
    job = rank_job(settings, device=device, launcher_concludes=False)  # rank 0 concludes

    def run() -> int:
        with rank_log(settings.run_dir, me.rank):  # as the other launchers' ranks
            return run_rank_task(job, me.rank, me.local_rank, "torchrun",
                                 lambda: rendezvous_store(job.timeout_s),
                                 (me.master_addr, me.master_port))

    code = finish_task(me.rank, settings, run)
    if me.rank == 0:
        from .reports.artifacts import artifacts_after

        artifacts_after(settings, [])  # report.md and the rank map, as mimo-launch writes them
    return code


if __name__ == "__main__":
    sys.exit(main())
