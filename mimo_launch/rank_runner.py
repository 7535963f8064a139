"""What every rank runs, locally or on Slurm: init, build, verify, report.

`run_rank` is the single code path of a rank. The launchers only differ in how they start the
processes and how a rank finds the rendezvous (a TCPStore handed over, or MASTER_ADDR/PORT).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .layout_oracle import expected_layout
from .mimo_builder import build_mimo_groups
from .mimo_config import MimoParallelismConfig
from .phases import FaultSpec, PhaseTracker
from .report import Report, module_summary, write_report
from .verify import verify


@dataclass
class RankJob:
    """Everything a rank needs to run; picklable, so Slurm tasks receive it as is.

    `expected` verifies against another layout than the one built (to show the verifier fails);
    `fault` makes one rank die or hang in one phase (rehearsals and tests).
    """

    layout: MimoParallelismConfig
    world_size: int
    run_dir: str
    timeout_s: float = 60.0
    device: str = "cpu"  # 'cpu' (gloo) or 'cuda' (nccl, one GPU per rank)
    expected: MimoParallelismConfig | None = None
    fault: FaultSpec = field(default_factory=FaultSpec)

    @property
    def backend(self) -> str:
        return "nccl" if self.device == "cuda" else "gloo"


def node_name() -> str:
    """The node this rank runs on: Slurm's node name where there is one, else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def tcp_store(rank: int, world_size: int, host: str, port: int, timeout_s: float):
    """The run's rendezvous store: rank 0 hosts it on `host:port`, the others connect."""
    return dist.TCPStore(host, port, world_size, is_master=(rank == 0),
                         timeout=timedelta(seconds=timeout_s), wait_for_workers=False)


def init_distributed(rank: int, world_size: int, backend: str, timeout_s: float, store,
                     local_rank: int = 0) -> None:
    """Join the world through `store`; with nccl, bind to GPU `local_rank` first.

    `timeout_s` bounds the collectives of the default group; the builder is given it too.
    """
    timeout = timedelta(seconds=timeout_s)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    os.environ["WORLD_SIZE"] = str(world_size)  # HyperCommGrid reads it
    os.environ["RANK"] = str(rank)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                            timeout=timeout)


def report_timings(tracker: PhaseTracker) -> dict[str, float]:
    """Seconds per phase completed so far, under the report's names ('verify' is
    'verification'), for passing and failing runs alike."""
    return {("verification" if k == "verify" else k): v for k, v in tracker.timings.items()}


def run_rank(job: RankJob, rank: int, store, local_rank: int = 0) -> int:
    """Run one rank to the end; return its exit code (0 pass, 1 mismatch).

    Raises on any failure, after leaving the error in `store` (rank 0 also writes a failed
    report.json). Rank 0 writes report.json into `job.run_dir`.
    """
    torch.set_num_threads(1)
    tracker = PhaseTracker(store, rank, job.world_size, job.timeout_s, job.fault)
    layout = job.layout
    try:
        layout = job.layout.validate(job.world_size)
        with tracker.phase("init"):
            init_distributed(rank, job.world_size, job.backend, job.timeout_s, store,
                             local_rank)
        groups = build_mimo_groups(layout, phase=tracker.phase,
                                   timeout=timedelta(seconds=job.timeout_s))
        with tracker.phase("verify"):
            expected = expected_layout(job.expected or layout, job.world_size)
            verdict, _ = verify(groups, expected, node_name())
    except Exception as exc:
        tracker.record_failure(exc)
        if rank == 0:
            write_report(Path(job.run_dir), Report(
                passed=False, world_size=job.world_size, backend=job.backend,
                timings=report_timings(tracker), modules=module_summary(layout),
                failure=str(exc), failed_phase=tracker.current,
                failed_ranks=getattr(exc, "missing", None) or []))
        raise
    if rank == 0:
        write_report(Path(job.run_dir), Report(
            passed=verdict.passed, world_size=job.world_size, backend=job.backend,
            mismatches=[vars(m) for m in verdict.mismatches], timings=report_timings(tracker),
            modules=module_summary(layout), hosts=verdict.hosts,
            new_group_calls=groups.new_group_calls,
            member_new_group_calls=groups.member_calls))
    groups.destroy()
    dist.destroy_process_group()
    return 0 if verdict.passed else 1
