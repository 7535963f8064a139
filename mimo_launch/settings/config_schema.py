"""The types and ranges of the cluster config and of the top-level switches, as OmegaConf
structured configs: a value of the wrong type or out of range is one line (UsageError), never a
traceback later.

`cluster` is checked against `SlurmCluster`, `LocalCluster` or `TorchrunCluster` by its
`launcher`; a field's `metadata["min"]` is its least value, `metadata["above"]` a bound it must
exceed. Booleans are strict: true/false, yes/no, 1/0 (any case); anything else is refused
(OmegaConf alone takes any integer, and Hydra passes `no` as a string).
A list field also takes one string (one setup line, one mount). `unresolvable` is the one
line for a value whose interpolation cannot be resolved, in the cluster section or elsewhere.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


class SchemaError(ValueError):
    """A value of the wrong type or range; the message is one line naming the key."""


def _min(value) -> dict:
    return {"min": value}


def _above(value) -> dict:
    return {"above": value}


@dataclass
class SlurmCluster:
    """`conf/cluster/slurm.yaml` (and the configs that extend it)."""

    name: str = "slurm"
    launcher: str = "slurm"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int | None = field(default=None, metadata=_min(1))
    gpus_per_node: int = field(default=8, metadata=_min(0))
    tasks_per_node: int | None = field(default=None, metadata=_min(1))
    cpus_per_task: int | None = field(default=None, metadata=_min(1))
    mem_gb: int | None = field(default=None, metadata=_min(0))
    time_min: int = field(default=20, metadata=_min(1))
    pending_timeout_min: float | None = field(default=None, metadata=_above(0))
    exclusive: bool = False
    job_name: str = "mimo-launch"
    container_image: str | None = None
    container_mounts: list[str] = field(default_factory=list)
    container_workdir: str | None = None
    python: str | None = None
    setup: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    srun_args: list[str] = field(default_factory=list)
    submitit_dir: str = "submitit"
    timeout_s: Any = 300  # checked with the top-level timeout_s (app_config.check_timeout)


@dataclass
class LocalCluster:
    """`conf/cluster/local.yaml`."""

    name: str = "local"
    launcher: str = "local"
    nproc: int | None = field(default=None, metadata=_min(1))
    timeout_s: Any = 30
    max_ranks: int | None = field(default=256, metadata=_min(1))


@dataclass
class TorchrunCluster:
    """`conf/cluster/torchrun.yaml`: torchrun starts the ranks (`torchrun_task`)."""

    name: str = "torchrun"
    launcher: str = "torchrun"
    timeout_s: Any = 60


SCHEMAS = {"slurm": SlurmCluster, "local": LocalCluster, "torchrun": TorchrunCluster}
# The cluster section past validation: an instance of its launcher's schema.
ClusterSettings = SlurmCluster | LocalCluster | TorchrunCluster


def closest(key: str, known: Iterable[str]) -> str | None:
    """The known key closest to `key` (difflib, ratio >= 0.6), or None."""
    matches = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_key_message(path: str, known: Iterable[str], where: str = "",
                        others: Iterable[str] = ()) -> str:
    """The one line for every unknown key: `unknown key 'plan.rnak' (did you mean
    'plan.rank'?)`. `path`: the full dotted key; `known`: the keys at its place (the closest
    is named by its full path, else all are listed); `where`: words after the key; `others`:
    more unknown keys at the same place, named after it."""
    known = [str(k) for k in known]
    parent, _, key = path.rpartition(".")
    prefix = parent + "." if parent else ""
    near = closest(key, known)
    hint = f"did you mean '{prefix}{near}'?" if near else f"known: {', '.join(known)}"
    more = ", ".join(f"'{prefix}{other}'" for other in others)
    return (f"unknown key '{path}'{' ' + where if where else ''} ({hint})"
            + (f"; also unknown: {more}" if more else ""))


def strict_bool(value, name: str) -> bool:
    """`value` as a bool: True/False, 1/0, or true/false, yes/no, 1/0 in any case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise SchemaError(f"{name} must be true or false (yes/no, 1/0), got {value!r}")


def _describe(kind, least=None, above=None) -> str:
    optional = type(None) in typing.get_args(kind)
    if optional:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    text = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        kind) or ("a list of strings" if typing.get_origin(kind) is list
                  else "a mapping of names to values")
    bound = f" >= {least}" if least is not None else f" > {above}" if above is not None else ""
    return text + bound + (" or null" if optional else "")


def _bounded(spec, kind) -> str:
    return _describe(kind, spec.metadata.get("min"), spec.metadata.get("above"))


def _resolved(node: DictConfig) -> dict:
    """`node`'s values, each interpolation resolved in the whole config (`${cluster.name}`,
    `${oc.env:USER}`); SchemaError naming the key whose interpolation fails."""
    raw = OmegaConf.to_container(node, resolve=False)
    data = {}
    for key in raw:
        try:
            value = node[key]
            data[key] = (OmegaConf.to_container(value, resolve=True)
                         if isinstance(value, DictConfig | ListConfig) else value)
        except OmegaConfBaseException as exc:
            raise SchemaError(unresolvable(f"cluster.{key}", raw[key], exc)) from None
    return data


