"""The rank-map picture of a plan or a run: PNG and SVG, drawn with matplotlib's Agg backend.

Rows are nodes and columns GPUs (`plan.ranks_per_node` per node). Each rank is a cell filled
with its module's colour (colocated modules: one band per module) and labelled with its rank
and TP/CP/ETP/PP/DP coordinates; first pipeline stages carry a right-pointing triangle (▶),
last stages a square (modules with PP > 1 only). A failed or mismatched rank is filled red, with
a strip of its module's colour kept at the bottom. Past `DETAIL_MAX_RANKS` ranks each cell is a
whole node instead (its modules, its PP stage, red when any of its ranks failed); past
`MAX_DRAWN_NODES` nodes only the first ones are drawn and a line counts the rest, so the picture's
size and drawing time stay those of a 16,384-rank world however large the world is.

The picture's size is `figure_size(...)` inches at `DPI`; cells are plain unantialiased
rectangles with white gaps, so a test can count them in the PNG by colour. Every module colour
and red also appear once in the legend. matplotlib is imported only when drawing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..layout.plan import Plan
from ..reports.atomic_file import atomic_file
from ..reports.report import shape_text

MODULE_COLOURS = ("#4c72b0", "#55a868", "#8172b2", "#ccb974", "#64b5cd", "#937860",
                  "#8c8c8c", "#da8bc3")
FAIL_COLOUR = "#e41a1c"
DPI = 100
DETAIL_MAX_RANKS = 512
NODES_PER_ROW = 32  # aggregated drawing: nodes per picture row
MAX_DRAWN_NODES = 2048  # aggregated drawing: nodes drawn at most (64 rows)
_LEFT, _RIGHT, _TITLE, _BOTTOM, _LEGEND_ROW = 1.25, 0.25, 0.45, 0.25, 0.24
_STRIP = 0.2  # share of a failed cell kept in its module's colour


@dataclass
class Geometry:
    """Where the cells go, in inches: `cols` x `rows` cells of `cell_w` x `cell_h`."""

    aggregated: bool
    cols: int
    rows: int
    cell_w: float
    cell_h: float
    font: float
    legend_h: float

    @property
    def size(self) -> tuple[float, float]:
        width = max(7.0, _LEFT + self.cols * self.cell_w + _RIGHT)
        return width, _TITLE + self.legend_h + 0.3 + self.rows * self.cell_h + _BOTTOM


def module_colours(plan: Plan) -> dict[str, str]:
    """Each module's fill colour, in config order (never red)."""
    return {name: MODULE_COLOURS[i % len(MODULE_COLOURS)] for i, name in enumerate(plan.modules)}


