"""`check=` and `health.*`: what the communication-health stage measures, validated up front.

`check=verify` (the default) verifies the groups; `check=health` verifies them and, when that
passes, times collectives in them (`health.py`). Every bad value raises ValueError with one line
(the caller turns it into a usage error, exit 2).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

CHECK_MODES = ("verify", "health")  # health = verify, then the health stage
KNOWN_KEYS = ("sizes", "warmup", "iters", "budget_s", "threshold", "fail")
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
# Message sizes (bytes) when `health.sizes` is null: bandwidth-bound on each backend, yet quick.
CPU_SIZES = (64 * KIB, 1 * MIB)
GPU_SIZES = (1 * MIB, 16 * MIB, 256 * MIB)
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$")
_UNITS = {None: 1, "B": 1, "KiB": KIB, "MiB": MIB, "GiB": GIB}


@dataclass(frozen=True)
class HealthSettings:
    """The health stage's settings.

    `sizes`: message sizes in bytes (nccl-tests' "size": the whole buffer of an all-reduce, the
    gathered output of an all-gather, the input of a reduce-scatter, one message of a
    send/recv); None picks CPU_SIZES (gloo) or GPU_SIZES (nccl) on the rank.
    `warmup`, `iters`: untimed and timed iterations per group, op and size (at least one
    warm-up runs even with `warmup=0`: its time sizes the budget).
    `budget_s`: seconds per group kind (all its ops and sizes); fewer timed iterations are run
    where `iters` would exceed it (at least one). `bound_s` is the stage's bound in total.
    `threshold`: a group whose busbw is below `threshold` x its kind's median is a suspect.
    `fail`: a suspect makes the run exit 4; false reports only.
    """

    sizes: tuple[int, ...] | None = None
    warmup: int = 2
    iters: int = 10
    budget_s: float = 3.0
    threshold: float = 0.7
    fail: bool = True

    def sizes_for(self, backend: str) -> tuple[int, ...]:
        """The message sizes in bytes on `backend` ('gloo' or 'nccl')."""
        if self.sizes is not None:
            return self.sizes
        return GPU_SIZES if backend == "nccl" else CPU_SIZES

    def bound_s(self, kinds: int = 7) -> float:
        """Seconds the stage may take at most: twice the budget of each of `kinds` kinds (the
        budget is a target, warm-ups come on top), for a launcher's watchdog."""
        return 2 * self.budget_s * kinds


def parse_size(value) -> int:
    """A message size in bytes from an int or a string such as '256KiB' or '1 MiB'; ValueError
    for anything else or for a size below 4 bytes (one float)."""
    if isinstance(value, bool):
        raise ValueError(f"health.sizes: {value!r} is not a size")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f"health.sizes: {value!r} is not a size (bytes, or e.g. 256KiB, "
                             f"16MiB, 1GiB)")
        size = int(match.group(1)) * _UNITS[match.group(2)]
    if size < 4:
        raise ValueError(f"health.sizes: {value!r} is below 4 bytes (one float32)")
    return size


def _count(data: dict, key: str, default: int, low: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"health.{key} must be an integer >= {low}, got {value!r}")
    return value


def _number(data: dict, key: str, default: float, low: float, high: float) -> float:
    value = data.get(key, default)
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not low < value <= high):
        raise ValueError(f"health.{key} must be a number in ({low:g}, {high:g}], got {value!r}")
    return float(value)


def health_settings(check, data: dict) -> HealthSettings | None:
    """`check` and the `health` node (a plain dict, keys already checked against KNOWN_KEYS)
    as HealthSettings, or None for `check=verify`. ValueError (one line) on a bad value."""
    if check not in CHECK_MODES:
        raise ValueError(f"check must be one of {', '.join(CHECK_MODES)}, got {check!r}")
    sizes = data.get("sizes")
    if sizes is not None:
        sizes = sizes if isinstance(sizes, list) else [sizes]
        if not sizes:
            raise ValueError("health.sizes must name at least one size (or be null)")
        sizes = tuple(sorted({parse_size(s) for s in sizes}))
    fail = data.get("fail", True)
    if not isinstance(fail, bool):
        raise ValueError(f"health.fail must be true or false, got {fail!r}")
    settings = HealthSettings(
        sizes=sizes, warmup=_count(data, "warmup", 2, 0), iters=_count(data, "iters", 10, 1),
        budget_s=_number(data, "budget_s", 3.0, 0, 3600),
        threshold=_number(data, "threshold", 0.7, 0, 1), fail=fail)
    return settings if check == "health" else None
