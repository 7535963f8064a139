"""Dispatch validated settings to the launcher the cluster config names."""

from __future__ import annotations

import sys
from dataclasses import replace

from ..errors import EXIT_USAGE
from ..rank.rank_job import rank_job
from ..settings.app_config import LaunchSettings, UsageError, check_health_memory


def check_local_allocation(settings: LaunchSettings) -> None:
    """The ranks this machine will start must be the layout's world (and fit its GPUs)."""
    limit = settings.cluster.get("max_ranks")
    if limit is not None and settings.world_size > limit:
        raise UsageError(f"cluster=local starts one process per rank: {settings.world_size} ranks "
                         f"exceed cluster.max_ranks={limit} (mode=plan shows the layout; run it "
                         f"on a cluster)")
    nproc = settings.cluster.get("nproc")
    if nproc is not None and nproc != settings.world_size:
        raise UsageError(f"cluster.nproc={nproc} ranks but the layout's world size is "
                         f"{settings.world_size}")
    check_health_memory(settings, settings.world_size)
    if settings.device == "cuda":
        from ..settings.app_config import gpu_count

        gpus = gpu_count()
        if gpus < settings.world_size:
            raise UsageError(f"the layout needs {settings.world_size} GPUs (one per rank) but "
                             f"this machine has {gpus}")


def claim_output(settings: LaunchSettings) -> LaunchSettings:
    """Before anything starts: check that the launcher can run the layout (the local
    machine's or the Slurm allocation; UsageError), then claim the run directory
    (`run_dir.claim_run_dir`: `hydra.run.dir`, or `-2`, `-3`... if an earlier run holds it;
    RunDirError if it cannot be written). A Slurm dry run and a plan without its picture
    write nothing and claim nothing. Returns the settings with the claimed `run_dir`."""
    from ..settings.run_dir import claim_run_dir

    config = settings.config
    if config.mode == "run":
        if config.cluster.get("launcher") == "torchrun":
            raise UsageError("cluster=torchrun: torchrun starts the ranks; run `torchrun "
                             "--nnodes=N --nproc-per-node=M ... -m mimo_launch.torchrun_task "
                             "[OVERRIDE ...]` on every node (README: torchrun)")
        if config.cluster.get("launcher") == "slurm":
            from ..launchers.slurm_submit import allocation, check_paths

            allocation(settings)
            check_paths(settings)
            if config.get("dry_run"):
                return settings
        else:
            check_local_allocation(settings)
    elif not settings.plan.picture:
        return settings
    return replace(settings, run_dir=claim_run_dir(settings.run_dir))


def launch(settings: LaunchSettings) -> int:
    """Run the job where `cluster.launcher` says; return the process exit code. `settings`
    come from `claim_output` (allocation checked, run directory claimed)."""
    launcher = settings.cluster.get("launcher")
    if launcher == "slurm":
        from ..app.interrupts import deferred, held, one_run

        with deferred():  # native imports: a signal there would abort (interrupts.deferred)
            from ..launchers.slurm_launcher import launch_slurm
        from ..reports.artifacts import artifacts_after

        with one_run():  # from the job's end on, signals are held: the verdict stands
            code = launch_slurm(settings)
            with held(lasting=True) as came:
                artifacts_after(settings, came)
        return code
    if launcher != "local":
        print(f"mimo-launch: error: unknown cluster.launcher {launcher!r}", file=sys.stderr)
        return EXIT_USAGE
    from ..app.interrupts import deferred

    with deferred():  # native imports: a signal there would abort (interrupts.deferred)
        from ..launchers.local_launcher import launch_local

        if settings.entrypoint:  # megatron-core's package init once here, not in every rank
            from ..groups.pg_collections import process_group_collection_class

            process_group_collection_class()

    print(f"mimo-launch: {settings.world_size} ranks on this machine "
          f"({'NCCL on GPUs' if settings.device == 'cuda' else 'gloo on CPU'}); "
          f"output in {settings.run_dir}", flush=True)
    from ..app.interrupts import held, one_run
    from ..reports.artifacts import finish_run
    from ..reports.console import PhaseProgress
    from ..reports.rankmap import warm_up

    with one_run():  # from the ranks' end on, signals are held: the verdict stands
        with PhaseProgress(settings.world_size, on_first_tick=warm_up) as progress:
            report = launch_local(rank_job(settings), on_tick=progress)
            with held(lasting=True) as came:
                progress.finish(report)
        finish_run(settings, report, came)  # verdict, then report.md and the rank map
    return report.exit_code
