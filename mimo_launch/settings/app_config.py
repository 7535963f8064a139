"""From command-line overrides to validated launch settings, before any process starts.

Hydra composes `conf/` with the overrides; this module turns the result into a
`MimoParallelismConfig` and `LaunchSettings`, checking every value on the way. Every problem
raises `UsageError` (or `MimoConfigError`) with one line for the user.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from ..errors import HintedUsageError, UsageError
from ..mimo_config import SHORT_KEYS, MimoConfigError, MimoParallelismConfig, short_layout
from ..rank.phases import ENTRYPOINT_PHASE, HEALTH_PHASE, FaultSpec
from ..settings.conf_files import conf_dir
from ..settings.config_keys import FaultKeys, PlanKeys, check_keys
from ..settings.config_schema import (
    ClusterSettings,
    SchemaError,
    check_cluster,
    left_missing,
    must_be_given,
    strict_bool,
)
from ..settings.health_config import KNOWN_KEYS as HEALTH_KEYS
from ..settings.health_config import HealthSettings, check_memory, health_settings
from ..settings.hydra_errors import describe
from ..settings.inert import override_text, refuse_inert, refuse_lone_entrypoint_timeout
from ..settings.run_dir import absolute_path
from ..settings.searchpath import check_composed

DEVICES = ("auto", "cpu", "cuda")
PLAN_KEYS = tuple(f.name for f in fields(PlanKeys))
FAULT_KEYS = tuple(f.name for f in fields(FaultKeys))
MODES = ("run", "plan")  # plan: print the layout and draw it; start nothing


def compose_config(overrides: list[str]) -> DictConfig:
    """Compose `conf/config.yaml` with the overrides; Hydra's errors become one line (and a
    hint line where Hydra gives one: `HintedUsageError`)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            return cfg
    except HydraException as exc:
        line, hint = describe(exc, overrides)
        raise HintedUsageError(line, hint) from None


def layout_from(node: DictConfig) -> MimoParallelismConfig:
    """The `mimo` node (`modules`, `special_token_ids`) as a MimoParallelismConfig."""
    data = OmegaConf.to_container(node, resolve=True)
    modules = data.get("modules") or {}
    if not isinstance(modules, dict):
        raise UsageError(f"mimo.modules must map module names to layouts, got {modules!r}")
    for name, spec in modules.items():
        if not isinstance(spec, dict):
            raise UsageError(f"module '{name}': expected a mapping of {', '.join(SHORT_KEYS)}, "
                             f"got {spec!r}")
    tokens = data.get("special_token_ids") or {}
    if not isinstance(tokens, dict):
        raise UsageError(f"mimo.special_token_ids must map token names to ids, got {tokens!r}")
    return short_layout(modules, tokens)


@dataclass(frozen=True)
class LaunchSettings:
    """Everything the launchers need, validated; made once (`settings_from_config`), then
    changed only by copy (`dataclasses.replace`)."""

    layout: MimoParallelismConfig  # every DP resolved
    world_size: int
    # 'cpu' or 'cuda'; as given ('auto' too) where the ranks' own nodes decide (Slurm,
    # torchrun: `task_entry.task_device`) or nothing runs (mode=plan)
    device: str
    timeout_s: float
    run_dir: Path
    cluster: ClusterSettings  # the cluster section, typed by its launcher's schema
    config: DictConfig  # the whole composed config, for launchers that need more
    expected: MimoParallelismConfig | None = None  # verify against this layout instead
    fault: FaultSpec = field(default_factory=FaultSpec)
    plan: PlanOptions = field(default_factory=lambda: PlanOptions())  # mode=plan only
    entrypoint: str | None = None  # 'pkg.module:function' after a passing verification
    entrypoint_dir: str | None = None  # where it is imported from (the working directory)
    entrypoint_timeout_s: float = 600.0
    health: HealthSettings | None = None  # check=health: the health stage's settings


def world_size_of(cfg: DictConfig, layout: MimoParallelismConfig) -> int:
    world = cfg.mimo.get("world_size")
    if world is None:
        if any(m.data_parallel_size is None for m in layout.module_parallelisms.values()):
            raise UsageError("mimo.world_size is not set and some module has dp=null: give "
                             "mimo.world_size or every module's dp")
        world = layout.total_world_size
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise UsageError(f"mimo.world_size must be a positive integer, got {world!r}")
    return world


