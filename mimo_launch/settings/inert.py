"""Settings that would silently do nothing, refused before anything starts (UsageError, one
line, exit 2), wherever they come from: the command line, a preset or a site's own YAML.

A value counts as set when it differs from its key's default (`config_keys`). The rules:
- `plan.*` acts in mode=plan only;
- mode=plan starts no rank and submits nothing: `verify_against`, `fault.*`, `dry_run` and
  `wait=false` act in a run only (on any cluster);
- `dry_run` and `wait=false` act on Slurm only (cluster=local starts the ranks here);
- `entrypoint_timeout_s` acts on an `entrypoint`.
(`health.*` without check=health: `app_config.health_from`.) A fault's own settings without
its rank (`fault.phase`, `fault.slow_factor`) are not refused: a sweep such as
`fault.hang_rank=null,3 fault.phase=grids` rehearses with and without the fault.
"""

from __future__ import annotations

from dataclasses import fields

from omegaconf import DictConfig

from ..errors import UsageError
from ..settings.config_keys import AppKeys, FaultKeys, PlanKeys

_DEFAULT = AppKeys()


def override_text(value) -> str:
    """A value as one writes it in an override: true/false, null, 3, grids, [0, 9]."""
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def _set(cfg: DictConfig, key: str) -> bool:
    """The top-level `key` of `cfg` differs from its default (`config_keys.AppKeys`)."""
    return cfg.get(key, getattr(_DEFAULT, key)) != getattr(_DEFAULT, key)


def changed(data: dict, keys: type, prefix: str) -> list[str]:
    """`prefix.key=value` for each key of the schema `keys` whose value in `data` is not its
    default, in the schema's order."""
    return [f"{prefix}.{f.name}={override_text(data[f.name])}" for f in fields(keys)
            if f.name in data and data[f.name] != f.default]


def refuse_inert(cfg: DictConfig, plan: dict, fault: dict) -> None:
    """Refuse the first setting of `cfg` that would do nothing (the module docstring, but
    `refuse_lone_entrypoint_timeout`); `plan` and `fault`: those sections as plain dicts
    (`app_config.section`), checked before their values are, so that the setting's place is
    named before its value."""
    plan_set, fault_set = changed(plan, PlanKeys, "plan"), changed(fault, FaultKeys, "fault")
    if cfg.get("mode") != "plan" and plan_set:
        raise UsageError(f"{plan_set[0]} acts in mode=plan only: add mode=plan")
    if cfg.get("mode") == "plan":
        run_only = [f"verify_against={cfg.verify_against}"] if cfg.get("verify_against") else []
        run_only += fault_set + [f"{key}={override_text(cfg.get(key))}"
                                 for key in ("dry_run", "wait") if _set(cfg, key)]
        if run_only:
            raise UsageError(f"{run_only[0]} acts in a run only, and mode=plan starts no rank: "
                             f"drop one of them")
    launcher = cfg.cluster.get("launcher")
    if launcher != "slurm":
        advice = {"dry_run": "mode=plan starts nothing", "wait": "and waits for them"}
        for key in ("dry_run", "wait"):
            if _set(cfg, key):
                raise UsageError(f"{key}={override_text(cfg.get(key))} acts on Slurm only: "
                                 f"cluster={launcher} runs the ranks itself "
                                 f"({advice[key]})")


def refuse_lone_entrypoint_timeout(cfg: DictConfig) -> None:
    """`entrypoint_timeout_s` without an `entrypoint` (checked once its value is: a bad value
    is named as such first)."""
    if not cfg.get("entrypoint") and _set(cfg, "entrypoint_timeout_s"):
        raise UsageError(f"entrypoint_timeout_s={override_text(cfg.entrypoint_timeout_s)} acts "
                         f"on an entrypoint only: add entrypoint=pkg.module:function")
