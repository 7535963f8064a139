"""What every rank runs, locally or on Slurm: init, build, verify, report.

`run_rank` is the single code path of a rank. The launchers only differ in how they start the
processes and how a rank finds the rendezvous (a TCPStore handed over, or MASTER_ADDR/PORT).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .group_factory import world_factory
from .layout_oracle import expected_layout
from .mimo_builder import build_mimo_groups
from .mimo_config import MimoParallelismConfig
from .report import Report, write_report
from .verify import verify


@dataclass
class RankJob:
    """Everything a rank needs to run; picklable, so Slurm tasks receive it as is.

    `expected` verifies against another layout than the one built (to show the verifier fails).
    """

    layout: MimoParallelismConfig
    world_size: int
    run_dir: str
    timeout_s: float = 60.0
    device: str = "cpu"  # 'cpu' (gloo) or 'cuda' (nccl, one GPU per rank)
    expected: MimoParallelismConfig | None = None
    extra: dict = field(default_factory=dict)

    @property
    def backend(self) -> str:
        return "nccl" if self.device == "cuda" else "gloo"


def node_name() -> str:
    """The node this rank runs on: Slurm's node name where there is one, else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def module_summary(layout: MimoParallelismConfig) -> dict[str, dict]:
    """Per module: its sizes and rank range, for the report."""
    out = {}
    for name, mod in layout.module_parallelisms.items():
        out[name] = {
            "shape": {"tp": mod.tensor_model_parallel_size, "cp": mod.context_parallel_size,
                      "etp": mod.expert_tensor_parallel_size,
                      "pp": mod.pipeline_model_parallel_size, "dp": mod.data_parallel_size},
            "first_rank": mod.rank_offset, "end_rank": mod.rank_offset + mod.size,
        }
    return out


def init_distributed(rank: int, world_size: int, backend: str, timeout_s: float,
                     store=None, init_method: str | None = None, local_rank: int = 0) -> None:
    """Join the world (through `store` or `init_method`) and wait for every rank.

    With nccl, binds to GPU `local_rank` first. `timeout_s` bounds every later group creation
    and collective as well.
    """
    timeout = timedelta(seconds=timeout_s)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    os.environ["WORLD_SIZE"] = str(world_size)  # HyperCommGrid reads it
    os.environ["RANK"] = str(rank)
    kwargs = {"store": store} if store is not None else {"init_method": init_method}
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout,
                            **kwargs)
    world_factory(timeout=timeout)
    dist.barrier()


def run_rank(job: RankJob, rank: int, local_rank: int = 0, store=None,
             init_method: str | None = None) -> int:
    """Run one rank to the end; return its exit code (0 pass, 1 mismatch).

    Rendezvous through `store` (a TCPStore client) or `init_method` (e.g. tcp://host:port).
    Rank 0 writes report.json into `job.run_dir`.
    """
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    init_distributed(rank, job.world_size, job.backend, job.timeout_s, store, init_method,
                     local_rank)
    t_init = time.perf_counter() - t0
    layout = job.layout.validate(job.world_size)
    groups = build_mimo_groups(layout)
    expected = expected_layout(job.expected or layout, job.world_size)
    verdict, t_verify = verify(groups, expected, node_name())
    if rank == 0:
        report = Report(
            passed=verdict.passed, world_size=job.world_size, backend=job.backend,
            mismatches=[vars(m) for m in verdict.mismatches],
            timings={"init": t_init, **groups.timings, "verification": t_verify},
            modules=module_summary(layout), hosts=verdict.hosts,
            new_group_calls=groups.new_group_calls)
        write_report(Path(job.run_dir), report)
    groups.destroy()
    dist.destroy_process_group()
    return 0 if verdict.passed else 1
