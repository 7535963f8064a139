"""The health stage (SPEC section 6): time real collectives and transfers in the run's groups.

Every rank walks the same list of steps, one per (kind, op, size), each started by a barrier
over the world, so that every group of a kind (in every module) runs at once, as in training.
In a step a rank times, in each of its groups of that kind, `warmup` untimed then up to
`iters` timed iterations, back to back and each timed (rank 0 takes each member's mean
iteration, nccl-tests' loop time over iterations, then the slowest member's).
A send/recv link times an activation forward and a gradient back, and counts half of it.
Kinds: the grid groups `tp`, `cp`, `ep` (all-reduce) and `dp`, `dp+cp` (all-reduce,
all-gather, reduce-scatter), each measured once per distinct membership (a kind whose non-1
dims repeat an earlier kind's, or that has none, is skipped); `pp`: send/recv between adjacent
stages of every pipeline in its `pp` group; `boundary`: each encoder's last stage to
`language`'s first stage over the world group, one link per DP replica (fan-in or fan-out
as the two DP sizes require), an activation forward and a gradient back. Each rank leaves its
times in the run's store; rank 0 joins them (`health_report.analyse`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from ..checks.health_report import SEND_RECV, size_text
from ..layout.group_kinds import dims_of
from ..layout.rank_text import format_rank_set
from ..mimo_builder import MimoGroups, comm_device
from ..mimo_config import LANGUAGE_MODULE, MimoParallelismConfig
from ..rank.phases import HEALTH_PHASE, PhaseError, PhaseTracker
from ..settings.health_config import HealthSettings

COLLECTIVE_KINDS = {
    "tp": ("all_reduce",), "cp": ("all_reduce",), "ep": ("all_reduce",),
    "dp": ("all_reduce", "all_gather", "reduce_scatter"),
    "dp+cp": ("all_reduce", "all_gather", "reduce_scatter"),
}
P2P_KINDS = ("pp", "boundary")
# torch >= 2.13 names them *_single (the *_tensor names warn there); both public
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_KEY = "mimo/health/"


@dataclass(frozen=True)
class Step:
    kind: str
    op: str
    size: int  # bytes


def module_ranks(mod) -> np.ndarray:
    """A module's ranks as an array indexed [dp, pp, ep, cp, tp] (the grid's order: tp
    varies fastest, SPEC section 3)."""
    shape = (mod.data_parallel_size, mod.pipeline_model_parallel_size,
             mod.expert_tensor_parallel_size, mod.context_parallel_size,
             mod.tensor_model_parallel_size)
    return mod.rank_offset + np.arange(int(np.prod(shape))).reshape(shape)


def measured_kinds(mod) -> list[str]:
    """The collective kinds worth timing in a module: size > 1, membership not repeated."""
    sizes = {"tp": mod.tensor_model_parallel_size, "cp": mod.context_parallel_size,
             "ep": mod.expert_tensor_parallel_size, "dp": mod.data_parallel_size}
    seen, kinds = set(), []
    for kind in COLLECTIVE_KINDS:
        real = tuple(d for d in dims_of(kind) if sizes[d] > 1)
        if real and real not in seen:
            seen.add(real)
            kinds.append(kind)
    return kinds


def pipeline_links(layout: MimoParallelismConfig) -> list[tuple[str, int, int]]:
    """(module, stage s rank, stage s+1 rank) of every pipeline, stage-major: every first
    link of every pipeline, then every second one..."""
    links = []
    arrays = {name: module_ranks(mod) for name, mod in layout.module_parallelisms.items()}
    stages = max(a.shape[1] for a in arrays.values())
    for s in range(stages - 1):
        for name, ranks in arrays.items():
            if s + 1 < ranks.shape[1]:
                for src, dst in zip(ranks[:, s].ravel(), ranks[:, s + 1].ravel()):
                    links.append((name, int(src), int(dst)))
    return links


def boundary_links(layout: MimoParallelismConfig) -> list[tuple[str, int, int]]:
    """('<encoder>->language', src, dst): each encoder's last stage (TP/CP/ETP rank 0 of each
    DP replica) to `language`'s first stage. DP sizes De and Dl: replica i sends to
    i * Dl // De (fan-in, De >= Dl) or replica j receives from j * De // Dl (fan-out). A link
    from a rank to itself (colocated modules) moves nothing and is left out."""
    language = module_ranks(layout.module_parallelisms[LANGUAGE_MODULE])[:, 0, 0, 0, 0]
    links = []
    for name, mod in layout.module_parallelisms.items():
        if name == LANGUAGE_MODULE:
            continue
        encoder = module_ranks(mod)[:, -1, 0, 0, 0]
        de, dl = len(encoder), len(language)
        pairs = ([(i, i * dl // de) for i in range(de)] if de >= dl else
                 [(j * de // dl, j) for j in range(dl)])
        links += [(f"{name}->{LANGUAGE_MODULE}", int(encoder[i]), int(language[j]))
                  for i, j in pairs if encoder[i] != language[j]]
    return links


def plan_steps(layout: MimoParallelismConfig, sizes) -> list[Step]:
    """Every step of the stage, the same on every rank: the collective kinds some module
    has, then pp and boundary where they have links; each at every size."""
    kinds = {k for mod in layout.module_parallelisms.values() for k in measured_kinds(mod)}
    steps = [Step(kind, op, size) for kind, ops in COLLECTIVE_KINDS.items() if kind in kinds
             for op in ops for size in sizes]
    for kind, links in (("pp", pipeline_links(layout)), ("boundary", boundary_links(layout))):
        if links:
            steps += [Step(kind, SEND_RECV, size) for size in sizes]
    return steps


class SlowRank:
    """Fault injection (`fault.slow_rank`): after each timed iteration the rank sleeps
    (factor - 1) x that iteration's time, so its groups run `factor` times slower."""

    def __init__(self, factor: float | None):
        self.factor = factor
        self.mark = 0.0

    def start(self) -> None:
        self.mark = time.perf_counter()

    def delay(self, sync) -> None:
        if self.factor:
            sync()
            now = time.perf_counter()
            time.sleep((self.factor - 1) * (now - self.mark))
            self.mark = time.perf_counter()


