"""The verification stage (SPEC section 5).

Every rank runs one all-reduce of its rank in each of its groups (all in flight at once), then
encodes every group it belongs to as a fixed-size fingerprint (`fingerprint.py`) and sends that,
with its host name as 64 bytes, to rank 0 in one gather: O(groups) int64s per rank, no pickling.
Rank 0 compares them with the oracle (`layout_oracle.py`) and with each other, vectorised, and
broadcasts the verdict. Only when something is wrong do ranks send their full member
lists, so that the report can show expected against actual members.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from . import fingerprint as fpr
from .group_kinds import ALL_GROUPS
from .layout_oracle import ExpectedLayout
from .mimo_builder import MimoGroups, comm_device

STAGE_SLOT = len(ALL_GROUPS)  # the slot after the groups holds (is_first, is_last, 0, 0, 0)
SLOTS = STAGE_SLOT + 1


@dataclass
class Mismatch:
    """One disagreement: `check` is 'members', 'collective', 'consistency' or 'stage'."""

    rank: int
    module: str
    group: str
    check: str
    expected: object
    actual: object


@dataclass
class Verdict:
    """What rank 0 found; other ranks get `passed` only."""

    passed: bool
    mismatches: list[Mismatch] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)


def _members(group) -> list[int] | None:
    return None if group is None else sorted(dist.get_process_group_ranks(group))


def local_record(groups: MimoGroups) -> tuple[np.ndarray, list]:
    """Run the all-reduce in every group; return fingerprints (M, SLOTS, 5) and member lists.

    `groups`: a MimoGroups, or a `pg_collections.MimoProcessGroups`, whose groups are read as
    they sit in each module's ProcessGroupCollection (SPEC section 5): anything with
    `module_names`, `group(module, kind)` and `stage(module)`.

    Collective: all ranks visit (module, group) in the same order, so each all-reduce meets
    all its members. Each group object is all-reduced once (a builder that handed one object
    to several slots is checked once for them), and all of them are in flight together: their
    latencies overlap.
    """
    device, me = comm_device(), dist.get_rank()
    record = np.zeros((len(groups.module_names), SLOTS, fpr.N_FIELDS), dtype=np.int64)
    slots: dict[int, tuple[object, list]] = {}  # id(group) -> (group, [(m, k), ...])
    members: list[list] = []
    for m, name in enumerate(groups.module_names):
        module_members = []
        for k, kind in enumerate(ALL_GROUPS):
            group = groups.group(name, kind)
            ranks = _members(group)
            module_members.append(ranks)
            record[m, k] = fpr.of_members(ranks, 0)
            if group is not None:
                slots.setdefault(id(group), (group, []))[1].append((m, k))
        record[m, STAGE_SLOT, :2] = groups.stage(name)
        members.append(module_members)
    pending = []
    for group, where in slots.values():
        t = torch.tensor([me], dtype=torch.int64, device=device)
        pending.append((dist.all_reduce(t, group=group, async_op=True), t, where))
    for work, t, where in pending:
        work.wait()
        for m, k in where:
            record[m, k, 4] = int(t.item())
    return record, members


HOST_BYTES = 64  # a rank's host name travels as this many bytes (longer names are cut)


def encode_host(host: str) -> np.ndarray:
    """A host name as HOST_BYTES // 8 int64s (UTF-8, zero-padded)."""
    raw = host.encode()[:HOST_BYTES].ljust(HOST_BYTES, b"\0")
    return np.frombuffer(raw, dtype=np.int64).copy()


def decode_host(words: np.ndarray) -> str:
    return np.ascontiguousarray(words, dtype=np.int64).tobytes().rstrip(b"\0").decode(
        errors="replace")


def expected_records(layout: ExpectedLayout) -> np.ndarray:
    """Fingerprints every rank should report: (W, M, SLOTS, 5), from the oracle alone."""
    w = layout.world_size
    out = np.zeros((w, len(layout.modules), SLOTS, fpr.N_FIELDS), dtype=np.int64)
    for m, mod in enumerate(layout.modules.values()):
        for k, kind in enumerate(ALL_GROUPS):
            rows = fpr.of_rows(mod.groups[kind])
            idx = mod.group_index[kind]
            inside = idx >= 0
            out[inside, m, k] = rows[idx[inside]]
        out[:, m, STAGE_SLOT, 0] = mod.first_stage
        out[:, m, STAGE_SLOT, 1] = mod.last_stage
    return out


def inconsistent_ranks(actual: np.ndarray) -> np.ndarray:
    """Mask (W, M, SLOTS) of ranks whose reported group is not reported by exactly its members.

    For each (module, group kind), ranks reporting the same fingerprint must be exactly the set
    that fingerprint describes: as many as its size, same min, max and set-hash.
    """
    w, n_mod, _, _ = actual.shape
    bad = np.zeros(actual.shape[:3], dtype=bool)
    ranks = np.arange(w, dtype=np.int64)
    rank_hash = fpr.mix(ranks)
    for m in range(n_mod):
        for k in range(STAGE_SLOT):
            fps = actual[:, m, k, :4]
            present = fps[:, 0] > 0
            if not present.any():
                continue
            uniq, inv = np.unique(fps[present], axis=0, return_inverse=True)
            inv = inv.ravel()
            who = ranks[present]
            count = np.bincount(inv, minlength=len(uniq))
            lo = np.full(len(uniq), np.iinfo(np.int64).max)
            hi = np.full(len(uniq), -1)
            np.minimum.at(lo, inv, who)
            np.maximum.at(hi, inv, who)
            h = np.zeros(len(uniq), dtype=np.uint64)
            with np.errstate(over="ignore"):
                np.add.at(h, inv, rank_hash[present])
            ok = ((count == uniq[:, 0]) & (lo == uniq[:, 1]) & (hi == uniq[:, 2])
                  & (h.view(np.int64) == uniq[:, 3]))
            bad[who, m, k] = ~ok[inv]
    return bad


