"""The keys of the top-level config and of the layout, as typed dataclasses: an unknown or
misspelt key (`+timeout=5`, `mimo.modules.language.tpp=2`, a site YAML's own typo) is refused
with one line naming it and the closest valid key (difflib).

The dataclasses are the schema of `conf/config.yaml` and `conf/mimo/*.yaml`. They fix the keys;
the values are checked with their own one-line messages by `app_config` (ranges, strict
booleans), `mimo_config` (the layout rules) and `health_config`. `cluster.*` has a schema per
launcher (`config_schema.SCHEMAS`), checked by `config_schema.check_cluster`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..settings.config_schema import SCHEMAS, SchemaError, closest, unknown_key_message


@dataclass
class ModuleKeys:
    """One module of `mimo.modules` (the short keys of `mimo_config.SHORT_KEYS`)."""

    tp: int = 1
    cp: int = 1
    etp: int = 1
    pp: int = 1
    dp: int | None = None  # null: derived where the module spans the world
    rank_offset: int = 0


@dataclass
class MimoKeys:
    """`mimo`: the layout (`conf/mimo/*.yaml`)."""

    world_size: int | None = None
    special_token_ids: dict[str, int] = field(default_factory=dict)
    modules: dict[str, ModuleKeys] = field(default_factory=dict)


@dataclass
class PlanKeys:
    rank: Any = None  # a rank or a list of ranks
    gpus_per_node: int | None = None
    picture: bool = True


@dataclass
class HealthKeys:
    sizes: list[Any] | None = None  # bytes, or '64KiB', '16MiB', '1GiB'
    warmup: int = 2
    iters: int = 10
    budget_s: float = 3.0
    threshold: float = 0.7
    fail: bool = True


@dataclass
class FaultKeys:
    kill_rank: int | None = None
    hang_rank: int | None = None
    phase: str | None = None
    where: str = "start"
    artifacts_delay_s: float = 0.0
    slow_rank: int | None = None
    slow_factor: float = 4.0


@dataclass
class AppKeys:
    """The top-level config (`conf/config.yaml`, less `hydra` and `defaults`)."""

    mode: str = "run"
    plan: PlanKeys = field(default_factory=PlanKeys)
    timeout_s: float = 30.0
    device: str = "auto"
    verify_against: str | None = None
    dry_run: bool = False
    wait: bool = True
    entrypoint: str | None = None
    entrypoint_timeout_s: float = 600.0
    check: str = "verify"
    health: HealthKeys = field(default_factory=HealthKeys)
    fault: FaultKeys = field(default_factory=FaultKeys)
    mimo: MimoKeys = field(default_factory=MimoKeys)
    cluster: Any = None  # one schema per launcher: config_schema.SCHEMAS


def _fields(schema) -> dict[str, Any]:
    return {f.name: f.type for f in dataclasses.fields(schema)}


def _dataclass_of(hint) -> type | None:
    """The dataclass a field annotation names (as a string, `from __future__`), if any."""
    return {cls.__name__: cls for cls in (PlanKeys, HealthKeys, FaultKeys, MimoKeys)}.get(hint)


def check_keys(data: Mapping) -> None:
    """Refuse the first key of `data` (the composed config as a plain dict, without `hydra`)
    that the schema does not have: top level, `plan`, `health`, `fault`, `mimo` and each module
    of `mimo.modules`. A value that is not a mapping where one is expected is left to the value
    checks. Raises SchemaError (one line, with the closest valid key)."""
    _check(data, AppKeys, "")


def _check(data: Mapping, schema, prefix: str) -> None:
    fields = _fields(schema)
    unknown = [str(key) for key in data if key not in fields]
    if unknown:
        raise SchemaError(unknown_key_message(f"{prefix}{unknown[0]}", fields,
                                              others=unknown[1:]))
    for key, value in data.items():
        path = f"{prefix}{key}"
        nested = _dataclass_of(fields[key])
        if nested is not None and isinstance(value, Mapping):
            _check(value, nested, f"{path}.")
        elif path == "mimo.modules" and isinstance(value, Mapping):
            for name, spec in value.items():
                if isinstance(spec, Mapping):
                    _check_module(str(name), spec)


def _check_module(name: str, spec: Mapping) -> None:
    known = _fields(ModuleKeys)
    for key in spec:
        if key not in known:
            raise SchemaError(unknown_key_message(f"mimo.modules.{name}.{key}", known))


def suggest_for_path(path: str) -> str | None:
    """For a dotted key that does not exist (`mimo.modules.language.tpp`, from Hydra's "Could
    not override"), the closest valid key at its place, or None. `cluster.*` is matched
    against the keys of every cluster kind."""
    parts = path.split(".")
    schema: Any = AppKeys
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if schema is None:
            return None
        if schema == "cluster":
            known = sorted({f.name for s in SCHEMAS.values() for f in dataclasses.fields(s)})
            return closest(part, known) if last and part not in known else None
        if schema == "modules":  # any module name, then a module's keys
            schema = ModuleKeys
            continue
        fields = _fields(schema)
        if last:
            return closest(part, fields) if part not in fields else None
        if part not in fields:
            return None
        if part == "cluster" and schema is AppKeys:
            schema = "cluster"
        elif part == "modules" and schema is MimoKeys:
            schema = "modules"
        else:
            schema = _dataclass_of(fields[part])
    return None


def suggest_path(path: str, modules: Iterable[str] | None = None) -> tuple[str, str] | None:
    """For a dotted key with an unknown part anywhere (`heath.iters`, `mimo.modulse.language.tp`):
    (the key up to its first unknown part, the whole key with each unknown part replaced by the
    closest valid one), or None when a part has no close match. `modules`: the module names of
    the composed layout (None: any name is taken as a module's)."""
    parts = path.split(".")
    schema: Any = AppKeys
    first = None
    for i, part in enumerate(parts):
        if schema is None:
            return None
        if schema == "cluster":
            known: list[str] = sorted({f.name for s in SCHEMAS.values()
                                       for f in dataclasses.fields(s)})
            nxt: Any = None
        elif schema == "modules":
            known, nxt = (list(modules) if modules is not None else [part]), ModuleKeys
        else:
            fields = _fields(schema)
            known, nxt = list(fields), None
        if part not in known:
            match = closest(part, known)
            if match is None:
                return None
            first = i if first is None else first
            parts[i] = part = match
        if schema not in ("cluster", "modules"):
            if part == "cluster" and schema is AppKeys:
                nxt = "cluster"
            elif part == "modules" and schema is MimoKeys:
                nxt = "modules"
            else:
                nxt = _dataclass_of(_fields(schema)[part])
        schema = nxt
    if first is None:
        return None
    return ".".join(path.split(".")[:first + 1]), ".".join(parts)


__all__ = ["AppKeys", "MimoKeys", "ModuleKeys", "check_keys", "closest", "suggest_for_path",
           "suggest_path",
           "unknown_key_message"]
