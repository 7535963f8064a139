"""Names of the process groups each module gets, in creation order (SPEC section 3).

A grid group's name lists its dims joined by '+'. This is the builder's list (what it builds)
and the plan's; the oracle and the verifier check SPEC's list of their own
(`layout_oracle.SPEC_KINDS`), so a kind dropped here fails verification.
"""

GRID_DIMS = ("tp", "cp", "ep", "pp", "dp")  # first varies fastest
GRID_GROUPS = ("tp", "cp", "ep", "pp", "dp", "dp+cp", "tp+pp", "tp+ep+pp", "dp+ep",
               "tp+cp+ep+pp+dp")
EMBEDDING_GROUPS = ("pos_embd", "embd")
ALL_GROUPS = GRID_GROUPS + EMBEDDING_GROUPS


def dims_of(group: str) -> list[str]:
    """The grid dims a grid group spans, e.g. 'tp+pp' -> ['tp', 'pp']."""
    dims = group.split("+")
    unknown = [d for d in dims if d not in GRID_DIMS]
    if unknown:
        raise ValueError(f"unknown grid dim(s) {unknown} in group {group!r}")
    return dims
