"""Dispatch validated settings to the launcher the cluster config names
(`launchers.interface`): its checks and the run directory first, then its run."""

from __future__ import annotations

from dataclasses import replace

from ..launchers.interface import launcher_for
from ..settings.app_config import LaunchSettings


def claim_output(settings: LaunchSettings) -> LaunchSettings:
    """Before anything starts: check that the launcher can run the layout (the local
    machine's or the Slurm allocation; UsageError), then claim the run directory
    (`run_dir.claim_run_dir`: `hydra.run.dir`, or `-2`, `-3`... if an earlier run holds it;
    RunDirError if it cannot be written). A Slurm dry run and a plan without its picture
    write nothing and claim nothing. Returns the settings with the claimed `run_dir`."""
    from ..settings.run_dir import claim_run_dir

    if settings.config.mode == "run":
        launcher = launcher_for(settings)
        launcher.check(settings)
        if not launcher.claims(settings):
            return settings
    elif not settings.plan.picture:
        return settings
    return replace(settings, run_dir=claim_run_dir(settings.run_dir))


def launch(settings: LaunchSettings) -> int:
    """Run the job with the launcher `cluster.launcher` names; return the process exit code.
    `settings` come from `claim_output` (allocation checked, run directory claimed)."""
    from ..app.interrupts import deferred

    with deferred():  # native imports: a signal there would abort (interrupts.deferred)
        run = launcher_for(settings).load()
    return run(settings)
