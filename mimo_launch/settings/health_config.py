"""`check=` and `health.*`: what the communication-health stage measures, validated up front.

`check=verify` (the default) verifies the groups; `check=health` verifies them and, when that
passes, times collectives in them (`health.py`). Every bad value raises ValueError with one line
(the caller turns it into a usage error, exit 2).

Sizes are bytes of float32 buffers: each must be a multiple of 4 bytes, at least MIN_SIZE, and
given once. MIN_SIZE (64 KiB) is measured: gloo on a 2-core CI machine, four concurrent 2-rank
all-reduce groups of 8 ranks (as the default layout's dp groups), 10 trials of 10 iterations.
One all-reduce takes about the same 0.4-1.2 ms from 4 B to 32 KiB (busbw grows in proportion
to the size: it measures the per-call overhead, not the link), and time grows with the size
from about 64 KiB on; busbw from 4 B to 32 KiB: 1e-5 to 0.03 GB/s, a group below 0.7x its
median by chance in 5 to 9 of 10 trials; 1 MiB: 0.4 GB/s, 1 in 10; 4 MiB: none. So sizes below
64 KiB would judge ranks on noise; the judged (largest) size is best 1 MiB or more on a busy
CPU. NCCL's per-call overhead is far smaller, so the floor is safe there too.

`check_memory` refuses, before any rank starts, sizes whose buffers do not fit the memory the
ranks of one machine have (host RAM for gloo on CPU: BUFFERS_PER_SIZE x the largest size per
rank x the ranks on the machine).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

CHECK_MODES = ("verify", "health")  # health = verify, then the health stage
KNOWN_KEYS = ("sizes", "warmup", "iters", "budget_s", "threshold", "fail")
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
# Message sizes (bytes) when `health.sizes` is null: bandwidth-bound on each backend, yet quick.
CPU_SIZES = (64 * KIB, 1 * MIB)
GPU_SIZES = (1 * MIB, 16 * MIB, 256 * MIB)
MIN_SIZE = 64 * KIB  # measured floor (module docstring): below it busbw is per-call overhead
# Per rank, at the largest size: the op's input, its output (all-gather's gathered tensor) and
# gloo's staging copy. Measured (peak RSS growth of 2 gloo ranks, 256 MiB): all-reduce 1.07x the
# size, all-gather and reduce-scatter 2.6x; rounded up.
BUFFERS_PER_SIZE = 3
# health.warmup's upper bound: warm-up is untimed and outside budget_s (HealthSettings).
MAX_WARMUP = 1000
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$")
_UNITS = {None: 1, "B": 1, "KiB": KIB, "MiB": MIB, "GiB": GIB}


@dataclass(frozen=True)
class HealthSettings:
    """The health stage's settings.

    `sizes`: message sizes in bytes (nccl-tests' "size": the whole buffer of an all-reduce, the
    gathered output of an all-gather, the input of a reduce-scatter, one message of a
    send/recv); None picks CPU_SIZES (gloo) or GPU_SIZES (nccl) on the rank.
    `warmup`, `iters`: untimed and timed iterations per group, op and size (at least one
    warm-up runs even with `warmup=0`: its time sizes the budget). `warmup` is at most
    MAX_WARMUP (1000): warm-up iterations are not bounded by `budget_s`, so a larger count
    would only run into the stage's bound.
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
    for anything else, for a size that is not whole float32s (a multiple of 4 bytes) or for one
    below MIN_SIZE."""
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
    if size < MIN_SIZE:
        raise ValueError(f"health.sizes: {value!r} is below the floor of {MIN_SIZE // KIB}KiB "
                         f"(smaller messages time per-call overhead, not the link)")
    if size % 4:
        raise ValueError(f"health.sizes: {value!r} is not a multiple of 4 bytes (whole float32 "
                         f"elements)")
    return size


def _count(data: dict, key: str, default: int, low: int, high: int | None = None) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"health.{key} must be an integer >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"health.{key} must be an integer in [{low}, {high}], got {value!r}")
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
        parsed = [parse_size(s) for s in sizes]
        repeated = sorted({s for s in parsed if parsed.count(s) > 1})
        if repeated:
            raise ValueError(f"health.sizes: {', '.join(map(str, repeated))} bytes given more "
                             f"than once (each size is timed once)")
        sizes = tuple(sorted(parsed))
    fail = data.get("fail", True)
    if not isinstance(fail, bool):
        raise ValueError(f"health.fail must be true or false, got {fail!r}")
    settings = HealthSettings(
        sizes=sizes, warmup=_count(data, "warmup", 2, 0, MAX_WARMUP),
        iters=_count(data, "iters", 10, 1),
        budget_s=_number(data, "budget_s", 3.0, 0, 3600),
        threshold=_number(data, "threshold", 0.7, 0, 1), fail=fail)
    return settings if check == "health" else None


def available_memory() -> int | None:
    """Bytes of host memory available now (Linux's MemAvailable: free memory plus what the
    kernel can reclaim), else free pages from os.sysconf; None where neither is known."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * KIB
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def check_memory(settings: HealthSettings | None, backend: str, ranks: int,
                 available: int | None = None) -> None:
    """ValueError (one line) when `ranks` ranks of one machine, each holding BUFFERS_PER_SIZE
    buffers of the largest size, need more host memory than `available` (default: available
    now). Checked for gloo (CPU) only: GPU memory is each rank's own GPU's."""
    if settings is None or backend != "gloo":
        return
    available = available_memory() if available is None else available
    largest = max(settings.sizes_for(backend))
    need = BUFFERS_PER_SIZE * largest * ranks
    if available is not None and need > available:
        raise ValueError(f"health.sizes: {_gib(largest)} per message needs about {_gib(need)} "
                         f"of host memory ({BUFFERS_PER_SIZE} buffers x {ranks} ranks on this "
                         f"machine) but {_gib(available)} is available; use smaller sizes")


def _gib(size: int) -> str:
    return f"{size / GIB:.3g} GiB"