# At most this many (rank, module, group) slots get their actual member lists in the report;
# further mismatches show the actual group's size, min and max (the failure path stays bounded).
MAX_DETAILED = 256


def _flags(actual: np.ndarray, expected: np.ndarray):
    """Masks (W, M, SLOTS): members differ, all-reduce sum differs, members disagree."""
    diff_members = (actual[..., :4] != expected[..., :4]).any(axis=-1)
    diff_sum = actual[..., 4] != expected[..., 4]
    return diff_members, diff_sum, inconsistent_ranks(actual)


def _summary(fp: np.ndarray) -> dict | None:
    return None if fp[0] == 0 else {"size": int(fp[0]), "min": int(fp[1]), "max": int(fp[2])}


def _mismatches(actual, expected, flags, layout: ExpectedLayout, detail: dict) -> list[Mismatch]:
    """List every disagreement; `detail[(rank, m, k)]` holds the actual members where collected."""
    names = list(layout.modules)
    diff_members, diff_sum, inconsistent = flags
    out: list[Mismatch] = []
    for rank, m, k in zip(*np.nonzero(diff_members | diff_sum | inconsistent)):
        rank, m, k = int(rank), int(m), int(k)
        mod = layout.modules[names[m]]
        if k == STAGE_SLOT:
            exp = {"first": bool(expected[rank, m, k, 0]), "last": bool(expected[rank, m, k, 1])}
            act = {"first": bool(actual[rank, m, k, 0]), "last": bool(actual[rank, m, k, 1])}
            out.append(Mismatch(rank, names[m], "stage", "stage", exp, act))
            continue
        kind = ALL_GROUPS[k]
        exp_members = mod.members(kind, rank)
        act_members = detail.get((rank, m, k), _summary(actual[rank, m, k]))
        if diff_members[rank, m, k]:
            out.append(Mismatch(rank, names[m], kind, "members", exp_members, act_members))
        elif diff_sum[rank, m, k]:
            out.append(Mismatch(rank, names[m], kind, "collective",
                                int(expected[rank, m, k, 4]), int(actual[rank, m, k, 4])))
        else:
            out.append(Mismatch(rank, names[m], kind, "consistency", exp_members, act_members))
    return out


def _collect_details(slots: torch.Tensor | None, members: list, device) -> dict:
    """Failure path, collective: rank 0 names up to MAX_DETAILED (rank, module, group) slots;
    each rank sends the member lists of its own slots only. Rank 0 gets {(r, m, k): members}."""
    me = dist.get_rank()
    count = torch.tensor([0 if slots is None else len(slots)], dtype=torch.int64, device=device)
    dist.broadcast(count, src=0)
    if int(count.item()) == 0:
        return {}
    if me != 0:
        slots = torch.empty((int(count.item()), 3), dtype=torch.int64, device=device)
    dist.broadcast(slots, src=0)
    wanted = [tuple(int(v) for v in row) for row in slots.cpu().tolist() if row[0] == me]
    mine = [((r, m, k), members[m][k]) for r, m, k in wanted]
    gathered: list | None = [None] * dist.get_world_size() if me == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    return {key: value for part in (gathered or []) for key, value in part}


def verify(groups: MimoGroups, layout: ExpectedLayout, host: str) -> tuple[Verdict, float]:
    """Check this world's groups against `layout`; collective. Returns (verdict, seconds).

    `groups`: a MimoGroups or a MimoProcessGroups (then the collections' groups are
    checked), as `local_record` takes. `host` names this rank's node in the report. Only
    rank 0 gets the mismatches.
    """
    t0 = time.perf_counter()
    if groups.module_names != list(layout.modules):
        raise ValueError(f"built modules {groups.module_names} differ from the expected "
                         f"{list(layout.modules)}")
    me, world = dist.get_rank(), dist.get_world_size()
    if world != layout.world_size:
        raise ValueError(f"world size {world} differs from the expected {layout.world_size}")
    record, members = local_record(groups)
    device = comm_device()
    mine = torch.from_numpy(np.concatenate([record.ravel(), encode_host(host)])).to(device)
    gathered = torch.empty((world, mine.numel()) if me == 0 else (0,), dtype=torch.int64,
                           device=device)
    dist.gather(mine, list(gathered) if me == 0 else None, dst=0)

    verdict_flag = torch.zeros(1, dtype=torch.int64, device=device)
    hosts: list[str] = []
    if me == 0:
        rows = gathered.cpu().numpy()
        actual = rows[:, :record.size].reshape((world,) + record.shape)
        hosts = [decode_host(r) for r in rows[:, record.size:]]
        expected = expected_records(layout)
        flags = _flags(actual, expected)
        verdict_flag[0] = int(any(f.any() for f in flags))
    dist.broadcast(verdict_flag, src=0)
    passed = not bool(verdict_flag.item())

    mismatches: list[Mismatch] = []
    if not passed:  # failure path only: member lists of (a bounded number of) flagged slots
        slots = None
        if me == 0:
            need = (flags[0] | flags[2])[:, :, :STAGE_SLOT]
            chosen = np.argwhere(need)[:MAX_DETAILED]  # Fortran-ordered: copy row-major
            slots = torch.from_numpy(np.ascontiguousarray(chosen, dtype=np.int64))
            slots = slots.to(device)
        detail = _collect_details(slots, members, device)
        if me == 0:
            mismatches = _mismatches(actual, expected, flags, layout, detail)
    return Verdict(passed, mismatches, hosts), time.perf_counter() - t0
