"""World-wide creation of process groups, once per distinct member list.

`dist.new_group` is collective over the default group: every rank must call it the same number
of times, in the same order, with the same ranks. `GroupFactory.group_for` is called by every
rank with the same full enumeration; it creates each distinct member list once (so `dp+cp`
equal to `dp` when CP=1 costs no second group) and returns the group this rank belongs to, or
None. Every rank's cache evolves identically, so the dedup never puts ranks out of step.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Iterable, Sequence

import torch.distributed as dist

_MISSING = object()


class GroupFactory:
    """Creates and owns the groups of one default process group (one world)."""

    def __init__(self, backend: str | None = None, timeout: timedelta | None = None):
        self.backend = backend
        self.timeout = timeout
        self.new_group_calls = 0
        self._rank = dist.get_rank()
        self._groups: dict[tuple[int, ...], dist.ProcessGroup | None] = {}

    def group_for(self, enumeration: Iterable[Sequence[int]]) -> dist.ProcessGroup | None:
        """Ensure a group exists for every member list; return this rank's (None if none)."""
        mine = None
        for ranks in enumeration:
            key = tuple(int(r) for r in ranks)
            group = self._groups.get(key, _MISSING)
            if group is _MISSING:
                group = dist.new_group(list(key), backend=self.backend, timeout=self.timeout)
                self.new_group_calls += 1
                if self._rank not in key or group == dist.GroupMember.NON_GROUP_MEMBER:
                    group = None
                self._groups[key] = group
            if group is not None and self._rank in key:
                mine = group
        return mine

    @property
    def distinct_groups(self) -> int:
        return len(self._groups)

    def destroy(self) -> None:
        """Destroy every group this rank is a member of; the factory is empty afterwards."""
        for group in {id(g): g for g in self._groups.values() if g is not None}.values():
            dist.destroy_process_group(group)
        self._groups.clear()


_FACTORIES: dict[int, GroupFactory] = {}


def world_factory(timeout: timedelta | None = None) -> GroupFactory:
    """The factory of the current default process group (created on first use)."""
    key = id(dist.group.WORLD)
    factory = _FACTORIES.get(key)
    if factory is None:
        factory = GroupFactory(backend=dist.get_backend(), timeout=timeout)
        _FACTORIES.clear()  # a factory of an earlier, destroyed world is stale
        _FACTORIES[key] = factory
    return factory


def destroy_world_groups() -> None:
    """Destroy the groups made for the current world; call before destroying the world."""
    for factory in _FACTORIES.values():
        factory.destroy()
    _FACTORIES.clear()
