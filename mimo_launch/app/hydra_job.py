"""What the command (`hydra_app`) and each point of a Slurm sweep (`submitit_sweep`) share:
the process's state across Hydra's calls, the one-line error, the checks before a launch."""

from __future__ import annotations

import io
import sys

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from ..app.launch import claim_output
from ..app.sweep import Sweep
from ..settings.app_config import LaunchSettings

PROG = "mimo-launch"


class AppState:
    """This process's state across Hydra's calls (one command per process)."""

    code: int | None = None
    settings: LaunchSettings | None = None  # a single run, validated and claimed
    sweep: Sweep | None = None
    refused: Exception | None = None  # bad input found by LaunchCallback
    stderr = None  # the real stderr while Hydra's own output is held
    held: io.StringIO | None = None
    full_error: str | None = None  # HYDRA_FULL_ERROR as the user had it

    @classmethod
    def release_stderr(cls) -> None:
        """The job starts: what Hydra wrote to stderr so far goes out, and stderr is real."""
        if cls.held is not None:
            sys.stderr = cls.stderr
            sys.stderr.write(cls.held.getvalue())
            cls.held = None


def prepare(settings: LaunchSettings) -> LaunchSettings:
    """Check what the launcher needs and claim the run directory (UsageError, ValueError).
    A plan on a Slurm cluster's nodes (no `plan.gpus_per_node`) checks the allocation as a
    run would (`slurm_submit.allocation`): it lays the ranks out on those nodes."""
    if settings.config.mode == "plan":
        from ..layout.plan import check_plan_size

        check_plan_size(settings.world_size)
        if settings.cluster.launcher == "slurm" and settings.plan.gpus_per_node is None:
            from ..launchers.slurm_submit import allocation

            allocation(settings)
    return claim_output(settings)


def with_hydra(cfg: DictConfig) -> DictConfig:
    """A job's config (Hydra passes it without `hydra`) with its `hydra` node back."""
    full = cfg.copy()
    with open_dict(full):
        full.hydra = HydraConfig.get()
    return full