def _scalar(value) -> bool:
    return isinstance(value, str | int | float)  # bool is an int


def _converted(key: str, value, kind):
    """`value` of the field `key` of type `kind`, as the schema takes it: booleans strictly,
    one string for a list, an env mapping's booleans as true/false; SchemaError for a list or
    mapping holding anything but strings and numbers (OmegaConf would let a nested list in)."""
    if kind is bool:
        return strict_bool(value, f"cluster.{key}")
    if typing.get_origin(kind) is list:
        value = [value] if isinstance(value, str) else value
        if isinstance(value, list) and not all(_scalar(v) for v in value):
            raise SchemaError(f"cluster.{key} must be a list of strings, got {value!r}")
    if typing.get_origin(kind) is dict and isinstance(value, dict):
        for name, item in value.items():
            if not _scalar(item):
                raise SchemaError(f"cluster.{key}.{name} must be a string or a number, got "
                                  f"{'null' if item is None else repr(item)}")
        value = {name: str(item).lower() if isinstance(item, bool) else item
                 for name, item in value.items()}
    return value


def check_cluster(node: DictConfig) -> ClusterSettings:
    """`node` (the composed `cluster`, inside its config) checked against its launcher's
    schema; returns an instance of that schema (typed attributes, the resolved and converted
    values, the schema's defaults filled in). Raises SchemaError (one line)."""
    data = _resolved(node)
    launcher = data.get("launcher")
    if launcher not in SCHEMAS:
        raise SchemaError(f"cluster.launcher must be one of {', '.join(SCHEMAS)}, "
                          f"got {launcher!r}")
    schema = SCHEMAS[launcher]
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key, value in data.items():
        if key in fields:
            data[key] = _converted(key, value, hints[key])
    folder = data.get("submitit_dir")
    if isinstance(folder, str) and (PurePosixPath(folder).is_absolute()
                                    or ".." in PurePosixPath(folder).parts):
        raise SchemaError(f"cluster.submitit_dir must be a folder inside the run directory (a "
                          f"relative path without '..'), got {folder!r}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), data)
    except OmegaConfBaseException as exc:
        key = str(exc.full_key or exc.key or "?")
        if key not in fields:
            raise SchemaError(unknown_key_message(f"cluster.{key}", fields,
                                                  f"for cluster.launcher={launcher}")) from None
        raise SchemaError(f"cluster.{key} must be {_bounded(fields[key], hints[key])}, "
                          f"got {data.get(key)!r}") from None
    for key, spec in fields.items():
        value = merged.get(key)
        least, above = spec.metadata.get("min"), spec.metadata.get("above")
        if value is not None and (least is not None and value < least
                                  or above is not None and value <= above):
            raise SchemaError(f"cluster.{key} must be {_bounded(spec, hints[key])}, "
                              f"got {data.get(key)!r}")  # as given: 0, not the float 0.0
    return OmegaConf.to_object(merged)


def value_as_written(config, key: str):
    """The value at dotted `key` ('health.sizes[0]') of `config` (a DictConfig) with its
    interpolations not resolved; None where there is none or it is not a scalar."""
    node = OmegaConf.to_container(config, resolve=False)
    try:
        for part in re.findall(r"[^.\[\]]+", key):
            node = node[int(part)] if isinstance(node, list) else node[part]
    except (KeyError, IndexError, ValueError, TypeError):
        return None
    return node if isinstance(node, str | int | float | bool) else None


def left_missing(data, prefix: str = "") -> list[str]:
    """The dotted keys of `data` (a config as `OmegaConf.to_container(..., resolve=False)`
    gives it) whose value is left as `???`, in order."""
    if isinstance(data, dict):
        items = [(f"{prefix}{key}", value) for key, value in data.items()]
    elif isinstance(data, list):
        items = [(f"{prefix[:-1]}[{i}]", value) for i, value in enumerate(data)]
    else:
        return []
    return [key for key, value in items if value == "???"] + [
        found for key, value in items for found in left_missing(value, f"{key}.")]


def must_be_given(key: str) -> str:
    """The one line for a value left as `???` (OmegaConf's mandatory missing value)."""
    return f"{key} must be given a value (it is ??? in the config)"


def unresolvable(key: str, raw, exc: BaseException) -> str:
    """The one line for a value whose interpolation cannot be resolved (`${oc.env:UNSET}`, a
    key that is not in the config, a recursion), in and outside the cluster section:
    'KEY=RAW: cannot resolve its interpolation (OmegaConf's reason)'; RAW as written, where
    known (None: left out). A value left as `???` is 'KEY must be given a value'."""
    if isinstance(exc, MissingMandatoryValue):
        return must_be_given(key)
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    shown = key if raw is None else f"{key}={raw}"
    return f"{shown}: cannot resolve its interpolation ({reason})"
