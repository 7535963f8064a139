"""Fixed-size fingerprints of rank sets, shared by the verifier's two sides.

A group is summarised by four int64s: (size, min, max, set-hash). The set-hash is the wrapping
sum of a 64-bit mix of each member, so it does not depend on order and two different sets
collide only by chance (about 2**-64). An absent group is all zeros.
"""

from __future__ import annotations

import hashlib

import numpy as np

FIELDS = ("size", "min", "max", "hash")
N_FIELDS = len(FIELDS)

_C0 = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)


def mix(ranks: np.ndarray) -> np.ndarray:
    """splitmix64 of each rank, as uint64 (wrapping arithmetic)."""
    z = ranks.astype(np.uint64) + _C0
    z = (z ^ (z >> np.uint64(30))) * _C1
    z = (z ^ (z >> np.uint64(27))) * _C2
    return z ^ (z >> np.uint64(31))


def set_hash(rows: np.ndarray) -> np.ndarray:
    """The set-hash of each row of a 2-D rank array, as int64."""
    with np.errstate(over="ignore"):
        return mix(rows).sum(axis=-1, dtype=np.uint64).view(np.int64)


def of_rows(rows: np.ndarray) -> np.ndarray:
    """Fingerprints (n, 4) of n groups given as rows of ascending members."""
    rows = np.asarray(rows, dtype=np.int64)
    size = np.full(rows.shape[0], rows.shape[1], dtype=np.int64)
    return np.stack([size, rows.min(axis=1), rows.max(axis=1), set_hash(rows)], axis=1)


def of_member_lists(lists: list[list[int] | None]) -> np.ndarray:
    """Fingerprints (n, 4) of n groups given as member lists, any order (None: absent, all
    zeros), in one vectorised pass (a rank's record: a few dozen small lists)."""
    out = np.zeros((len(lists), N_FIELDS), dtype=np.int64)
    present = [i for i, members in enumerate(lists) if members]
    if not present:
        return out
    sizes = np.array([len(lists[i]) for i in present], dtype=np.int64)
    flat = np.fromiter((r for i in present for r in lists[i]), dtype=np.int64, count=sizes.sum())
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    with np.errstate(over="ignore"):
        hashes = np.add.reduceat(mix(flat), starts, dtype=np.uint64).view(np.int64)
    out[present] = np.stack([sizes, np.minimum.reduceat(flat, starts),
                             np.maximum.reduceat(flat, starts), hashes], axis=1)
    return out


def of_name(name: str | None) -> int:
    """A nonzero int64 for a group's torch name (0: unknown or absent)."""
    if name is None:
        return 0
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True) or 1
