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


def of_members(members: list[int] | None) -> np.ndarray:
    """One group's fingerprint (4,) from its member list (None: absent, all zeros)."""
    if members is None:
        return np.zeros(N_FIELDS, dtype=np.int64)
    return of_rows(np.asarray([sorted(members)], dtype=np.int64))[0]


def of_name(name: str | None) -> int:
    """A nonzero int64 for a group's torch name (0: unknown or absent)."""
    if name is None:
        return 0
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True) or 1
