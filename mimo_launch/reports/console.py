"""What a local run prints while it runs and when it ends.

`PhaseProgress` is the launcher's `on_tick(store)` hook: on a terminal it draws a rich progress
bar per phase (ranks arrived); elsewhere (CI logs, pipes) it prints one plain line when every
rank has arrived at a phase. `print_final(report, plan)` prints the per-module table of checks
and the phase times: rich on a terminal, `report.format_summary` otherwise; with check=health,
a line per step of the health stage while it runs and its table at the end. Display errors
never break a run.
"""

from __future__ import annotations

import os
import sys
import time

from ..checks.health import read_progress
from ..checks.health_report import health_lines
from ..rank.phases import PHASES, arrivals
from ..reports.report import (
    CHECKS,
    Report,
    detail_lines,
    format_summary,
    module_checks,
    shape_text,
    verdict_line,
)

_PHASE_LABELS = {"init": "init (rendezvous)", "grids": "grids", "embedding": "embedding groups",
                 "verify": "verification"}


def is_terminal(stream=None) -> bool:
    """Rich output only on an interactive terminal (not in CI logs or pipes)."""
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)()) and \
        os.environ.get("TERM") != "dumb" and not os.environ.get("CI")


class PhaseProgress:
    """Phase progress of `world_size` ranks, fed by `on_tick(store)`; use as a context."""

    def __init__(self, world_size: int, rich: bool | None = None, on_first_tick=None):
        self.world_size = world_size
        self.on_first_tick = on_first_tick  # e.g. rankmap.warm_up: ranks are forked by then
        self.rich = is_terminal() if rich is None else rich
        self.start = time.monotonic()
        self.done: set[str] = set()
        self._progress = None
        self._tasks: dict[str, int] = {}
        self.health_step: str | None = None

    def __enter__(self) -> PhaseProgress:
        return self

    def _start(self) -> None:
        """Start the rich display at the first tick: after the ranks are forked, so that they
        inherit neither its redirected stdout nor any thread."""
        if self.rich and self._progress is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(TextColumn("{task.description:<20}"), BarColumn(),
                                      MofNCompleteColumn(), TextColumn("ranks"),
                                      TimeElapsedColumn(), auto_refresh=False)
            for phase in PHASES:
                self._tasks[phase] = self._progress.add_task(_PHASE_LABELS[phase],
                                                             total=self.world_size)
            self._progress.start()

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.refresh()
            self._progress.stop()

    def __call__(self, store) -> None:
        """The launcher's tick: read how many ranks reached each phase."""
        if self.on_first_tick is not None:
            first, self.on_first_tick = self.on_first_tick, None
            first()
        self._start()
        try:
            counts = {phase: arrivals(store, phase) for phase in PHASES}
        except Exception:  # noqa: BLE001 - progress is best effort
            return
        for phase in PHASES:
            self._update(phase, counts[phase])
        self._health(store)

    def _health(self, store) -> None:
        """One line per step of the health stage as rank 0 enters it ('3/12 dp all_gather
        64KiB'), above the bars on a terminal."""
        try:
            step = read_progress(store)
        except Exception:  # noqa: BLE001 - progress is best effort
            return
        if step and step != self.health_step:
            self.health_step = step
            line = f"  [{time.monotonic() - self.start:6.1f}s] health: {step}"
            if self._progress is not None:
                self._progress.console.print(line, markup=False)
            else:
                print(line, flush=True)

    def finish(self, report: Report) -> None:
        """Show the end state the report records (the run may end between two ticks): every
        phase before the failed one complete, or all of them when verification ran."""
        self._start()
        last = PHASES.index(report.failed_phase) if report.failed_phase in PHASES else None
        if report.failure and last is None:
            return
        for phase in PHASES[:last]:
            self._update(phase, self.world_size)

    def _update(self, phase: str, count: int) -> None:
        if self._progress is not None:
            self._progress.update(self._tasks[phase], completed=count)
            self._progress.refresh()
        if count >= self.world_size and phase not in self.done:
            self.done.add(phase)
            if self._progress is None:
                print(f"  [{time.monotonic() - self.start:6.1f}s] {_PHASE_LABELS[phase]}: "
                      f"all {self.world_size} ranks arrived", flush=True)


def print_final(report: Report, plan=None, rich: bool | None = None) -> None:
    """The final verdict: a rich table per module on a terminal, plain text otherwise."""
    if not (is_terminal() if rich is None else rich):
        print(format_summary(report))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    ok = report.passed and not report.failure
    console.print(f"[bold {'green' if ok else 'red'}]{verdict_line(report)}[/]", soft_wrap=True)
    table = Table(title="modules", title_justify="left")
    table.caption = f"checks: {', '.join(CHECKS)}"
    table.caption_justify = "left"
    for col in ("module", "ranks", "layout", "groups", "checks"):
        table.add_column(col, justify="right" if col == "groups" else "left", no_wrap=True)
    checks = module_checks(report)
    for name, info in report.modules.items():
        shape = shape_text(info["shape"])
        groups = "-"
        if plan is not None and name in plan.modules:
            groups = str(plan.modules[name].group_count)
        counts = checks.get(name)
        bad = [f"{check} {n}" for check, n in (counts or {}).items() if n]
        done = len(counts or {}) - len(report.skipped_checks)
        cell = ("[dim]not run[/]" if counts is None else
                f"[red]failed: {', '.join(bad)}[/]" if bad else f"[green]all {done} ok[/]" +
                "".join(f", [yellow]{c} not checked[/]" for c in report.skipped_checks))
        table.add_row(name, f"[{info['first_rank']}, {info['end_rank']})", shape, groups, cell)
    console.print(table)
    if report.timings:
        times = Table(title="phase times", title_justify="left")
        for phase in report.timings:
            times.add_column(phase, justify="right")
        times.add_row(*(f"{v:.3f}s" for v in report.timings.values()))
        console.print(times)
    for line in detail_lines(report, timings=False) + health_lines(report.health):
        console.print(line, markup=False, soft_wrap=True)


__all__ = ["PhaseProgress", "print_final", "is_terminal"]
