"""The health stage's numbers (SPEC section 6): bandwidth by nccl-tests' conventions, suspects.

From every rank's timings (`health.py` records) rank 0 computes, per group (or p2p link), its
time (each member's mean iteration, then the slowest member's), algbw = size /
time and busbw = algbw x 2(n-1)/n (all-reduce), x (n-1)/n (all-gather, reduce-scatter), x 1
(send/recv), as nccl-tests' doc/PERFORMANCE.md defines them (GB/s = 1e9 bytes/s). Groups are
compared within their row, which is what "their kind's median" means in the report (SPEC
section 6: the median of their kind): the same kind, op, size and number of ranks, and the same
side of the node boundary (intra-node and inter-node groups differ by design); pipeline (`pp`)
and module-boundary (`boundary`) links are separate kinds, each compared with its own median, as
the table shows it. At each kind's largest size, a group compared with at least one other whose
busbw is below `threshold` x its row's median is a suspect. Ranks
and nodes are blamed for suspect groups as `_blamed` says; a health problem (exit 4) is a
blamed rank or node: one group alone below the threshold, on a busy CPU or a shared fabric,
is reported but is not a verdict. No torch here: the launcher and the report use it too.
"""

from __future__ import annotations

import statistics

from ..layout.rank_text import format_rank_set

GB = 1e9
SEND_RECV = "send_recv"
KIND_ORDER = ("tp", "cp", "ep", "dp", "dp+cp", "pp", "boundary")  # health.py's step order
OP_ORDER = ("all_reduce", "all_gather", "reduce_scatter", SEND_RECV)
INTRA, INTER = "intra-node", "inter-node"


def bus_factor(op: str, n: int) -> float:
    """nccl-tests' busbw / algbw for `op` over `n` ranks (send/recv: 1)."""
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter"):
        return (n - 1) / n
    return 1.0


def join_groups(records: list[dict], hosts: list[str]) -> list[dict]:
    """One entry per measured group or link: every member's record (`times_s`, seconds of
    each timed iteration) joined; its `time_s` the slowest member's mean iteration (its
    timed loop over its iterations, as nccl-tests and a plain loop measure); algbw/busbw in
    GB/s; its nodes and side."""
    joined: dict[tuple, dict] = {}
    for rec in records:
        key = (rec["kind"], rec["op"], rec["size"], rec["module"], tuple(rec["ranks"]))
        entry = joined.setdefault(key, {k: rec[k] for k in ("kind", "op", "size", "module",
                                                             "ranks")} | {"time_s": 0.0})
        entry["time_s"] = max(entry["time_s"], statistics.fmean(rec["times_s"]))
    out = []
    for entry in joined.values():
        nodes = sorted({hosts[r] for r in entry["ranks"]}) if hosts else []
        algbw = entry["size"] / entry["time_s"] / GB if entry["time_s"] > 0 else 0.0
        entry.update(nodes=nodes, where=INTRA if len(nodes) <= 1 else INTER,
                     algbw=algbw, busbw=algbw * bus_factor(entry["op"], len(entry["ranks"])))
        out.append(entry)
    return out


def _row_key(group: dict) -> tuple:
    return group["kind"], group["op"], group["size"], group["where"], len(group["ranks"])


def analyse(records: list[dict], hosts: list[str], threshold: float) -> dict:
    """The report's `health` section (without the settings): `rows` (per kind, op, size, side
    and ranks per group `n`: group count and busbw min/median/max), `groups` (each with
    `ratio` to its row's `busbw_median`, `judged` and `suspect`), `suspects` (groups as
    text, blamed ranks and nodes, with their scores in `rank_scores` / `node_scores`),
    `problem` and a one-line `headline`."""
    groups = join_groups(records, hosts)
    rows: dict[tuple, list[dict]] = {}
    largest = {}
    for g in groups:
        rows.setdefault(_row_key(g), []).append(g)
        largest[(g["kind"], g["op"])] = max(g["size"], largest.get((g["kind"], g["op"]), 0))
    for members in rows.values():  # each group against its row's (its kind's) median
        median = statistics.median(g["busbw"] for g in members)
        for g in members:
            g["ratio"] = g["busbw"] / median if median > 0 else 1.0
            g["judged"] = g["size"] == largest[(g["kind"], g["op"])] and len(members) >= 2
            g["suspect"] = g["judged"] and g["ratio"] < threshold
    table = []
    for (kind, op, size, where, n), members in rows.items():
        bws = [g["busbw"] for g in members]
        judged = any(g["judged"] for g in members)
        table.append({"kind": kind, "op": op, "size": size, "where": where, "n": n,
                      "groups": len(members), "busbw_min": min(bws),
                      "busbw_median": statistics.median(bws),
                      "busbw_max": max(bws), "suspects": sum(g["suspect"] for g in members),
                      "judged": judged})
    order = {kind: i for i, kind in enumerate(KIND_ORDER)}
    ops = {op: i for i, op in enumerate(OP_ORDER)}
    table.sort(key=lambda r: (order.get(r["kind"], len(order)), ops.get(r["op"], len(ops)),
                              r["size"], r["where"], r["n"]))
    suspect_ranks = _blamed(groups, lambda g: g["ranks"], threshold)
    suspect_nodes = _blamed(groups, lambda g: g["nodes"], threshold)
    suspects = {"groups": [_describe(g) for g in groups if g["suspect"]],
                "ranks": sorted(suspect_ranks), "nodes": sorted(suspect_nodes),
                "rank_scores": {str(r): suspect_ranks[r] for r in sorted(suspect_ranks)},
                "node_scores": {n: suspect_nodes[n] for n in sorted(suspect_nodes)}}
    return {"rows": table, "groups": groups, "suspects": suspects,
            "problem": bool(suspects["ranks"] or suspects["nodes"]),
            "headline": headline(groups, suspects, threshold)}


