"""World-wide creation of process groups: one new group per member list, every call.

`dist.new_group` is collective over the default group: every rank must call it the same number
of times, in the same order, with the same ranks, because torch names a group by a per-process
counter that members use as their store prefix. `GroupFactory.new_subgroups` is called by every
rank with the same full enumeration and returns the group this rank belongs to, or None. Every
call makes new groups, also for member lists made before: each (grid, kind) owns its group
object, as `HyperCommGrid.create_pg` gives (SPEC section 1), so destroying one never breaks
another.

Fast path: for a group this rank is not in, torch's `new_group` only advances that counter
(`compat.can_skip_non_member_groups`). Then the factory advances the counter itself and calls
`dist.new_group` only for its own groups: O(groups it belongs to) calls per rank instead of
O(groups in the world), with the counter, and so every group's name, exactly as if it had.
Where that does not hold it calls `new_group` for every list, as torch requires. Membership is
vectorised with numpy; every rank's state evolves identically.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from datetime import timedelta

import numpy as np
import torch.distributed as dist

from ..compat import can_skip_non_member_groups, is_group_member, skip_non_member_groups


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


class GroupFactory:
    """Creates process groups in the current default process group (one world), for one build.

    `backend` and `timeout` go to every `dist.new_group` (None: torch's defaults; pass the
    run's timeout so that every collective in these groups is bounded by it).
    The non-member skip is taken where it is exact (`compat.can_skip_non_member_groups`).
    `new_group_calls` counts world-wide group creations (the same on every rank);
    `member_calls` counts the `dist.new_group` calls this rank really made.
    """

    def __init__(self, backend: str | None = None, timeout: timedelta | None = None):
        self.backend = backend
        self.timeout = timeout
        self.new_group_calls = 0
        self.member_calls = 0
        self._rank = dist.get_rank()
        self._world_size = dist.get_world_size()
        self._skip = can_skip_non_member_groups()

    def new_subgroups(self, enumeration: Iterable[Sequence[int]]) -> dist.ProcessGroup | None:
        """Create one group per member list of `enumeration` (lists of global ranks, any
        order within a list, ragged widths allowed), in order, on every rank; return this
        rank's group (the last one it is in), or None. Collective over the world.

        Raises ValueError for a rank outside the world or a list with a repeated rank.
        """
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
        member_rows = np.flatnonzero((block == self._rank).any(axis=1)).tolist()
        if not self._skip:
            mine = None
            for row in block.tolist():
                group = self._make(row)
                mine = group if self._rank in row else mine
            return mine
        mine, done = None, 0
        for i in member_rows:
            self._skip_rows(i - done)
            mine = self._make(block[i].tolist())
            done = i + 1
        self._skip_rows(len(block) - done)
        return mine

    def count_calls_made_elsewhere(self, count: int) -> None:
        """Count `count` `dist.new_group` calls that every rank made outside this factory
        (e.g. inside `HyperCommGrid.create_pg`)."""
        self.new_group_calls += count
        self.member_calls += count

    def _skip_rows(self, count: int) -> None:
        skip_non_member_groups(count)
        self.new_group_calls += count

    def _make(self, ranks: list[int]) -> dist.ProcessGroup | None:
        group = dist.new_group(ranks, backend=self.backend, timeout=self.timeout)
        self.new_group_calls += 1
        self.member_calls += 1
        return group if is_group_member(group) else None
