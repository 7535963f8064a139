"""What every rank runs, locally or on Slurm: init, build, verify, report.

`run_rank` is the single code path of a rank. The launchers only differ in how they start the
processes and how a rank finds the rendezvous (a TCPStore handed over, or MASTER_ADDR/PORT).
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .. import compat
from ..checks.health_stage import run_health_stage
from ..checks.verify import verify
from ..entrypoint import EntrypointContext, resolve_entrypoint, run_entrypoint
from ..errors import EXIT_MISMATCH, EXIT_PASSED
from ..groups.pg_collections import process_group_collection_class, process_group_collections
from ..layout.layout_oracle import expected_layout
from ..mimo_builder import build_mimo_groups
from ..rank.phases import (
    ENTRYPOINT_PHASE,
    HEALTH_PHASE,
    TEARDOWN_PHASE,
    PhaseTracker,
    teardown_failure,
)
from ..rank.rank_job import RankJob
from ..reports.report import (
    Report,
    failure_report,
    keep_rank0_report,
    module_summary,
    read_rank0_report,
)

# Rank 0 waits for the other ranks' teardown this much longer than their own bound
# (`timeout_s`, then SIGALRM 1 + 5 s later: phases.TeardownWatchdog), so they end themselves first.
TEARDOWN_WAIT_EXTRA_S = 8.0


def node_name() -> str:
    """The node this rank runs on: Slurm's node name where there is one, else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def tcp_store(rank: int, world_size: int, host: str, port: int, timeout_s: float):
    """The run's rendezvous store: rank 0 hosts it on `host:port`, the others connect."""
    return dist.TCPStore(host, port, world_size, is_master=(rank == 0),
                         timeout=timedelta(seconds=timeout_s), wait_for_workers=False)


def rank_environment(rank: int, world_size: int, local_rank: int, master_addr: str,
                     master_port: int) -> dict[str, str]:
    """The variables torchrun gives a worker. Every launcher puts them in its ranks'
    environment (torchrun itself, `slurm_task.run_task`, the local launcher's forks) for the
    user's entry point and for megatron-core's HyperCommGrid, which takes WORLD_SIZE from the
    environment before torch.distributed's world size (`init_distributed` checks they agree)."""
    return {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(local_rank),
            "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port)}


def init_distributed(rank: int, world_size: int, backend: str, timeout_s: float, store,
                     local_rank: int = 0) -> None:
    """Join the world through `store`; with nccl, bind to GPU `local_rank` first.

    `timeout_s` bounds the collectives of the default group; the builder is given it too.
    Raises RuntimeError where the environment's WORLD_SIZE (`rank_environment`) is another
    world's: HyperCommGrid would size every grid by it.
    """
    stated = os.environ.get("WORLD_SIZE")
    if stated is not None and stated != str(world_size):
        raise RuntimeError(f"WORLD_SIZE={stated} in this rank's environment, but the world has "
                           f"{world_size} ranks: HyperCommGrid would size its grids by it")
    timeout = timedelta(seconds=timeout_s)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                            timeout=timeout)


def run_rank(job: RankJob, rank: int, store, local_rank: int = 0, on_phase=None,
             on_teardown_overdue=None) -> int:
    """Run one rank to the end; return its exit code (0 pass, 1 mismatch).

    With `job.entrypoint`, the groups are verified as they sit in each module's
    ProcessGroupCollection and, once verification has passed, the entry point runs
    (`entrypoint.run_entrypoint`). Raises on any failure, after leaving the error in `store`
    (rank 0 also records its failure). Rank 0 keeps its report current in `job.run_dir`
    (`report.keep_rank0_report`: the hand-off to the launcher, or report.json).
    `on_phase(name)` is called as the rank enters each phase (`PhaseTracker`). A teardown
    still running `job.timeout_s` seconds after it began ends the process with
    `errors.EXIT_TEARDOWN_OVERDUE`, after `on_teardown_overdue()` (`TeardownWatchdog`).
    """
    torch.set_num_threads(1)
    tracker = PhaseTracker(store, rank, job.world_size, job.timeout_s, job.fault,
                           on_enter=on_phase)

    def fail(exc: BaseException) -> None:
        tracker.record_failure(exc)
        if rank == 0:
            _write_failure(job, tracker, exc)

    try:
        layout = job.layout  # resolved for the world (RankJob)
        function = None
        compat.load_hypercomm_grid()  # imports before the first barrier, not inside one
        if job.entrypoint:  # (seconds: megatron-core's package init)
            function = resolve_entrypoint(job.entrypoint, job.entrypoint_dir)
            process_group_collection_class()
        with tracker.phase("init"):
            init_distributed(rank, job.world_size, job.backend, job.timeout_s, store,
                             local_rank)
        groups = build_mimo_groups(layout, phase=tracker.phase,
                                   timeout=timedelta(seconds=job.timeout_s))
        with tracker.phase("verify"):
            checked = process_group_collections(groups) if function else groups
            expected = expected_layout(job.expected or layout, job.world_size)
            verdict, _ = verify(checked, expected, node_name(), job.timeout_s)
    except Exception as exc:
        fail(exc)
        raise
    report = Report(
        passed=verdict.passed, world_size=job.world_size, backend=job.backend,
        mismatches=[vars(m) for m in verdict.mismatches], timings=dict(tracker.timings),
        modules=module_summary(layout), hosts=verdict.hosts,
        new_group_calls=groups.new_group_calls, member_new_group_calls=groups.member_calls,
        entrypoint=job.entrypoint, skipped_checks=verdict.skipped,
        verify_against=job.verify_against)
    if rank == 0:
        keep_rank0_report(job, report)
    if verdict.passed and job.health is not None:
        try:
            report.health = run_health_stage(job, layout, groups, tracker, verdict.hosts)
        except Exception as exc:
            fail(exc)
            raise
        if rank == 0:
            report.timings = dict(tracker.timings)
            keep_rank0_report(job, report)
    if verdict.passed and function is not None:
        context = EntrypointContext(rank, job.world_size, Path(job.run_dir), layout, checked)
        try:
            run_entrypoint(job.entrypoint, function, context, tracker,
                           job.entrypoint_timeout_s, fail)
        except Exception as exc:
            fail(exc)
            raise
        if rank == 0:
            report.timings = dict(tracker.timings)
            report.entrypoint_finished = True
            keep_rank0_report(job, report)
    with tracker.teardown(on_teardown_overdue):
        groups.destroy()
        dist.destroy_process_group()
    if rank == 0:  # the verdict stands; a rank ended in teardown is named beside it
        stragglers = tracker.teardown_stragglers(job.timeout_s + TEARDOWN_WAIT_EXTRA_S)
        if stragglers:
            keep_rank0_report(job, failure_report(
                job, report, teardown_failure(stragglers, job.timeout_s), TEARDOWN_PHASE,
                stragglers))
    return EXIT_PASSED if verdict.passed else EXIT_MISMATCH


def _write_failure(job: RankJob, tracker: PhaseTracker, exc: BaseException) -> None:
    """Rank 0's report of its own failure; in the entry point it keeps the verification's."""
    after_verify = tracker.current in (HEALTH_PHASE, ENTRYPOINT_PHASE)
    report = read_rank0_report(job) if after_verify else None
    ranks = getattr(exc, "missing", None) or ([0] if after_verify else [])
    report = failure_report(job, report, str(exc), tracker.current, ranks)
    report.timings = dict(tracker.timings)
    keep_rank0_report(job, report)