def gpu_count() -> int:
    """GPUs visible here, asked through NVML so that forked ranks can still use CUDA."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(requested: str, ranks_per_machine: int) -> str:
    """'cpu' or 'cuda'. `auto` takes GPUs only where each of the ranks this machine runs gets
    one; an explicit `cuda` without any GPU is refused here (a count mismatch is refused by the
    launcher, which knows how many ranks it starts)."""
    if requested not in DEVICES:
        raise UsageError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "cpu":
        return "cpu"
    gpus = gpu_count()
    if requested == "cuda":
        if gpus == 0:
            raise UsageError("device=cuda but no GPU is visible on this machine (use device=cpu)")
        return "cuda"
    return "cuda" if gpus >= ranks_per_machine else "cpu"


MAX_TIMEOUT_S = 7 * 24 * 3600
# The shortest timeout: it bounds the TCPStore rendezvous and every group creation too, which
# take tens of milliseconds on an idle machine and more on a busy one; below a second a run
# fails on its own start-up, not on a hang.
MIN_TIMEOUT_S = 1


def check_timeout(value, name: str = "timeout_s") -> float:
    """`timeout_s` (or the setting `name`) as seconds: a finite number in [1 s, one week]."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not MIN_TIMEOUT_S <= value <= MAX_TIMEOUT_S):
        raise UsageError(f"{name} must be a number of seconds in [{MIN_TIMEOUT_S}, "
                         f"{MAX_TIMEOUT_S}], got {value!r}")
    return float(value)


def entrypoint_from(value) -> tuple[str | None, str | None]:
    """`entrypoint` as ('pkg.module:function', the directory it is imported from), or
    (None, None) when unset. The function is imported here, before any rank starts; a bad
    value raises UsageError (one line)."""
    if value is None or value == "":
        return None, None
    from ..entrypoint import EntrypointError, resolve_entrypoint

    search_dir = os.getcwd()
    try:
        resolve_entrypoint(value, search_dir)
    except EntrypointError as exc:
        raise UsageError(str(exc)) from None
    return value, search_dir


def preset_layout(name: str, world_size: int) -> MimoParallelismConfig:
    """A layout preset of `conf/mimo/` by its name (a file stem there, never a path),
    validated for `world_size` ranks."""
    presets = {p.stem: p for p in (conf_dir() / "mimo").glob("*.yaml")}
    if name not in presets:
        raise UsageError(f"verify_against: no mimo preset {name!r}; available: "
                         f"{', '.join(sorted(presets))}")
    node = OmegaConf.load(presets[name])
    try:
        return layout_from(node).validate(world_size)
    except (MimoConfigError, UsageError) as exc:  # the preset does not fit, not the layout
        own = node.get("world_size")
        raise UsageError(f"verify_against={name}: the preset "
                         f"{f'is a {own}-rank layout and ' if own else ''}does not fit this "
                         f"run's world of {world_size} ranks ({exc})") from None


def section(node, name: str, known: tuple[str, ...]) -> dict:
    """A config node as a plain dict; a non-mapping is refused. (Its keys were checked with the
    whole config's, `config_keys.check_keys`, before any section is read.)"""
    if node is not None and not isinstance(node, DictConfig):
        raise UsageError(f"{name} must be a mapping of {', '.join(known)}, got {node!r}")
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def fault_from(data: dict, world_size: int) -> FaultSpec:
    """The `fault` section (`section`) as a FaultSpec valid for `world_size` ranks."""
    try:
        return FaultSpec(**data).validate(world_size)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def overridden(overrides: list[str], key: str) -> list[str]:
    """The command-line overrides that set `key` or a key under it (`key.x=`, `+key.x=`,
    `~key.x`...), as given."""
    found = []
    for override in overrides:
        name = override.lstrip("+~").split("=", 1)[0].strip()
        if name == key or name.startswith(f"{key}."):
            found.append(override)
    return found


def health_from(cfg: DictConfig, fault: FaultSpec,
                overrides: list[str] = ()) -> HealthSettings | None:
    """`check` and the `health` node as HealthSettings (None for check=verify); a slow-rank
    fault and `health.*` overrides need check=health, the only stage they act in (refused
    otherwise, as every setting that would silently do nothing)."""
    try:
        health = health_settings(cfg.get("check", "verify"),
                                 section(cfg.get("health"), "health", HEALTH_KEYS))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    inert = overridden(list(overrides), "health")
    if inert and health is None:
        raise UsageError(f"{inert[0]} acts in the health stage only: add check=health")
    if fault.slow_rank is not None and health is None:
        raise UsageError("fault.slow_rank acts in the health stage only: add check=health")
    if fault.active and fault.phase == HEALTH_PHASE and health is None:
        raise UsageError("fault.phase=health needs check=health (no health phase otherwise)")
    return health


@dataclass(frozen=True)
class PlanOptions:
    """`plan.*`: ranks whose groups to list, GPUs per node (None: the cluster's), picture."""

    ranks: tuple[int, ...] = ()
    gpus_per_node: int | None = None
    picture: bool = True


