"""Shared helpers: real gloo worlds of forked ranks, medians, memory probes, machine facts."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d as c10d

from mimo_launch.compat import is_group_member
from mimo_launch.launchers.gloo_world import run_gloo_world
from mimo_launch.mimo_config import MimoParallelismConfig, short_layout


def layout(**modules) -> MimoParallelismConfig:
    """layout(vision=dict(tp=2, dp=2), language=dict(pp=2, dp=2, rank_offset=4))."""
    return short_layout(modules)


def median(xs) -> float:
    return float(statistics.median(xs))


def in_world(world_size: int, body: Callable[[int], dict], timeout_s: float = 120) -> list[dict]:
    """Fork `world_size` gloo ranks running `body(rank) -> dict`; return every rank's dict."""
    with tempfile.TemporaryDirectory(prefix="mimo_bench_") as tmp:
        return run_gloo_world(world_size, tmp, body, timeout_s)


@contextmanager
def counting_new_groups():
    """Count every `new_group` call and keep the groups made, so that the caller can destroy
    them: yields a dict {calls, groups}. Wraps the public `new_group` both where callers find
    it (`torch.distributed.new_group`, as megatron-core and we call it) and where torch's own
    `new_subgroups_by_enumeration` (inside `HyperCommGrid.create_pg`) finds it."""
    seen = {"calls": 0, "groups": []}
    original = c10d.new_group

    def wrapper(*args, **kwargs):
        pg = original(*args, **kwargs)
        seen["calls"] += 1
        if is_group_member(pg):
            seen["groups"].append(pg)
        return pg

    dist.new_group = c10d.new_group = wrapper
    try:
        yield seen
    finally:
        dist.new_group = c10d.new_group = original


def destroy_groups(groups) -> None:
    """Destroy each distinct group still alive once (per rank, no collective)."""
    for pg in {id(g): g for g in groups}.values():
        try:
            dist.destroy_process_group(pg)
        except (KeyError, ValueError, RuntimeError):  # destroyed already (e.g. by its grid)
            pass


def timed_collective(fn: Callable[[], object]) -> tuple[float, object]:
    """Barrier, run `fn`, barrier: the seconds this rank saw (the slowest rank bounds it)."""
    dist.barrier()
    t0 = time.perf_counter()
    result = fn()
    dist.barrier()
    return time.perf_counter() - t0, result


def vm_hwm_kib() -> int:
    """This process's peak resident set (VmHWM), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def smaps_rollup(pid: int | str = "self") -> dict[str, int]:
    """Rss, Pss and USS (private clean + dirty) of a process, KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return {"rss": fields["Rss"], "pss": fields["Pss"],
            "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


def machine() -> str:
    """One line naming the machine the benchmarks ran on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return (f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), {mem_gib:.0f} GiB RAM, "
            f"Linux {platform.release()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}, megatron-core {version('megatron-core')}, "
            f"load avg at start {os.getloadavg()[0]:.2f}")
