"""The health stage as a phase of a rank's run: measure, share, and (rank 0) analyse.

Called by `rank_runner.run_rank` after a passing verification when `check=health`. The phase
`health` starts with the named-rank barrier of every phase (`phases.PhaseTracker`), every
collective is bounded by the run's `timeout_s`, and `fault.slow_rank` acts here.
"""

from __future__ import annotations

import time

import torch.distributed as dist

from ..checks.health import HealthRun, gather_records, share_records, store_progress
from ..checks.health_report import analyse
from ..rank.phases import HEALTH_PHASE, PhaseTracker


def run_health_stage(job, layout, groups, tracker: PhaseTracker, hosts: list[str]) -> dict | None:
    """Run the stage on this rank (collective over the world). Returns the report's `health`
    section on rank 0 (None elsewhere): the settings, the stage's seconds and
    `health_report.analyse`'s rows, groups, suspects and headline. `hosts`: each rank's node,
    by rank (the verification's). Raises PhaseError / torch's errors on a failure."""
    settings, rank = job.health, tracker.rank
    fault = job.fault
    slow = fault.slow_factor if fault.slow_rank == rank else None
    with tracker.phase(HEALTH_PHASE):
        start = time.perf_counter()
        progress = store_progress(tracker.store) if rank == 0 else None
        records = HealthRun(layout, groups, settings, slow, progress, tracker).run()
        share_records(tracker.store, rank, records)
        if rank != 0:
            return None
        everything = gather_records(tracker.store, job.world_size, job.timeout_s)
        seconds = time.perf_counter() - start
    section = {"backend": dist.get_backend(), "threshold": settings.threshold,
               "fail": settings.fail, "sizes": list(settings.sizes_for(dist.get_backend())),
               "warmup": settings.warmup, "iters": settings.iters,
               "budget_s": settings.budget_s, "seconds": seconds}
    section.update(analyse(everything, hosts, settings.threshold))
    return section
