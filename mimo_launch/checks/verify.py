"""The verification stage (SPEC section 5): members first, then a collective in every group.

Step 1, no collective in any group checked: every rank encodes each (module, kind) slot of its
own as (size, min, max, set-hash) of the members (`fingerprint.py`), torch's name of the group
and its timeout, plus its stage flags and host name, in one fixed-size int64 record, and rank 0
gathers them over the default group. Rank 0 compares them with the oracle (`layout_oracle.py`,
whose list of kinds is its own) and with each other, vectorised, and broadcasts the verdict.
A wrong member, a group whose members disagree on torch's name (cross-wired), a timeout other
than the run's or a wrong stage flag fails here, named by rank, module and group, before
anything could hang on it. Only then does each rank all-reduce its rank in each of its groups
(all in flight at once, each wait bounded by `timeout_s`) and compare the sum with its
members' sum; one all-reduce over the world tells everyone whether any rank saw a wrong sum or
an all-reduce that did not complete. Only when something is wrong do ranks send more (member
lists, sums) to rank 0 for the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from .. import compat
from ..checks import fingerprint as fpr
from ..layout.layout_oracle import SPEC_KINDS, ExpectedLayout
from ..mimo_builder import MimoGroups, comm_device

KINDS = SPEC_KINDS  # what is checked: the oracle's list, not the builder's (group_kinds.py)
STAGE_SLOT = len(KINDS)  # the slot after the groups holds (is_first, is_last, 0, ...)
SLOTS = STAGE_SLOT + 1
NAME, TIMEOUT = fpr.N_FIELDS, fpr.N_FIELDS + 1  # record fields after the fingerprint
N_RECORD = fpr.N_FIELDS + 2
NOT_COMPLETED = -1  # an all-reduce result that did not arrive within timeout_s


@dataclass
class Mismatch:
    """One disagreement. `check`: 'members' (members differ from the oracle's), 'consistency'
    (members of one group disagree on which torch group it is), 'timeout' (seconds differ from
    the run's), 'stage' or 'collective' (the all-reduce sum differs, or, with `actual`
    'did not complete within N s', never arrived)."""

    rank: int
    module: str
    group: str
    check: str
    expected: object
    actual: object


@dataclass
class Verdict:
    """What rank 0 found; other ranks get `passed` only. `skipped`: the checks not done (a name
    of `report.CHECKS`) and why."""

    passed: bool
    mismatches: list[Mismatch] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _group_of(groups, module: str, kind: str):
    """The group in the (module, kind) slot; None where the builder made no such kind."""
    try:
        return groups.group(module, kind)
    except KeyError:
        return None


def local_record(groups: MimoGroups) -> tuple[np.ndarray, list, dict]:
    """This rank's record (M, SLOTS, N_RECORD), member lists [m][k], and its distinct groups
    {id: (group, [(m, k), ...])}; no collective.

    `groups`: a MimoGroups, or a `pg_collections.MimoProcessGroups`, whose groups are read as
    they sit in each module's ProcessGroupCollection (SPEC section 5): anything with
    `module_names`, `group(module, kind)` and `stage(module)`. Timeout: seconds x 1000, -1
    where torch does not expose it (`compat.group_timeout`).
    """
    device = comm_device()
    record = np.zeros((len(groups.module_names), SLOTS, N_RECORD), dtype=np.int64)
    distinct: dict[int, tuple[object, list]] = {}
    members: list[list] = []
    for m, name in enumerate(groups.module_names):
        module_members = []
        for k, kind in enumerate(KINDS):
            group = _group_of(groups, name, kind)
            ranks = None if group is None else sorted(dist.get_process_group_ranks(group))
            module_members.append(ranks)
            if group is not None:
                record[m, k, NAME] = fpr.of_name(compat.group_name(group))
                seconds = compat.group_timeout(group, device)
                record[m, k, TIMEOUT] = -1 if seconds is None else round(seconds * 1000)
                distinct.setdefault(id(group), (group, []))[1].append((m, k))
        record[m, STAGE_SLOT, :2] = groups.stage(name)
        record[m, :STAGE_SLOT, :fpr.N_FIELDS] = fpr.of_member_lists(module_members)
        members.append(module_members)
    return record, members, distinct


def all_reduce_ranks(distinct: dict, shape: tuple, timeout_s: float | None) -> np.ndarray:
    """All-reduce this rank's number in each distinct group, all in flight at once; return the
    sums per (module, kind) slot (0 where absent, NOT_COMPLETED where a wait failed or passed
    `timeout_s`). Collective over each group's members; each group object is reduced once."""
    me, device = dist.get_rank(), comm_device()
    sums = np.zeros(shape, dtype=np.int64)
    pending = []
    for group, where in distinct.values():
        t = torch.tensor([me], dtype=torch.int64, device=device)
        pending.append((dist.all_reduce(t, group=group, async_op=True), t, where))
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    for work, t, where in pending:
        try:
            if deadline is None:
                work.wait()
            else:
                work.wait(timedelta(seconds=max(deadline - time.monotonic(), 0.001)))
            value = int(t.item())
        except RuntimeError:  # gloo: timed out or aborted
            value = NOT_COMPLETED
        for m, k in where:
            sums[m, k] = value
    return sums


HOST_BYTES = 64  # a rank's host name travels as this many bytes (longer names are cut)


def encode_host(host: str) -> np.ndarray:
    """A host name as HOST_BYTES // 8 int64s (UTF-8, zero-padded)."""
    raw = host.encode()[:HOST_BYTES].ljust(HOST_BYTES, b"\0")
    return np.frombuffer(raw, dtype=np.int64).copy()


def decode_host(words: np.ndarray) -> str:
    return np.ascontiguousarray(words, dtype=np.int64).tobytes().rstrip(b"\0").decode(
        errors="replace")


def expected_records(layout: ExpectedLayout) -> tuple[np.ndarray, np.ndarray]:
    """From the oracle alone: fingerprints (W, M, SLOTS, 4), stage flags in the stage slot,
    and all-reduce sums (W, M, len(KINDS)), 0 where a rank has no group."""
    w = layout.world_size
    out = np.zeros((w, len(layout.modules), SLOTS, fpr.N_FIELDS), dtype=np.int64)
    sums = np.zeros((w, len(layout.modules), STAGE_SLOT), dtype=np.int64)
    for m, mod in enumerate(layout.modules.values()):
        for k, kind in enumerate(KINDS):
            idx = mod.group_index[kind]
            inside = idx >= 0
            out[inside, m, k] = fpr.of_rows(mod.groups[kind])[idx[inside]]
            sums[inside, m, k] = mod.groups[kind].sum(axis=1)[idx[inside]]
        out[:, m, STAGE_SLOT, 0] = mod.first_stage
        out[:, m, STAGE_SLOT, 1] = mod.last_stage
    return out, sums


def inconsistent_ranks(actual: np.ndarray) -> np.ndarray:
    """Mask (W, M, SLOTS) of ranks whose reported group is not reported by exactly its members.

    For each (module, kind), ranks reporting the same (fingerprint, torch name) must be exactly
    the set that fingerprint describes: as many as its size, same min, max and set-hash. Two
    members that hold different torch groups with the same members (cross-wired: their
    collectives would not meet) fail this.
    """
    w, n_mod, _, _ = actual.shape
    bad = np.zeros(actual.shape[:3], dtype=bool)
    ranks = np.arange(w, dtype=np.int64)
    rank_hash = fpr.mix(ranks)
    for m in range(n_mod):
        for k in range(STAGE_SLOT):
            fps = actual[:, m, k, :NAME + 1]
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


def timeout_flags(actual: np.ndarray, timeout_s: float | None) -> np.ndarray:
    """Mask (W, M, SLOTS): a present group whose readable timeout is not `timeout_s`."""
    bad = np.zeros(actual.shape[:3], dtype=bool)
    if timeout_s is not None:
        t = actual[:, :, :STAGE_SLOT, TIMEOUT]
        bad[:, :, :STAGE_SLOT] = (t >= 0) & (actual[:, :, :STAGE_SLOT, 0] > 0) & (
            t != round(timeout_s * 1000))
    return bad


# At most this many (rank, module, group) slots get their actual member lists in the report;
# further mismatches show the actual group's size, min and max (the failure path stays bounded).
MAX_DETAILED = 256
_CHECKS = ("members", "consistency", "timeout")  # step 1's per-slot checks, in report order


def member_flags(actual: np.ndarray, expected: np.ndarray, timeout_s: float | None) -> dict:
    """Step 1's masks (W, M, SLOTS) by check: members (incl. the stage slot), consistency,
    timeout."""
    return {"members": (actual[..., :fpr.N_FIELDS] != expected).any(axis=-1),
            "consistency": inconsistent_ranks(actual),
            "timeout": timeout_flags(actual, timeout_s)}


def _summary(fp: np.ndarray) -> dict | None:
    return None if fp[0] == 0 else {"size": int(fp[0]), "min": int(fp[1]), "max": int(fp[2])}


def member_mismatches(actual, flags: dict, layout: ExpectedLayout, detail: dict,
                      timeout_s: float | None) -> list[Mismatch]:
    """List step 1's disagreements, by rank, module, kind; `detail[(rank, m, k)]` holds the
    actual members where collected. A slot whose members differ is not also reported as
    inconsistent."""
    names = list(layout.modules)
    out: list[Mismatch] = []
    any_flag = flags["members"] | flags["consistency"] | flags["timeout"]
    for rank, m, k in zip(*np.nonzero(any_flag)):
        rank, m, k = int(rank), int(m), int(k)
        mod = layout.modules[names[m]]
        if k == STAGE_SLOT:
            exp = {"first": bool(mod.first_stage[rank]), "last": bool(mod.last_stage[rank])}
            act = {"first": bool(actual[rank, m, k, 0]), "last": bool(actual[rank, m, k, 1])}
            out.append(Mismatch(rank, names[m], "stage", "stage", exp, act))
            continue
        kind = KINDS[k]
        exp_members = mod.members(kind, rank)
        act_members = detail.get((rank, m, k), _summary(actual[rank, m, k]))
        if flags["members"][rank, m, k]:
            out.append(Mismatch(rank, names[m], kind, "members", exp_members, act_members))
        elif flags["consistency"][rank, m, k]:
            out.append(Mismatch(rank, names[m], kind, "consistency", exp_members, act_members))
        if flags["timeout"][rank, m, k]:
            out.append(Mismatch(rank, names[m], kind, "timeout", timeout_s,
                                int(actual[rank, m, k, TIMEOUT]) / 1000))
    return out


def collective_mismatches(sums: np.ndarray, expected_sums: np.ndarray, layout: ExpectedLayout,
                          timeout_s: float | None) -> list[Mismatch]:
    """Step 2's disagreements from every rank's sums (W, M, len(KINDS)): a wrong sum, or one
    that never arrived (every member whose all-reduce did not complete is named)."""
    names = list(layout.modules)
    late = f"did not complete within {timeout_s:g} s" if timeout_s is not None else "failed"
    return [Mismatch(int(r), names[m], KINDS[k], "collective", int(expected_sums[r, m, k]),
                     late if sums[r, m, k] == NOT_COMPLETED else int(sums[r, m, k]))
            for r, m, k in zip(*np.nonzero(sums != expected_sums))]


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


def _gather_rows(mine: np.ndarray, device) -> np.ndarray | None:
    """Gather every rank's int64 row (same length everywhere) to rank 0: (W, n) there, else
    None. Collective over the default group."""
    me, world = dist.get_rank(), dist.get_world_size()
    t = torch.from_numpy(np.ascontiguousarray(mine, dtype=np.int64)).to(device)
    out = torch.empty((world, t.numel()) if me == 0 else (0,), dtype=torch.int64, device=device)
    dist.gather(t, list(out) if me == 0 else None, dst=0)
    return out.cpu().numpy() if me == 0 else None


def _agree(flag: bool, device, src0: bool) -> bool:
    """Rank 0's flag to everyone (src0), or whether any rank's flag is set; collective."""
    t = torch.tensor([int(flag)], dtype=torch.int64, device=device)
    if src0:
        dist.broadcast(t, src=0)
    else:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


_SKIPPED_TIMEOUT = ("group timeouts: not checked, torch does not expose a group's timeout "
                    "here (compat.group_timeout)")


def verify(groups: MimoGroups, layout: ExpectedLayout, host: str,
           timeout_s: float | None = None) -> tuple[Verdict, float]:
    """Check this world's groups against `layout`; collective. Returns (verdict, seconds).

    `groups`: a MimoGroups or a MimoProcessGroups (then the collections' groups are
    checked), as `local_record` takes. `host` names this rank's node in the report.
    `timeout_s`: the run's timeout; every group must have been made with it (where torch
    exposes it, else `Verdict.skipped` says so) and bounds each all-reduce's wait (None: no
    timeout check, waits as long as each group's own timeout). Only rank 0 gets the
    mismatches. Raises ValueError where the modules or the world size differ from `layout`.
    """
    t0 = time.perf_counter()
    if groups.module_names != list(layout.modules):
        raise ValueError(f"built modules {groups.module_names} differ from the expected "
                         f"{list(layout.modules)}")
    me, world = dist.get_rank(), dist.get_world_size()
    if world != layout.world_size:
        raise ValueError(f"world size {world} differs from the expected {layout.world_size}")
    record, members, distinct = local_record(groups)
    device = comm_device()
    rows = _gather_rows(np.concatenate([record.ravel(), encode_host(host)]), device)
    hosts: list[str] = []
    skipped: dict[str, str] = {}
    flags = {}
    if me == 0:
        actual = rows[:, :record.size].reshape((world,) + record.shape)
        hosts = [decode_host(r) for r in rows[:, record.size:]]
        expected, expected_sums = expected_records(layout)
        flags = member_flags(actual, expected, timeout_s)
        present = actual[:, :, :STAGE_SLOT, 0] > 0
        if timeout_s is not None and (actual[:, :, :STAGE_SLOT, TIMEOUT][present] < 0).any():
            skipped["timeout"] = _SKIPPED_TIMEOUT
            print(f"verification: {_SKIPPED_TIMEOUT}", flush=True)  # into rank 0's log
    if _agree(me == 0 and any(f.any() for f in flags.values()), device, src0=True):
        slots = None  # failure path only: member lists of (a bounded number of) flagged slots
        if me == 0:
            need = (flags["members"] | flags["consistency"])[:, :, :STAGE_SLOT]
            chosen = np.argwhere(need)[:MAX_DETAILED]
            slots = torch.from_numpy(np.ascontiguousarray(chosen, dtype=np.int64)).to(device)
        detail = _collect_details(slots, members, device)
        found = member_mismatches(actual, flags, layout, detail, timeout_s) if me == 0 else []
        return Verdict(False, found, hosts, skipped), time.perf_counter() - t0

    sums = all_reduce_ranks(distinct, (len(members), STAGE_SLOT), timeout_s)
    own = np.array([[0 if ranks is None else sum(ranks) for ranks in mod] for mod in members],
                   dtype=np.int64).reshape(sums.shape)
    if not _agree(bool((sums != own).any()), device, src0=False):
        return Verdict(True, [], hosts, skipped), time.perf_counter() - t0
    gathered = _gather_rows(sums.ravel(), device)
    found = []
    if me == 0:
        found = collective_mismatches(gathered.reshape((world,) + sums.shape), expected_sums,
                                      layout, timeout_s)
    return Verdict(False, found, hosts, skipped), time.perf_counter() - t0