class HealthRun:
    """One rank's part of the stage; `run()` returns its records (plain dicts)."""

    def __init__(self, layout: MimoParallelismConfig, groups: MimoGroups,
                 settings: HealthSettings, slow_factor: float | None = None, progress=None,
                 tracker: PhaseTracker | None = None):
        self.layout, self.groups, self.settings = layout, groups, settings
        self.tracker = tracker  # names the ranks a step's barrier waited for (`_barrier`)
        self.rank = dist.get_rank()
        self.device = comm_device()
        self.sync = (torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None))
        self.slow = SlowRank(slow_factor)
        self.progress = progress  # progress(index, steps) on rank 0, e.g. into the store
        self.sizes = settings.sizes_for(dist.get_backend())
        self.kinds = {name: measured_kinds(mod)
                      for name, mod in layout.module_parallelisms.items()}
        mine = [link for link in pipeline_links(layout) if self.rank in link[1:]]
        self.links = {"pp": mine,
                      "boundary": [lk for lk in boundary_links(layout) if self.rank in lk[1:]]}

    def run(self) -> list[dict]:
        steps = plan_steps(self.layout, self.sizes)
        per_kind = {}
        for step in steps:
            per_kind[step.kind] = per_kind.get(step.kind, 0) + 1
        records = []
        for index, step in enumerate(steps):
            if self.progress is not None:
                self.progress(index, steps)
            self._barrier(index, steps)  # every group of the kind starts together
            budget = self.settings.budget_s / per_kind[step.kind]
            if step.kind in P2P_KINDS:
                records += self._links(step, budget)
            else:
                records += self._collectives(step, budget)
        self._barrier(len(steps), steps)
        return records

    def _barrier(self, index: int, steps: list[Step]) -> None:
        """The world barrier before step `index` (`len(steps)`: after the last). Each rank
        marks its arrival first, so that where the barrier times out (a module whose step
        outlasts timeout_s, the other module's ranks waiting) the ranks still in the step
        before are named: PhaseError with them as `missing`, not the ranks that waited."""
        if self.tracker is None:
            dist.barrier()
            return
        mark = f"{HEALTH_PHASE}/step{index}"
        self.tracker.reach(mark)
        try:
            dist.barrier()
        except Exception as exc:
            try:
                late = self.tracker.not_reached(mark)
            except Exception:  # noqa: BLE001 - the store is gone too: the barrier's error
                late = []
            if not late:
                raise
            what = (f"did not finish step {index}/{len(steps)} ({step_text(steps[index - 1])})"
                    if index else "did not reach the first step")
            # (the barrier's own error is a timeout on the first rank to give up, and a closed
            # connection on the others: the late ranks are what both mean)
            raise PhaseError(HEALTH_PHASE, f"rank(s) {format_rank_set(late)} {what} while the "
                                           f"others waited at the barrier "
                                           f"{'after' if index else 'before'} it", late) from exc

    def _collectives(self, step: Step, budget: float) -> list[dict]:
        out = []
        for name, kinds in self.kinds.items():
            group = self.groups.group(name, step.kind) if step.kind in kinds else None
            if group is None:
                continue
            n = dist.get_world_size(group)
            fn, size = self._collective(step.op, step.size, n, group)
            times = self._time(fn, budget, group)
            out.append({"kind": step.kind, "op": step.op, "size": size, "module": name,
                        "ranks": sorted(dist.get_process_group_ranks(group)),
                        "times_s": times})
        return out

    def _collective(self, op: str, size: int, n: int, group):
        """The op as a no-argument call on buffers of `size` bytes (rounded down to whole
        float32 chunks per rank for all-gather and reduce-scatter), and the size used."""
        if op == "all_reduce":
            buf = torch.ones(max(size // 4, 1), device=self.device)
            return (lambda: dist.all_reduce(buf, group=group)), buf.numel() * 4
        chunk = max(size // 4 // n, 1)
        whole = torch.ones(chunk * n, device=self.device)
        part = torch.ones(chunk, device=self.device)
        if op == "all_gather":
            return (lambda: _all_gather(whole, part, group=group)), whole.numel() * 4
        return (lambda: _reduce_scatter(part, whole, group=group)), whole.numel() * 4

    def _links(self, step: Step, budget: float) -> list[dict]:
        out = []
        buf = torch.ones(max(step.size // 4, 1), device=self.device)
        for module, src, dst in self.links[step.kind]:
            group = self.groups.group(module, "pp") if step.kind == "pp" else None
            peer = dst if self.rank == src else src

            def round_trip(peer=peer, group=group, sending=self.rank == src):
                if sending:  # activation forward, gradient back
                    dist.send(buf, peer, group=group)
                    dist.recv(buf, peer, group=group)
                else:
                    dist.recv(buf, peer, group=group)
                    dist.send(buf, peer, group=group)

            times = [t / 2 for t in self._time(round_trip, budget, group, peer=peer)]
            out.append({"kind": step.kind, "op": SEND_RECV, "size": buf.numel() * 4,
                        "module": module, "ranks": [src, dst], "times_s": times})
        return out

    def _time(self, fn, budget: float, group, peer: int | None = None) -> list[float]:
        """Seconds of each timed iteration of `fn`: `warmup` untimed, then as many timed
        iterations as fit the budget (at most `iters`), the count agreed by the group (or the
        peer pair), so that iteration i is the same collective on every member."""
        warm = max(self.settings.warmup, 1)
        start = time.perf_counter()
        for _ in range(warm):
            fn()
        self.sync()
        per_iter = (time.perf_counter() - start) / warm
        iters = min(self.settings.iters, max(1, int(budget / max(per_iter, 1e-9))))
        iters = self._agree(iters, group, peer)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            self.slow.start()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
            self.slow.delay(self.sync)
        return times

    def _agree(self, iters: int, group, peer: int | None) -> int:
        """The smallest count proposed in the group (or by the two ends of a link)."""
        value = torch.tensor([iters], dtype=torch.int64, device=self.device)
        if peer is None:
            dist.all_reduce(value, op=dist.ReduceOp.MIN, group=group)
            return int(value.item())
        other = torch.empty_like(value)
        if self.rank < peer:
            dist.send(value, peer, group=group)
            dist.recv(other, peer, group=group)
        else:
            dist.recv(other, peer, group=group)
            dist.send(value, peer, group=group)
        return min(iters, int(other.item()))


def share_records(store, rank: int, records: list[dict]) -> None:
    """Leave this rank's records in the run's store for rank 0."""
    store.set(f"{_KEY}records/{rank}", json.dumps(records))


def gather_records(store, world_size: int, timeout_s: float) -> list[dict]:
    """Rank 0: every rank's records, each with its `rank` added (waits up to `timeout_s`)."""
    keys = [f"{_KEY}records/{r}" for r in range(world_size)]
    store.wait(keys, timedelta(seconds=timeout_s))
    out = []
    for rank, key in enumerate(keys):
        out += [dict(rec, rank=rank) for rec in json.loads(store.get(key))]
    return out


def step_text(step: Step) -> str:
    """A step as the console and the report name it: 'tp all_reduce 64KiB'."""
    return f"{step.kind} {step.op} {size_text(step.size)}"


def store_progress(store):
    """A `progress(index, steps)` writing 'i/n kind op size' to the store for the launcher."""
    def progress(index: int, steps: list[Step]) -> None:
        store.set(f"{_KEY}progress", f"{index + 1}/{len(steps)} {step_text(steps[index])}")
    return progress


def read_progress(store) -> str | None:
    """The last progress line rank 0 wrote, or None before the stage (launcher side)."""
    key = f"{_KEY}progress"
    return store.get(key).decode() if store.check([key]) else None
