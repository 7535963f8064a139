"""`health.png` / `health.svg`: the health stage's busbw per group and per node, as a picture.

Left: the judged groups (each kind's largest size), the slowest first, as bars of busbw
relative to their kind's median; right: each node's slowest group the same way. Suspects are
red, the threshold a dashed line. At most `MAX_BARS` bars a panel (the slowest), so a
16k-rank run stays readable. Drawn with matplotlib's Agg backend, imported only here.
"""

from __future__ import annotations

from pathlib import Path

from ..layout.rank_text import format_rank_set

MAX_BARS = 30
OK_COLOUR, SUSPECT_COLOUR = "#4c78a8", "#d62728"


def _group_bars(health: dict) -> list[tuple[str, float, bool]]:
    judged = sorted((g for g in health["groups"] if g["judged"]), key=lambda g: g["ratio"])
    return [(f"{g['module']} {g['kind']} {g['op']} [{format_rank_set(g['ranks'])}]",
             g["ratio"], g["suspect"]) for g in judged[:MAX_BARS]]


def _node_bars(health: dict) -> list[tuple[str, float, bool]]:
    worst: dict[str, float] = {}
    for g in health["groups"]:
        if g["judged"]:
            for node in g["nodes"]:
                worst[node] = min(g["ratio"], worst.get(node, g["ratio"]))
    suspects = set(health["suspects"]["nodes"])
    ordered = sorted(worst.items(), key=lambda item: item[1])[:MAX_BARS]
    return [(node, ratio, node in suspects) for node, ratio in ordered]


def _panel(ax, bars, title: str, threshold: float) -> None:
    if not bars:
        ax.set_axis_off()
        ax.set_title(f"{title}: none compared", fontsize=9)
        return
    labels, ratios, bad = zip(*bars)
    ys = range(len(bars))
    ax.barh(ys, ratios, color=[SUSPECT_COLOUR if b else OK_COLOUR for b in bad])
    ax.set_yticks(list(ys), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
    ax.axvline(1.0, color="grey", linewidth=0.5)
    ax.set_xlabel("busbw / median of its kind", fontsize=8)
    ax.set_title(title, fontsize=9)


def draw_health(health: dict, stem: Path, title: str = "") -> list[Path]:
    """Draw the report's `health` section to `<stem>.png` and `<stem>.svg`; return both."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups, nodes = _group_bars(health), _node_bars(health)
    rows = max(len(groups), len(nodes), 1)
    fig = Figure(figsize=(12, 1.5 + 0.25 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, width_ratios=(3, 2))
    threshold = health["threshold"]
    _panel(left, groups, f"groups, slowest first (dashed: {threshold:g}x)", threshold)
    _panel(right, nodes, "nodes: their slowest group", threshold)
    fig.suptitle(title or health["headline"], fontsize=10)
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path)
    return paths


__all__ = ["draw_health", "MAX_BARS"]
