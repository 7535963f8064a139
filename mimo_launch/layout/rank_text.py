"""Rank lists as short text: runs, abbreviated past a few, so output stays bounded at scale."""

from __future__ import annotations

import numpy as np


def _runs(ranks: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive runs [(first, last), ...] of sorted, distinct ranks."""
    if len(ranks) == 0:
        return []
    breaks = np.flatnonzero(np.diff(ranks) != 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(ranks) - 1]])
    return [(int(ranks[s]), int(ranks[e])) for s, e in zip(starts, ends)]


def format_rank_set(ranks, limit: int = 6) -> str:
    """Sorted ranks as runs, e.g. '0-7, 64-71, ... 4032-4039 (512 ranks in 64 runs of 8,
    every 64)'; at most `limit` runs are written out."""
    ranks = np.unique(np.asarray(ranks, dtype=np.int64))
    runs = _runs(ranks)
    text = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs]
    if len(runs) <= limit:
        return ", ".join(text)
    shown = ", ".join(text[: limit - 1]) + f", ... {text[-1]}"
    lengths = {b - a + 1 for a, b in runs}
    starts = np.array([a for a, _ in runs])
    steps = set(np.diff(starts).tolist())
    detail = f"{len(ranks)} ranks in {len(runs)} runs"
    if len(lengths) == 1:
        detail += f" of {lengths.pop()}"
    if len(steps) == 1:
        detail += f", every {steps.pop()}"
    return f"{shown} ({detail})"
