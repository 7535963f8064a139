"""The MIMO parallelism config and its validation (SPEC section 2).

`MimoParallelismConfig.validate(world_size)` runs every rule before any process starts and
returns a copy in which every module's `data_parallel_size` is set. Each failure raises
`MimoConfigError` with one line naming the module(s) and the numbers involved.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

LANGUAGE_MODULE = "language"


class MimoConfigError(ValueError):
    """A layout that cannot run; the message is one line meant for the user."""


@dataclass(frozen=True)
class ModuleParallelismConfig:
    """The parallel layout of one module and the first rank it occupies."""

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    context_parallel_size: int = 1
    expert_tensor_parallel_size: int = 1
    data_parallel_size: int | None = None
    rank_offset: int = 0

    @property
    def model_parallel_size(self) -> int:
        """TP * CP * ETP * PP: the ranks one data-parallel replica needs."""
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
    def size(self) -> int:
        """Model-parallel size * DP; requires `data_parallel_size` to be set."""
        if self.data_parallel_size is None:
            raise MimoConfigError("data_parallel_size is not resolved yet")
        return self.model_parallel_size * self.data_parallel_size

    @property
    def rank_range(self) -> range:
        """The ranks `[rank_offset, rank_offset + size)`."""
        return range(self.rank_offset, self.rank_offset + self.size)


_SIZE_FIELDS = (
    ("tensor_model_parallel_size", "TP"),
    ("context_parallel_size", "CP"),
    ("expert_tensor_parallel_size", "ETP"),
    ("pipeline_model_parallel_size", "PP"),
    ("data_parallel_size", "DP"),
)


@dataclass(frozen=True)
class MimoParallelismConfig:
    """Per-module layouts, in order; one module must be named `language`."""

    module_parallelisms: dict[str, ModuleParallelismConfig]
    special_token_ids: dict[str, int] = field(default_factory=dict)

    @property
    def module_names(self) -> list[str]:
        return list(self.module_parallelisms)

    @property
    def colocated(self) -> bool:
        """True when every module occupies the same ranks (only meaningful once validated)."""
        ranges = {(m.rank_offset, m.size) for m in self.module_parallelisms.values()}
        return len(self.module_parallelisms) > 1 and len(ranges) == 1

    def implied_world_size(self) -> int | None:
        """The world the modules cover when every DP is given, else None."""
        mods = self.module_parallelisms.values()
        if any(m.data_parallel_size is None for m in mods):
            return None
        return max(m.rank_offset + m.size for m in mods)

    def validate(self, world_size: int) -> "MimoParallelismConfig":
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


def _check_int(what: str, who: str, value, minimum: int) -> None:
    label = f"{who} {what}".strip()
    if isinstance(value, bool) or not isinstance(value, int):
        raise MimoConfigError(f"{label} must be an integer, got {value!r}")
    if value < minimum:
        raise MimoConfigError(f"{label} must be >= {minimum}, got {value}")


def _check_module(name: str, mod: ModuleParallelismConfig) -> None:
    for attr, short in _SIZE_FIELDS:
        value = getattr(mod, attr)
        if attr == "data_parallel_size" and value is None:
            continue
        _check_int(f"{attr} ({short})", f"module '{name}':", value, minimum=1)
    _check_int("rank_offset", f"module '{name}':", mod.rank_offset, minimum=0)
    tp = mod.tensor_model_parallel_size
    if tp & (tp - 1):
        raise MimoConfigError(
            f"module '{name}': tensor_model_parallel_size (TP) must be a power of two, got {tp}"
        )


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
                    f"model-parallel size={mod.model_parallel_size})"
                )
            span = world_size - mod.rank_offset
            mp = mod.model_parallel_size
            if span <= 0 or span % mp:
                raise MimoConfigError(
                    f"module '{name}': cannot derive data_parallel_size (DP): {span} ranks "
                    f"(world size {world_size} - rank_offset {mod.rank_offset}) is not a multiple "
                    f"of model-parallel size {mp} (TP*CP*ETP*PP)"
                )
            mod = dataclasses.replace(mod, data_parallel_size=span // mp)
        out[name] = mod
    return dataclasses.replace(cfg, module_parallelisms=out)


def _describe(name: str, mod: ModuleParallelismConfig) -> str:
    return f"'{name}' [{mod.rank_offset}, {mod.rank_offset + mod.size})"


def _check_ranges(cfg: MimoParallelismConfig, world_size: int) -> None:
    items = list(cfg.module_parallelisms.items())
    for name, mod in items:
        end = mod.rank_offset + mod.size
        if end > world_size:
            raise MimoConfigError(
                f"module {_describe(name, mod)} ends past the world: world size is {world_size} "
                f"(size {mod.size} = model-parallel {mod.model_parallel_size} x "
                f"DP {mod.data_parallel_size}, rank_offset {mod.rank_offset})"
            )
    spans = {(m.rank_offset, m.size) for _, m in items}
    if len(spans) > 1:  # not colocated: ranges must be pairwise disjoint
        for i, (a_name, a) in enumerate(items):
            for b_name, b in items[i + 1 :]:
                lo = max(a.rank_offset, b.rank_offset)
                hi = min(a.rank_offset + a.size, b.rank_offset + b.size)
                if lo < hi:
                    raise MimoConfigError(
                        f"modules {_describe(a_name, a)} and {_describe(b_name, b)} overlap on "
                        f"ranks [{lo}, {hi}); ranges must be disjoint or identical (colocated)"
                    )
    covered = sorted((m.rank_offset, m.rank_offset + m.size, n) for n, m in items)
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