def plan_from(data: dict, world_size: int) -> PlanOptions:
    """The `plan` section (`section`), checked against a world of `world_size` ranks."""
    ranks = data.get("rank")
    if ranks == []:
        raise UsageError(f"plan.rank=[] names no rank: give a rank of the world "
                         f"[0, {world_size}) or a list of them, or leave plan.rank out")
    ranks = [] if ranks is None else ranks if isinstance(ranks, list) else [ranks]
    for rank in ranks:
        if isinstance(rank, bool) or not isinstance(rank, int):
            # true as written; a string in quotes, to show it is one
            shown = override_text(rank) if isinstance(rank, bool) else repr(rank)
            raise UsageError(f"plan.rank={shown} is not an integer (a rank of the world "
                             f"[0, {world_size}), or a list of them)")
        if not 0 <= rank < world_size:
            raise UsageError(f"plan.rank={rank} is not a rank of the world [0, {world_size})")
    gpus = data.get("gpus_per_node")
    if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1):
        raise UsageError(f"plan.gpus_per_node must be a positive integer, got {gpus!r}")
    try:
        picture = strict_bool(data.get("picture", True), "plan.picture")
    except SchemaError as exc:
        raise UsageError(str(exc)) from None
    return PlanOptions(tuple(ranks), gpus, picture)


def load_settings(overrides: list[str]) -> LaunchSettings:
    """Compose, convert and validate everything; raise on the first problem. Touches no file:
    `run_dir` is `hydra.run.dir` as given (every Slurm task of one job must agree on it);
    `claim_output` makes it this run's own."""
    return settings_from_config(compose_config(overrides))


def settings_from_config(composed: DictConfig, run_dir: str | Path | None = None
                         ) -> LaunchSettings:
    """Validate a composed config (with its `hydra` node, as Hydra composes it) into
    LaunchSettings; `run_dir` defaults to `hydra.run.dir`. An unknown key anywhere, a value of
    the wrong type or range, a layout breaking a rule: UsageError or MimoConfigError (one line).
    `composed` itself is not changed."""
    cfg = copy.deepcopy(composed)
    try:
        given = OmegaConf.to_container(
            OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=False)
        check_keys(given)
        missing = left_missing(given)  # OmegaConf's .get reads a ??? as None, quietly
        if missing:
            raise UsageError(must_be_given(missing[0]))
        with open_dict(cfg):
            cluster = check_cluster(cfg.cluster)
            cfg.cluster = dataclasses.asdict(cluster)  # its values, checked and converted
            for name in ("dry_run", "wait"):
                cfg[name] = strict_bool(cfg.get(name), name)
    except SchemaError as exc:
        raise UsageError(str(exc)) from None
    if cfg.mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    layout = layout_from(cfg.mimo)
    world = world_size_of(cfg, layout)
    layout = layout.validate(world)
    timeout_s = check_timeout(cfg.timeout_s)
    # On Slurm the cluster config decides (slurm_launcher), and under torchrun each worker's
    # node (torchrun_task), not this machine's GPUs.
    per_task = cfg.cluster.get("launcher") in ("slurm", "torchrun")
    planning = cfg.mode == "plan"  # nothing runs here: do not probe this machine's GPUs
    if planning and cfg.device not in DEVICES:
        raise UsageError(f"device must be one of {', '.join(DEVICES)}, got {cfg.device!r}")
    device = str(cfg.device) if per_task or planning else resolve_device(cfg.device, world)
    expected = None
    if cfg.get("verify_against"):
        expected = preset_layout(str(cfg.verify_against), world)
        if list(expected.module_parallelisms) != list(layout.module_parallelisms):
            raise UsageError(f"verify_against={cfg.verify_against}: its modules "
                             f"{list(expected.module_parallelisms)} differ from the layout's "
                             f"{list(layout.module_parallelisms)}")
    overrides = list(OmegaConf.select(cfg, "hydra.overrides.task", default=None) or [])
    plan_data = section(cfg.get("plan"), "plan", PLAN_KEYS)
    fault_data = section(cfg.get("fault"), "fault", FAULT_KEYS)
    refuse_inert(cfg, plan_data, fault_data)
    fault = fault_from(fault_data, world)
    plan = plan_from(plan_data, world)
    check_composed(cfg)  # hydra.searchpath
    health = health_from(cfg, fault, overrides)
    entrypoint, entrypoint_dir = entrypoint_from(cfg.get("entrypoint"))
    if fault.phase == ENTRYPOINT_PHASE and fault.active and not entrypoint:
        raise UsageError("fault.phase=entrypoint needs an entrypoint=pkg.module:function")
    entrypoint_timeout_s = check_timeout(cfg.get("entrypoint_timeout_s", 600),
                                         "entrypoint_timeout_s")
    refuse_lone_entrypoint_timeout(cfg)
    run_dir = absolute_path(cfg.hydra.run.dir if run_dir is None else run_dir)
    return LaunchSettings(layout, world, device, timeout_s, run_dir, cluster, cfg, expected,
                          fault, plan, entrypoint, entrypoint_dir, entrypoint_timeout_s, health)


def check_health_memory(settings: LaunchSettings, ranks: int) -> None:
    """check=health on CPU: the buffers of `ranks` ranks on this machine must fit its memory
    (`health_config.check_memory`); UsageError (one line) otherwise."""
    try:
        check_memory(settings.health, "nccl" if settings.device == "cuda" else "gloo", ranks)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


__all__ = ["HintedUsageError", "LaunchSettings", "MimoConfigError", "UsageError",
           "check_health_memory", "conf_dir", "load_settings", "settings_from_config"]
