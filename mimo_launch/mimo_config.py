"""The MIMO parallelism config and its validation (SPEC sections 2 and 4b).

`MimoParallelismConfig.validate(world_size)` runs every rule before any process starts and
returns a copy in which every module's `data_parallel_size` is set. `finalize(world_size)`
runs the same rules and resolves DP in place, as Megatron-Bridge's
`megatron.bridge.models.mimo.mimo_config` does (its other names are here too:
`total_model_parallel_size`, `total_ranks`, `module_names`, `get_parallelism`,
`total_world_size`). Each failure raises `MimoConfigError` (a ValueError) with one line naming
the module(s) and the numbers involved. `as_mimo_config` takes Bridge's own config objects.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

LANGUAGE_MODULE = "language"


class MimoConfigError(ValueError):
    """A layout that cannot run; the message is one line meant for the user."""


@dataclass
class ModuleParallelismConfig:
    """The parallel layout of one module and the first rank it occupies (sizes in ranks)."""

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    context_parallel_size: int = 1
    expert_tensor_parallel_size: int = 1
    data_parallel_size: int | None = None
    rank_offset: int = 0

    @property
    def total_model_parallel_size(self) -> int:
        """TP * CP * ETP * PP: the ranks one data-parallel replica needs (Bridge's name)."""
        return (
            self.tensor_model_parallel_size
            * self.context_parallel_size
            * self.expert_tensor_parallel_size
            * self.pipeline_model_parallel_size
        )

    @property
    def shape(self) -> dict[str, int]:
        """Sizes by short key, first varying fastest: {'tp', 'cp', 'etp', 'pp', 'dp'}."""
        return {"tp": self.tensor_model_parallel_size, "cp": self.context_parallel_size,
                "etp": self.expert_tensor_parallel_size,
                "pp": self.pipeline_model_parallel_size, "dp": self.data_parallel_size}

    @property
    def total_ranks(self) -> int:
        """Total model-parallel size * DP: the ranks the module occupies (Bridge's name).
        Raises MimoConfigError while `data_parallel_size` is unset."""
        if self.data_parallel_size is None:
            raise MimoConfigError("data_parallel_size is not resolved yet (call finalize)")
        return self.total_model_parallel_size * self.data_parallel_size

    @property
    def rank_range(self) -> range:
        """The ranks `[rank_offset, rank_offset + total_ranks)`."""
        return range(self.rank_offset, self.rank_offset + self.total_ranks)

    def finalize(self, world_size: int | None = None) -> None:
        """Check the sizes and, where DP is unset, set it in place to the ranks from
        `rank_offset` to `world_size` divided by the total model-parallel size (Bridge's
        `ModuleParallelismConfig.finalize`). Warns when ETP > 1 and PP > 1, as Bridge does.
        Raises MimoConfigError for a bad size, or when DP is unset and `world_size` is None or
        does not divide."""
        _check_module("", self)
        if self.data_parallel_size is None:
            if world_size is None:
                raise MimoConfigError("module: data_parallel_size (DP) is unset and no world "
                                      "size was given to derive it from")
            _check_int("world size", "", world_size, minimum=1)
            self.data_parallel_size = _derived_data_parallel("", self, world_size)
        _warn_expert_tensor_with_pipeline("", self)


_SIZE_FIELDS = (
    ("tensor_model_parallel_size", "TP"),
    ("context_parallel_size", "CP"),
    ("expert_tensor_parallel_size", "ETP"),
    ("pipeline_model_parallel_size", "PP"),
    ("data_parallel_size", "DP"),
)


@dataclass
class MimoParallelismConfig:
    """Per-module layouts, in order; one module must be named `language`."""

    module_parallelisms: dict[str, ModuleParallelismConfig]
    special_token_ids: dict[str, int] = field(default_factory=dict)

    @property
    def module_names(self) -> list[str]:
        """The module names, in config order."""
        return list(self.module_parallelisms)

    def get_parallelism(self, name: str) -> ModuleParallelismConfig:
        """The layout of module `name`; KeyError naming the modules if there is none."""
        try:
            return self.module_parallelisms[name]
        except KeyError:
            raise KeyError(f"no module {name!r}; modules are {self.module_names}") from None

    @property
    def total_world_size(self) -> int:
        """Ranks the modules cover: max of rank_offset + total_ranks, 0 with no module.
        Raises MimoConfigError while some module's DP is unset."""
        return max((m.rank_offset + m.total_ranks for m in self.module_parallelisms.values()),
                   default=0)

    @property
    def colocated(self) -> bool:
        """True when every module occupies the same ranks (only meaningful once validated)."""
        ranges = {(m.rank_offset, m.total_ranks) for m in self.module_parallelisms.values()}
        return len(self.module_parallelisms) > 1 and len(ranges) == 1

    def validate(self, world_size: int) -> MimoParallelismConfig:
        """Check every rule for `world_size` ranks; return a copy with every DP resolved."""
        _check_int("world size", "", world_size, minimum=1)
        if not self.module_parallelisms:
            raise MimoConfigError("the layout has no modules; it needs at least 'language'")
        if LANGUAGE_MODULE not in self.module_parallelisms:
            names = ", ".join(repr(n) for n in self.module_parallelisms)
            raise MimoConfigError(
                f"no module named '{LANGUAGE_MODULE}' (the language model); modules are {names}"
            )
        for name, mod in self.module_parallelisms.items():
            _check_module(name, mod)
        for token, token_id in self.special_token_ids.items():
            _check_int("special token id", f"'{token}'", token_id, minimum=0)
        resolved = _resolve_data_parallel(self, world_size)
        _check_ranges(resolved, world_size)
        _check_dp_divisibility(resolved)
        return resolved

    def finalize(self, world_size: int | None = None) -> None:
        """Check every rule of `validate` for `world_size` ranks (None: `total_world_size`,
        every DP given) and set each module's unset DP in place (Bridge's
        `MimoParallelismConfig.finalize`). Warns once per module with ETP > 1 and PP > 1.
        Raises MimoConfigError; the config is left unchanged then."""
        if world_size is None:
            world_size = self.total_world_size
        resolved = self.validate(world_size)
        for name, mod in self.module_parallelisms.items():
            mod.data_parallel_size = resolved.module_parallelisms[name].data_parallel_size
            _warn_expert_tensor_with_pipeline(name, mod)


# The short keys of conf/mimo/*.yaml and of overrides -> ModuleParallelismConfig fields.
SHORT_KEYS = {
    "tp": "tensor_model_parallel_size",
    "cp": "context_parallel_size",
    "etp": "expert_tensor_parallel_size",
    "pp": "pipeline_model_parallel_size",
    "dp": "data_parallel_size",
    "rank_offset": "rank_offset",
}


def short_layout(modules: dict[str, dict], special_token_ids: dict[str, int] | None = None
                 ) -> MimoParallelismConfig:
    """A config from per-module dicts of short keys (tp, cp, etp, pp, dp, rank_offset), in
    order; an unknown key raises MimoConfigError. Nothing is validated yet."""
    out = {}
    for name, spec in modules.items():
        unknown = sorted(set(spec) - set(SHORT_KEYS))
        if unknown:
            raise MimoConfigError(f"module '{name}': unknown key(s) {', '.join(unknown)} "
                                  f"(known: {', '.join(SHORT_KEYS)})")
        out[str(name)] = ModuleParallelismConfig(**{SHORT_KEYS[k]: v for k, v in spec.items()})
    return MimoParallelismConfig(out, dict(special_token_ids or {}))


_MODULE_FIELDS = tuple(f.name for f in dataclasses.fields(ModuleParallelismConfig))


def as_mimo_config(cfg) -> MimoParallelismConfig:
    """`cfg` if it is a MimoParallelismConfig, else one copied from any object with the same
    field names, duck-typed: Megatron-Bridge's own `MimoParallelismConfig`
    (`module_parallelisms`: name -> object with the six ModuleParallelismConfig fields;
    `special_token_ids` optional). Nothing is validated yet. Raises MimoConfigError for a
    missing field, or an `expert_model_parallel_size` other than 1 (newer Bridge releases
    have it; this grid has no expert-parallel axis)."""
    if isinstance(cfg, MimoParallelismConfig):
        return cfg
    modules = getattr(cfg, "module_parallelisms", None)
    if not isinstance(modules, Mapping):
        raise MimoConfigError(f"expected a MIMO parallelism config with a module_parallelisms "
                              f"mapping, got {type(cfg).__name__}")
    out = {}
    for name, mod in modules.items():
        missing = [f for f in _MODULE_FIELDS if not hasattr(mod, f)]
        if missing:
            raise MimoConfigError(f"module '{name}': {type(mod).__name__} has no "
                                  f"{', '.join(missing)}")
        ep = getattr(mod, "expert_model_parallel_size", 1)
        if ep != 1:
            raise MimoConfigError(f"module '{name}': expert_model_parallel_size {ep!r} is not "
                                  f"supported (only 1; the grid's ep axis carries ETP)")
        out[str(name)] = ModuleParallelismConfig(**{f: getattr(mod, f) for f in _MODULE_FIELDS})
    return MimoParallelismConfig(out, dict(getattr(cfg, "special_token_ids", None) or {}))


def _check_int(what: str, who: str, value, minimum: int) -> None:
    label = f"{who} {what}".strip()
    if isinstance(value, bool) or not isinstance(value, int):
        raise MimoConfigError(f"{label} must be an integer, got {value!r}")
    if value < minimum:
        raise MimoConfigError(f"{label} must be >= {minimum}, got {value}")


def _who(name: str) -> str:
    """How messages name a module: "module 'vision'", or "module" when it has no name."""
    return f"module '{name}'" if name else "module"


def _check_module(name: str, mod: ModuleParallelismConfig) -> None:
    for attr, short in _SIZE_FIELDS:
        value = getattr(mod, attr)
        if attr == "data_parallel_size" and value is None:
            continue
        _check_int(f"{attr} ({short})", f"{_who(name)}:", value, minimum=1)
    _check_int("rank_offset", f"{_who(name)}:", mod.rank_offset, minimum=0)
    tp = mod.tensor_model_parallel_size
    if tp & (tp - 1):
        raise MimoConfigError(
            f"{_who(name)}: tensor_model_parallel_size (TP) must be a power of two, got {tp}"
        )


def _derived_data_parallel(name: str, mod: ModuleParallelismConfig, world_size: int) -> int:
    """DP of a module spanning `[rank_offset, world_size)`; MimoConfigError if that does not
    divide by its total model-parallel size."""
    span = world_size - mod.rank_offset
    mp = mod.total_model_parallel_size
    if span <= 0 or span % mp:
        raise MimoConfigError(
            f"{_who(name)}: cannot derive data_parallel_size (DP): {span} ranks "
            f"(world size {world_size} - rank_offset {mod.rank_offset}) is not a multiple "
            f"of model-parallel size {mp} (TP*CP*ETP*PP)"
        )
    return span // mp


def _warn_expert_tensor_with_pipeline(name: str, mod: ModuleParallelismConfig) -> None:
    """Bridge's warning (its `ModuleParallelismConfig.finalize`): ETP > 1 with PP > 1."""
    if mod.expert_tensor_parallel_size > 1 and mod.pipeline_model_parallel_size > 1:
        warnings.warn(f"{_who(name)}: expert_tensor_parallel_size (ETP) "
                      f"{mod.expert_tensor_parallel_size} > 1 with pipeline_model_parallel_size "
                      f"(PP) {mod.pipeline_model_parallel_size} > 1 is complex and may be "
                      f"unsupported (Megatron-Bridge warns the same)", UserWarning, stacklevel=3)


def _resolve_data_parallel(cfg: MimoParallelismConfig, world_size: int) -> MimoParallelismConfig:
    mods = cfg.module_parallelisms
    spans_world = len(mods) == 1 or len({m.rank_offset for m in mods.values()}) == 1
    out = {}
    for name, mod in mods.items():
        if mod.data_parallel_size is None:
            if not spans_world:
                raise MimoConfigError(
                    f"module '{name}': data_parallel_size (DP) must be given when modules are "
                    f"not colocated (rank_offset={mod.rank_offset}, "
                    f"model-parallel size={mod.total_model_parallel_size})"
                )
            mod = dataclasses.replace(
                mod, data_parallel_size=_derived_data_parallel(name, mod, world_size))
        out[name] = mod
    return dataclasses.replace(cfg, module_parallelisms=out)


def _describe(name: str, mod: ModuleParallelismConfig) -> str:
    return f"'{name}' [{mod.rank_offset}, {mod.rank_offset + mod.total_ranks})"


def _check_ranges(cfg: MimoParallelismConfig, world_size: int) -> None:
    items = list(cfg.module_parallelisms.items())
    for name, mod in items:
        end = mod.rank_offset + mod.total_ranks
        if end > world_size:
            raise MimoConfigError(
                f"module {_describe(name, mod)} ends past the world: world size is {world_size} "
                f"(size {mod.total_ranks} = model-parallel {mod.total_model_parallel_size} x "
                f"DP {mod.data_parallel_size}, rank_offset {mod.rank_offset})"
            )
    spans = {(m.rank_offset, m.total_ranks) for _, m in items}
    if len(spans) > 1:  # not colocated: ranges must be pairwise disjoint
        for i, (a_name, a) in enumerate(items):
            for b_name, b in items[i + 1 :]:
                lo = max(a.rank_offset, b.rank_offset)
                hi = min(a.rank_offset + a.total_ranks, b.rank_offset + b.total_ranks)
                if lo < hi:
                    raise MimoConfigError(
                        f"modules {_describe(a_name, a)} and {_describe(b_name, b)} overlap on "
                        f"ranks [{lo}, {hi}); ranges must be disjoint or identical (colocated)"
                    )
    covered = sorted((m.rank_offset, m.rank_offset + m.total_ranks, n) for n, m in items)
    cursor = 0
    for start, end, name in covered:
        if start > cursor:
            raise MimoConfigError(
                f"ranks [{cursor}, {start}) belong to no module (next is '{name}' at "
                f"rank_offset {start}); the modules must cover the world [0, {world_size})"
            )
        cursor = max(cursor, end)
    if cursor < world_size:
        raise MimoConfigError(
            f"ranks [{cursor}, {world_size}) belong to no module: the modules cover [0, {cursor}) "
            f"of a world of {world_size}"
        )


def _check_dp_divisibility(cfg: MimoParallelismConfig) -> None:
    items = list(cfg.module_parallelisms.items())
    for i, (a_name, a) in enumerate(items):
        for b_name, b in items[i + 1 :]:
            da, db = a.data_parallel_size, b.data_parallel_size
            if max(da, db) % min(da, db):
                raise MimoConfigError(
                    f"modules '{a_name}' (DP {da}) and '{b_name}' (DP {db}): one data-parallel "
                    f"size must divide the other for the module-to-module bridge"
                )