def _blamed(groups: list[dict], members, threshold: float) -> dict:
    """Members (ranks or nodes) to blame, each with its score. On each side of the node
    boundary a member's score is the median, over the distinct member sets of the judged
    groups it is in, of each set's median ratio over its ops (a dp group timed with three ops
    counts once, as its pipeline link does); a member is blamed when its score is below
    `threshold` and it has the lowest score of some suspect group's members (a slow rank drags
    its peers' groups down too, but their other groups are fine)."""
    per_set: dict[tuple, list[float]] = {}
    for g in groups:
        if g["judged"]:
            for m in members(g):
                per_set.setdefault((m, g["where"], tuple(g["ranks"])), []).append(g["ratio"])
    ratios: dict[tuple, list[float]] = {}
    for (m, where, _), r in per_set.items():
        ratios.setdefault((m, where), []).append(statistics.median(r))
    score = {key: statistics.median(r) for key, r in ratios.items()}
    blamed: dict = {}
    for g in groups:
        if g["suspect"]:
            scored = [(score[(m, g["where"])], m) for m in members(g)]
            low = min(s for s, _ in scored)
            for s, m in scored:
                if s == low and s < threshold:
                    blamed[m] = min(s, blamed.get(m, s))
    return blamed


def _describe(g: dict) -> str:
    return (f"{g['module']} {g['kind']} {g['op']} ranks {format_rank_set(g['ranks'])}: "
            f"{g['busbw']:.3g} GB/s ({g['ratio']:.2f}x median)")


def headline(groups: list[dict], suspects: dict, threshold: float) -> str:
    """One line: all well, or who is slow and how slow the worst group is."""
    judged = [g for g in groups if g["judged"]]
    if not suspects["groups"]:
        return (f"health OK: every compared group within {threshold:g}x of its kind's median "
                f"busbw ({len(judged)} groups compared)")
    worst = min((g for g in groups if g["suspect"]), key=lambda g: g["ratio"])
    below = (f"{len(suspects['groups'])} group(s) below {threshold:g}x of their kind's median "
             f"busbw; worst {_describe(worst)}")
    who = []
    if suspects["nodes"]:
        who.append(f"node(s) {', '.join(suspects['nodes'])}")
    if suspects["ranks"]:
        who.append(f"rank(s) {format_rank_set(suspects['ranks'])}")
    if not who:
        return f"health OK, no rank or node to blame, but {below}"
    return f"health PROBLEM: {' and '.join(who)} slow: {below}"


def size_text(size: int) -> str:
    """Bytes as nccl-tests-like short text: '64KiB', '1MiB', '1000B'."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


TABLE_HEADER = ["kind", "op", "size", "where", "ranks", "groups", "busbw min", "median",
                "max (GB/s)", "suspects"]


def table_rows(health: dict) -> list[list[str]]:
    """The per-kind table as text cells (TABLE_HEADER); rows not judged show '-' suspects."""
    return [[r["kind"], r["op"], size_text(r["size"]), r["where"], str(r["n"]), str(r["groups"]),
             f"{r['busbw_min']:.3g}", f"{r['busbw_median']:.3g}", f"{r['busbw_max']:.3g}",
             str(r["suspects"]) if r["judged"] else "-"] for r in health["rows"]]


def health_lines(health: dict | None, max_suspects: int = 10) -> list[str]:
    """Plain-text lines for the console summary: headline, table, the first suspects."""
    if not health:
        return []
    rows = [TABLE_HEADER] + table_rows(health)
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADER))]
    lines = [f"  {health['headline']}",
             f"  health stage: {health.get('seconds', 0):.2f}s, backend {health.get('backend')}"]
    lines += ["    " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    bad = health["suspects"]["groups"]
    lines += [f"    suspect: {text}" for text in bad[:max_suspects]]
    if len(bad) > max_suspects:
        lines.append(f"    ... {len(bad) - max_suspects} more suspects in report.json")
    return lines
