"""World-wide creation of process groups, once per distinct member list.

`dist.new_group` is collective over the default group: every rank must call it the same number
of times, in the same order, with the same ranks, because torch names a group by a per-process
counter that members use as their store prefix. `GroupFactory.group_for` is called by every rank
with the same full enumeration; it creates each distinct member list once (so `dp+cp` equal to
`dp` when CP=1, or the singletons of a size-1 dim shared by several kinds, cost no second group)
and returns the group this rank belongs to, or None.

Fast path: for a group this rank is not in, torch's `new_group` only advances that counter
(when the default group has no bound device to split from and no barrier after init is asked
for, `TORCH_DIST_INIT_BARRIER=1`). Then the factory advances the counter itself and calls
`dist.new_group` only for its own groups: O(groups it belongs to) calls per rank instead of
O(groups in the world), with the counter, and so every group's name, exactly as if it had.
Where that does not hold it calls `new_group` for every distinct list, as torch requires.
Dedup and membership are vectorised with numpy; every rank's state evolves identically.
"""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterable, Sequence

import numpy as np
import numpy.ma  # noqa: F401 - numpy imports it lazily inside np.unique (~0.1 s) in each rank
import torch.distributed as dist
from torch.distributed import distributed_c10d as _c10d


@contextmanager
def paused_gc():
    """Pause Python's cyclic GC: building enumerations of a large world allocates hundreds of
    thousands of small lists, and each GC pass then walks every object of torch and
    megatron-core (measured: most of a 16k-rank build). Nothing made meanwhile forms cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _rows(enumeration: Iterable[Sequence[int]]) -> list[np.ndarray]:
    """The enumeration as 2-D int64 blocks of equal-width rows (members ascending), in order."""
    if not isinstance(enumeration, np.ndarray):
        enumeration = list(enumeration)
        try:
            enumeration = np.asarray(enumeration, dtype=np.int64)
        except ValueError:  # ragged: one block per run of equal widths
            blocks, start = [], 0
            for i in range(1, len(enumeration) + 1):
                if i == len(enumeration) or len(enumeration[i]) != len(enumeration[start]):
                    blocks.append(np.sort(np.asarray(enumeration[start:i], dtype=np.int64), 1))
                    start = i
            return blocks
    if enumeration.size == 0:
        return []
    return [np.sort(enumeration.astype(np.int64, copy=False).reshape(len(enumeration), -1), 1)]


# Set to 1 to turn off the fast paths that rely on torch/megatron-core internals: skipping
# non-member new_group calls (group_factory) and the light HyperCommGrid import (mimo_builder).
NO_FAST_PATHS = "MIMO_LAUNCH_NO_FAST_PATHS"


def can_skip_non_members() -> bool:
    """Whether a non-member `new_group` call would only advance torch's group counter."""
    world = getattr(_c10d, "_world", None)
    default = dist.group.WORLD
    if os.environ.get(NO_FAST_PATHS) == "1":
        return False
    if callable(getattr(default, "new_group", None)):  # torch hands subgroups to it
        return False
    return (isinstance(getattr(world, "group_count", None), int)
            and getattr(default, "bound_device_id", None) is None
            and os.environ.get("TORCH_DIST_INIT_BARRIER", "0") != "1")


class GroupFactory:
    """Creates and owns the groups of one default process group (one world).

    `new_group_calls` counts world-wide group creations (distinct member lists; the same on
    every rank); `member_calls` counts the `dist.new_group` calls this rank really made.
    """

    def __init__(self, backend: str | None = None, timeout: timedelta | None = None,
                 skip_non_members: bool | None = None):
        self.backend = backend
        self.timeout = timeout
        self.new_group_calls = 0
        self.member_calls = 0
        self.world = dist.group.WORLD
        self._rank = dist.get_rank()
        self._world_size = dist.get_world_size()
        self._skip = can_skip_non_members() if skip_non_members is None else skip_non_members
        # member lists as the bytes of their int64 rows, ascending
        self._seen: set[bytes] = set()
        self._groups: dict[bytes, dist.ProcessGroup] = {}  # this rank's groups

    def group_for(self, enumeration: Iterable[Sequence[int]]) -> dist.ProcessGroup | None:
        """Ensure a group exists for every member list; return this rank's (None if none)."""
        mine = None
        with paused_gc():
            for block in _rows(enumeration):
                group = self._create_block(block)
                if group is not None:
                    mine = group
        return mine

    def _check(self, block: np.ndarray) -> None:
        if block.size and (block.min() < 0 or block.max() >= self._world_size):
            raise ValueError(f"ranks outside the world [0, {self._world_size}) in {block}")
        if block.shape[1] > 1 and (np.diff(block, axis=1) == 0).any():
            raise ValueError("a member list has duplicate ranks")

    def _create_block(self, block: np.ndarray) -> dist.ProcessGroup | None:
        self._check(block)
        # one bytes object per row (not tracked by the GC, hashed in C)
        keys = np.ascontiguousarray(block).view(np.dtype((np.void, 8 * block.shape[1])))
        keys = keys.ravel().tolist()
        mine_rows = np.flatnonzero((block == self._rank).any(axis=1))
        new = []  # indices of distinct lists not made before, in order
        for i, key in enumerate(keys):
            if key not in self._seen:
                self._seen.add(key)
                new.append(i)
        if not self._skip:
            for i in new:
                self._make(keys[i])
        else:
            member_new = set(mine_rows.tolist())
            pending = 0
            for i in new:
                if i in member_new:
                    self._advance(pending)
                    pending = 0
                    self._make(keys[i])
                else:
                    pending += 1
                    self.new_group_calls += 1
            self._advance(pending)
        if len(mine_rows) == 0:
            return None
        return self._groups.get(keys[int(mine_rows[-1])])

    def _advance(self, n: int) -> None:
        """Advance torch's group counter past `n` groups this rank is not in."""
        _c10d._world.group_count += n

    def _make(self, key: bytes) -> None:
        ranks = np.frombuffer(key, dtype=np.int64).tolist()
        group = dist.new_group(ranks, backend=self.backend, timeout=self.timeout)
        self.new_group_calls += 1
        self.member_calls += 1
        if self._rank in ranks and group != dist.GroupMember.NON_GROUP_MEMBER:
            self._groups[key] = group

    @property
    def distinct_groups(self) -> int:
        return len(self._seen)

    def destroy(self) -> None:
        """Destroy every group this rank is a member of; the factory is empty afterwards."""
        for group in {id(g): g for g in self._groups.values()}.values():
            dist.destroy_process_group(group)
        self._groups.clear()
        self._seen.clear()


_FACTORY: GroupFactory | None = None


def world_factory(timeout: timedelta | None = None,
                  skip_non_members: bool | None = None) -> GroupFactory:
    """The factory of the current default process group (created on first use; the arguments
    only count then). `skip_non_members=False` turns the fast path off (for comparisons).

    A factory belongs to one WORLD object (held, so its identity cannot be reused): after the
    world is destroyed and initialised again, a fresh factory starts, whoever destroyed it.
    """
    global _FACTORY
    world = dist.group.WORLD
    if _FACTORY is None or _FACTORY.world is not world:
        _FACTORY = GroupFactory(backend=dist.get_backend(), timeout=timeout,
                                skip_non_members=skip_non_members)
    return _FACTORY


def destroy_world_groups() -> None:
    """Destroy the groups made for the current world; call before destroying the world."""
    global _FACTORY
    if _FACTORY is not None:
        _FACTORY.destroy()
    _FACTORY = None
