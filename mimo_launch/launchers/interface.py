"""The one interface every launcher has, and the launchers by `cluster.launcher`.

A launcher checks, before anything starts or is written, that it can run the settings' layout
(`check`: UsageError, one line, exit 2), and runs the job (`run(settings) -> exit code`:
start or submit the ranks, follow them, print the verdict, write the report and the files
after it). `run` is imported only when a run starts (`load`): the local launcher imports torch.
The torchrun launcher is torchrun itself: its `check` says how to start it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UsageError
from ..settings.app_config import LaunchSettings, check_health_memory, gpu_count


@dataclass(frozen=True)
class Launcher:
    """`name`: the `cluster.launcher` value; `check(settings)`: raises UsageError where the
    launcher cannot run them; `run`: 'module:function' of its `run(settings) -> int`, None
    where mimo-launch does not start the ranks itself; `claims`: whether a run directory is
    claimed for `settings` (a Slurm dry run writes nothing)."""

    name: str
    check: Callable[[LaunchSettings], None]
    run: str | None
    claims: Callable[[LaunchSettings], bool] = lambda settings: True

    def load(self) -> Callable[[LaunchSettings], int]:
        """The launcher's `run(settings) -> exit code` (imports it)."""
        module, function = str(self.run).split(":")
        return getattr(importlib.import_module(module), function)


def check_local(settings: LaunchSettings) -> None:
    """The ranks this machine will start must be the layout's world (and fit its GPUs)."""
    limit = settings.cluster.max_ranks
    if limit is not None and settings.world_size > limit:
        raise UsageError(f"cluster=local starts one process per rank: {settings.world_size} ranks "
                         f"exceed cluster.max_ranks={limit} (mode=plan shows the layout; run it "
                         f"on a cluster)")
    nproc = settings.cluster.nproc
    if nproc is not None and nproc != settings.world_size:
        raise UsageError(f"cluster.nproc={nproc} ranks but the layout's world size is "
                         f"{settings.world_size}")
    check_health_memory(settings, settings.world_size)
    if settings.device == "cuda":
        gpus = gpu_count()
        if gpus < settings.world_size:
            raise UsageError(f"the layout needs {settings.world_size} GPUs (one per rank) but "
                             f"this machine has {gpus}")


def check_slurm(settings: LaunchSettings) -> None:
    """The allocation fits the layout and every path survives sbatch and pyxis
    (`slurm_submit`)."""
    from ..launchers.slurm_submit import allocation, check_paths

    allocation(settings)
    check_paths(settings)


def refuse_torchrun(settings: LaunchSettings) -> None:
    raise UsageError("cluster=torchrun: torchrun starts the ranks; run `torchrun --nnodes=N "
                     "--nproc-per-node=M ... -m mimo_launch.torchrun_task [OVERRIDE ...]` on "
                     "every node (README: torchrun)")


LAUNCHERS = {
    "local": Launcher("local", check_local, "mimo_launch.launchers.local_launcher:run_local"),
    "slurm": Launcher("slurm", check_slurm, "mimo_launch.launchers.slurm_launcher:run_slurm",
                      claims=lambda settings: not settings.config.get("dry_run")),
    "torchrun": Launcher("torchrun", refuse_torchrun, None),
}


def launcher_for(settings: LaunchSettings) -> Launcher:
    """The launcher `cluster.launcher` names; UsageError for any other value."""
    name = settings.cluster.launcher
    if name not in LAUNCHERS:
        raise UsageError(f"cluster.launcher must be one of {', '.join(LAUNCHERS)}, got {name!r}")
    return LAUNCHERS[name]


__all__ = ["LAUNCHERS", "Launcher", "launcher_for"]