def geometry(plan: Plan, failures: bool = False) -> Geometry:
    """The picture's grid for `plan` (detailed per rank, or aggregated per node)."""
    bands = len(plan.modules) if plan.config.colocated else 1
    legend_h = _LEGEND_ROW * (len(plan.modules) + 1 + int(failures))
    if plan.world_size <= DETAIL_MAX_RANKS:
        small = plan.world_size <= 64
        band = (0.62 if small else 0.34) if bands == 1 else (0.44 if small else 0.26)
        return Geometry(False, plan.ranks_per_node, plan.nodes, 1.1 if small else 0.74,
                        band * bands, 7.0 if small else 5.0, legend_h)
    cols = min(NODES_PER_ROW, plan.nodes)
    rows = -(-min(plan.nodes, MAX_DRAWN_NODES) // cols) + int(plan.nodes > MAX_DRAWN_NODES)
    return Geometry(True, cols, rows, 0.42, 0.3 * (1 if bands == 1 else 1.3),
                    4.5, legend_h)


def figure_size(plan: Plan, failures: bool = False) -> tuple[int, int]:
    """The PNG's size in pixels (width, height)."""
    w, h = geometry(plan, failures).size
    return round(w * DPI), round(h * DPI)


def _coords_text(plan: Plan, name: str, rank: int) -> str:
    coords = plan.coords(name, rank)
    shape = plan.modules[name].shape
    keys = [k for k in ("tp", "cp", "etp", "pp", "dp") if k in ("tp", "pp", "dp") or shape[k] > 1]
    return " ".join(f"{k[0].upper()}{coords[k]}" for k in keys)


def _stage_marks(plan: Plan, name: str, ranks: np.ndarray) -> tuple[bool, bool]:
    mod = plan.modules[name]
    if mod.shape["pp"] == 1:
        return False, False
    ranks = ranks[(ranks >= mod.first_rank) & (ranks < mod.end_rank)]
    layout = mod.layout
    first = bool(np.any(layout.first_stage[ranks]))
    last = bool(np.any(layout.last_stage[ranks]))
    return first, last


class _Canvas:
    """Rectangles, texts and markers in inch coordinates (y downward), drawn in one go."""

    def __init__(self):
        self.rects: list[tuple[float, float, float, float, str]] = []
        self.texts: list[tuple[float, float, str, dict]] = []
        self.marks: dict[str, list[tuple[float, float]]] = {">": [], "s": []}

    def rect(self, x, y, w, h, colour):
        self.rects.append((x, y, w, h, colour))

    def text(self, x, y, s, **kw):
        self.texts.append((x, y, s, kw))


def _cell(canvas: _Canvas, x, y, w, h, colours: list[str], stacked: bool, failed: bool,
          shares: list[float] | None = None) -> None:
    """One cell: bands of `colours` (stacked rows, or side by side by `shares`); red on top
    with a bottom strip of the module colours when `failed`."""
    if failed:
        canvas.rect(x, y, w, h * (1 - _STRIP), FAIL_COLOUR)
        y, h = y + h * (1 - _STRIP), h * _STRIP
        stacked = False
        shares = None
    if stacked:
        for i, colour in enumerate(colours):
            canvas.rect(x, y + i * h / len(colours), w, h / len(colours), colour)
        return
    shares = shares or [1 / len(colours)] * len(colours)
    for colour, share in zip(colours, shares):
        canvas.rect(x, y, w * share, h, colour)
        x += w * share


def _detailed(plan: Plan, geo: Geometry, top: float, canvas: _Canvas, colours, failed: set,
              hosts) -> None:
    g, names = plan.ranks_per_node, list(plan.modules)
    gap_w, gap_h = geo.cell_w * 0.06, geo.cell_h * 0.08
    for col in range(geo.cols):
        canvas.text(_LEFT + (col + 0.5) * geo.cell_w, top - 0.08, f"{plan.rank_slot} {col}",
                    ha="center", va="bottom", fontsize=geo.font)
    for rank in range(plan.world_size):
        node, gpu = divmod(rank, g)
        x = _LEFT + gpu * geo.cell_w + gap_w / 2
        y = top + node * geo.cell_h + gap_h / 2
        w, h = geo.cell_w - gap_w, geo.cell_h - gap_h
        if gpu == 0:
            label = f"node {node}"
            if hosts and rank < len(hosts) and hosts[rank]:
                label += f"\n{hosts[rank]}"
            canvas.text(_LEFT - 0.1, y + h / 2, label, ha="right", va="center",
                        fontsize=geo.font)
        mine = [n for n in names if plan.coords(n, rank) is not None]
        _cell(canvas, x, y, w, h, [colours[n] for n in mine], True, rank in failed)
        band_h = (h * (1 - _STRIP) if rank in failed else h) / (1 if rank in failed else len(mine))
        for i, name in enumerate(mine):
            by = y + (0 if rank in failed else i * band_h)
            text = f"r{rank}  {_coords_text(plan, name, rank)}" if len(mine) > 1 and \
                geo.font < 6 else f"r{rank}\n{_coords_text(plan, name, rank)}"
            if rank in failed:
                coords = "\n".join(_coords_text(plan, n, rank) for n in mine)
                text = f"r{rank} {failed[rank]}\n{coords}"
            canvas.text(x + w / 2, by + band_h / 2, text, ha="center", va="center",
                        fontsize=geo.font if len(mine) == 1 or rank in failed else geo.font * 0.9,
                        linespacing=1.1)
            first, last = _stage_marks(plan, name, np.array([rank]))
            if first:
                canvas.marks[">"].append((x + 0.07, by + 0.09))
            if last:
                canvas.marks["s"].append((x + w - 0.07, by + 0.09))
            if rank in failed:
                break


def _aggregated(plan: Plan, geo: Geometry, top: float, canvas: _Canvas, colours, failed: set,
                hosts) -> None:
    g, names = plan.ranks_per_node, list(plan.modules)
    bad = np.zeros(plan.nodes, dtype=np.int64)
    if failed:
        np.add.at(bad, np.array(sorted(failed), dtype=np.int64) // g, 1)
    for col in range(geo.cols):
        canvas.text(_LEFT + (col + 0.5) * geo.cell_w, top - 0.06, f"+{col}",
                    ha="center", va="bottom", fontsize=geo.font)
    gap_w, gap_h = geo.cell_w * 0.08, geo.cell_h * 0.1
    w, h = geo.cell_w - gap_w, geo.cell_h - gap_h
    shown = min(plan.nodes, MAX_DRAWN_NODES)
    if shown < plan.nodes:  # the last row says what is not drawn
        canvas.text(_LEFT, top + (geo.rows - 0.5) * geo.cell_h,
                    f"... {plan.nodes - shown:,} more nodes (ranks {shown * g:,}-"
                    f"{plan.world_size - 1:,}) not drawn; {int(bad[shown:].sum()):,} of their "
                    f"ranks failed", va="center", fontsize=8)
    for node in range(shown):
        row, col = divmod(node, geo.cols)
        x = _LEFT + col * geo.cell_w + gap_w / 2
        y = top + row * geo.cell_h + gap_h / 2
        lo, hi = node * g, min(plan.world_size, (node + 1) * g)
        if col == 0:
            last = min(shown, node + geo.cols) - 1
            canvas.text(_LEFT - 0.08, y + h / 2, f"nodes {node}-{last}\nranks {lo}-"
                        f"{min(plan.world_size, (last + 1) * g) - 1}", ha="right", va="center",
                        fontsize=geo.font, linespacing=1.0)
        mine, shares = [], []
        for name in names:
            mod = plan.modules[name]
            n = max(0, min(hi, mod.end_rank) - max(lo, mod.first_rank))
            if n:
                mine.append(name)
                shares.append(n / (hi - lo))
        colocated = plan.config.colocated
        _cell(canvas, x, y, w, h, [colours[n] for n in mine], colocated, bool(bad[node]),
              None if colocated else shares)
        if bad[node]:
            canvas.text(x + w / 2, y + h * 0.4, f"{bad[node]} bad", ha="center", va="center",
                        fontsize=geo.font)
            continue
        ranks = np.arange(lo, hi)
        canvas.text(x + w / 2, y + h / 2, _node_label(plan, mine[0], lo, hi), ha="center",
                    va="center", fontsize=geo.font)
        for name in mine:
            first, last = _stage_marks(plan, name, ranks)
            if first:
                canvas.marks[">"].append((x + 0.05, y + h / 2))
            if last:
                canvas.marks["s"].append((x + w - 0.05, y + h / 2))


def _node_label(plan: Plan, name: str, lo: int, hi: int) -> str:
    """'P3' (the PP stage(s) of `name` on ranks [lo, hi)), or 'D4-5' when PP is 1."""
    mod = plan.modules[name]
    ranks = np.arange(max(lo, mod.first_rank), min(hi, mod.end_rank))
    inner = mod.shape["tp"] * mod.shape["cp"] * mod.shape["etp"]  # ranks per PP stage
    key = "pp" if mod.shape["pp"] > 1 else "dp"
    stride = inner if key == "pp" else inner * mod.shape["pp"]
    values = np.unique((ranks - mod.first_rank) // stride % mod.shape[key])
    a, b = int(values[0]), int(values[-1])
    if a == b:
        return f"{key[0].upper()}{a}"
    if len(values) == b - a + 1:
        return f"{key[0].upper()}{a}-{b}"
    return key[0].upper() + ",".join(str(int(v)) for v in values)


def _legend(plan: Plan, top: float, canvas: _Canvas, colours, failed: set) -> None:
    y = top
    for name, mod in plan.modules.items():
        canvas.rect(_LEFT, y, 0.3, 0.17, colours[name])
        shape = shape_text(mod.shape)
        canvas.text(_LEFT + 0.4, y + 0.085, f"{name}: ranks {mod.first_rank}-{mod.end_rank - 1}"
                    f"   {shape}", va="center", fontsize=8)
        y += _LEGEND_ROW
    canvas.marks[">"].append((_LEFT + 0.15, y + 0.085))
    canvas.marks["s"].append((_LEFT + 2.15, y + 0.085))
    canvas.text(_LEFT + 0.3, y + 0.085, "first PP stage", va="center", fontsize=8)
    canvas.text(_LEFT + 2.3, y + 0.085, "last PP stage (PP > 1 only)", va="center", fontsize=8)
    y += _LEGEND_ROW
    if failed:
        canvas.rect(_LEFT, y, 0.3, 0.17, FAIL_COLOUR)
        canvas.text(_LEFT + 0.4, y + 0.085, f"failed or mismatched: {len(failed)} rank(s)",
                    va="center", fontsize=8)


_warm: threading.Thread | None = None


def _import_matplotlib() -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import (  # noqa: F401
        collections,
        figure,
        font_manager,  # noqa: F401 - loads the font cache
        patches,
    )
    from matplotlib.backends import backend_agg  # noqa: F401


def warm_up() -> None:
    """Import matplotlib in a background thread (call once no more processes will be forked,
    e.g. while the ranks run), so that drawing after the run does not wait for it."""
    global _warm
    if _warm is None:
        _warm = threading.Thread(target=_import_matplotlib, name="rankmap-import", daemon=True)
        _warm.start()


def draw_rankmap(plan: Plan, stem: Path, failed=(), title: str = "",
                 hosts: list[str] | None = None) -> list[Path]:
    """Draw `plan` to `<stem>.png` and `<stem>.svg`, ranks in `failed` red; return both paths.

    `failed` is ranks, or {rank: label} ('FAILED', 'mismatch') shown in the red cell.
    """
    if _warm is not None:
        _warm.join()
    _import_matplotlib()
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    labels = dict(failed) if isinstance(failed, dict) else dict.fromkeys(failed, "FAILED")
    failed = {int(r): str(v) for r, v in labels.items() if 0 <= int(r) < plan.world_size}
    geo = geometry(plan, bool(failed))
    width, height = geo.size
    colours = module_colours(plan)
    canvas = _Canvas()
    mode = ("one cell per node" if geo.aggregated
            else f"{plan.ranks_per_node} {plan.rank_slot}s per node")
    canvas.text(0.2, 0.25, title or f"rank map: {plan.world_size} ranks, {plan.nodes} node(s), "
                f"{mode}", va="center", fontsize=12, fontweight="bold")
    _legend(plan, _TITLE, canvas, colours, failed)
    grid_top = _TITLE + geo.legend_h + 0.3
    draw = _aggregated if geo.aggregated else _detailed
    draw(plan, geo, grid_top, canvas, colours, failed, hosts)

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    patches = [Rectangle((x, y), w, h) for x, y, w, h, _ in canvas.rects]
    ax.add_collection(PatchCollection(patches, facecolors=[c for *_, c in canvas.rects],
                                      edgecolors="none", linewidths=0, antialiaseds=False))
    for x, y, s, kw in canvas.texts:
        ax.text(x, y, s, **kw)
    size = 5 if geo.font < 6 else 7
    for marker, points in canvas.marks.items():
        if points:
            xs, ys = zip(*points)
            ax.scatter(xs, ys, marker=marker, s=size ** 2, c="black", edgecolors="white",
                       linewidths=0.5, zorder=3)
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    with atomic_file(paths[0]) as f:  # a full disk leaves no half-written picture
        fig.savefig(f, dpi=DPI, format="png")
    with matplotlib.rc_context({"svg.fonttype": "none"}), atomic_file(paths[1]) as f:
        fig.savefig(f, dpi=DPI, format="svg")  # text stays text: smaller, faster
    return paths


__all__ = ["draw_rankmap", "figure_size", "module_colours", "MODULE_COLOURS", "FAIL_COLOUR",
           "DETAIL_MAX_RANKS", "MAX_DRAWN_NODES"]
