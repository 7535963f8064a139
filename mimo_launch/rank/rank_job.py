"""The resolved run spec every rank runs from (`RankJob`), and how the launcher side makes it
from its settings (`rank_job`). No torch here: the CLI makes the spec before any rank starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..mimo_config import MimoParallelismConfig
from ..rank.phases import FaultSpec
from ..settings.health_config import HealthSettings

if TYPE_CHECKING:
    from ..settings.app_config import LaunchSettings


@dataclass(frozen=True)
class RankJob:
    """Everything a rank needs to run, resolved once by the launcher side (`rank_job`) and
    frozen; picklable, so Slurm and torchrun tasks receive it as is.

    `layout` is resolved here for `world_size`, once (every DP filled in;
    `MimoParallelismConfig.validate`, MimoConfigError if it does not fit).
    `expected` verifies against another layout than the one built (to show the verifier fails),
    the preset `verify_against` (recorded in the report);
    `fault` makes one rank die or hang in one phase (rehearsals and tests); `entrypoint`
    ('pkg.module:function', resolved from `entrypoint_dir` first) runs after a passing
    verification, each rank's call bounded by `entrypoint_timeout_s`; `health` (check=health)
    runs the health stage after a passing verification, before the entry point.
    `launcher_concludes`: a launcher (local, Slurm) writes report.json once, from the report
    rank 0 hands over; False where rank 0 concludes the run itself (sbatch scripts, torchrun,
    the sweep plugin's jobs: `reports.report.rank0_report_name`).
    """

    layout: MimoParallelismConfig
    world_size: int
    run_dir: str
    timeout_s: float = 60.0
    device: str = "cpu"  # 'cpu' (gloo) or 'cuda' (nccl, one GPU per rank)
    expected: MimoParallelismConfig | None = None
    fault: FaultSpec = field(default_factory=FaultSpec)
    entrypoint: str | None = None
    entrypoint_dir: str | None = None
    entrypoint_timeout_s: float = 600.0
    health: HealthSettings | None = None
    verify_against: str | None = None  # the preset `expected` comes from, for the report
    launcher_concludes: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout", self.layout.validate(self.world_size))

    @property
    def stages_bound_s(self) -> float:
        """Seconds the stages after verification may take: entry point and health stage."""
        return ((self.entrypoint_timeout_s if self.entrypoint else 0.0)
                + (self.health.bound_s() + self.timeout_s if self.health else 0.0))

    @property
    def backend(self) -> str:
        return "nccl" if self.device == "cuda" else "gloo"


def rank_job(settings: LaunchSettings, device: str | None = None,
             launcher_concludes: bool = True) -> RankJob:
    """The spec of the run `settings` describe; `device` ('cpu' or 'cuda') where the launcher
    resolved it itself (Slurm, torchrun: `settings.device` may be 'auto' there);
    `launcher_concludes` False for the entry points where rank 0 concludes the run."""
    return RankJob(layout=settings.layout, world_size=settings.world_size,
                   run_dir=str(settings.run_dir), timeout_s=settings.timeout_s,
                   device=settings.device if device is None else device,
                   expected=settings.expected, fault=settings.fault,
                   entrypoint=settings.entrypoint, entrypoint_dir=settings.entrypoint_dir,
                   entrypoint_timeout_s=settings.entrypoint_timeout_s, health=settings.health,
                   verify_against=settings.config.get("verify_against") or None,
                   launcher_concludes=launcher_concludes)
