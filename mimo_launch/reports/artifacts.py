"""`mode=plan`, and the files every run leaves beside report.json (report.md, the rank map).

`run_plan(settings)` prints the plan and draws `plan.png`/`plan.svg` into the run directory;
no rank is started. `finish_run(settings, report)` prints the verdict, then writes `report.md`
and `rankmap.png`/`.svg` (ranks that failed or have a mismatch in red), with check=health
`health.png`/`.svg`, and names them. A
picture that cannot be drawn is a warning, never a different exit code.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from ..layout.plan import Plan, format_plan, make_plan, ranks_per_node
from ..reports.report import Report, module_summary, read_report, report_line
from ..reports.report_md import HEALTH_PICTURE, write_report_md
from ..settings.app_config import LaunchSettings

RANKMAP_STEM = "rankmap"
PLAN_STEM = "plan"


def plan_for(settings: LaunchSettings) -> Plan:
    """The settings' layout laid out on nodes of `plan.gpus_per_node` or the cluster's GPUs
    (its tasks where it has none)."""
    per_node, slot = ranks_per_node(settings.cluster, settings.plan.gpus_per_node)
    return make_plan(settings.layout, settings.world_size, per_node, slot)


def bad_ranks(report: Report) -> dict[int, str]:
    """Ranks to draw red, with why: blamed for a failure ('FAILED') or with a mismatch."""
    bad = {int(m["rank"]): "mismatch" for m in report.mismatches}
    bad.update(dict.fromkeys((int(r) for r in report.failed_ranks), "FAILED"))
    return dict(sorted(bad.items()))


def with_modules(report: Report, plan: Plan) -> Report:
    """`report`, with the modules filled in from the plan where the run recorded none (a rank
    died before rank 0 wrote anything)."""
    if report.modules:
        return report
    return dataclasses.replace(report, modules=module_summary(plan.config))


def _draw(plan: Plan, stem: Path, **kw) -> list[Path]:
    try:
        from ..reports.rankmap import draw_rankmap

        return draw_rankmap(plan, stem, **kw)
    except Exception as exc:  # noqa: BLE001 - the picture is a convenience, not the verdict
        print(f"mimo-launch: warning: no rank map ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        return []


def run_plan(settings: LaunchSettings) -> int:
    """Print the plan (and draw it unless `plan.picture=false`); start nothing; return 0.
    An interrupt while drawing says the picture was not written, then propagates."""
    plan = plan_for(settings)
    print(format_plan(plan, list(settings.plan.ranks)), flush=True)
    if settings.plan.picture:
        start = time.perf_counter()
        try:
            paths = _draw(plan, settings.run_dir / PLAN_STEM,
                          title=f"plan: {settings.world_size} ranks, {plan.nodes} node(s) x "
                                f"{plan.ranks_per_node} {plan.rank_slot}s")
        except KeyboardInterrupt:
            print(f"mimo-launch: {PLAN_STEM}.png not written (interrupted while drawing); the "
                  f"plan above is complete", file=sys.stderr, flush=True)
            raise
        if paths:
            print(f"rank map: {paths[0]} (and .svg; {time.perf_counter() - start:.1f}s)")
    return 0


def _written(what: str, write):
    """`write()`'s result, or None with a one-line warning where the disk refused it (e.g.
    ENOSPC: the file is not there at all, `atomic_file`)."""
    try:
        return write()
    except OSError as exc:
        print(f"mimo-launch: warning: {what} not written: {exc.strerror or exc}", file=sys.stderr)
        return None


def write_artifacts(settings: LaunchSettings, report: Report, plan: Plan | None = None,
                    picture: bool = True, written: list[Path] | None = None) -> list[Path]:
    """Write report.md (linking the picture) and the rank map; return the paths written (also
    appended to `written` as each is done, so that an interrupted call leaves what it wrote).
    A file the disk refuses is a one-line warning and is left out of the list."""
    plan = plan or plan_for(settings)
    report = with_modules(report, plan)
    run_dir = Path(settings.run_dir)
    written = [] if written is None else written
    link = f"{RANKMAP_STEM}.png" if picture else None
    md = _written("report.md", lambda: write_report_md(run_dir, report, link, plan))
    written += [md] if md else []
    if picture:
        ok = report.passed and not report.failure
        title = (f"run {'PASSED' if ok else 'FAILED'}: {report.world_size} ranks, "
                 f"backend {report.backend}")
        written += _draw(plan, run_dir / RANKMAP_STEM, failed=bad_ranks(report), title=title,
                         hosts=report.hosts or None)
    if report.health:
        written += _draw_health(report.health, run_dir / HEALTH_PICTURE)
    return written


def _names_text(names: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def not_written(report: Report, paths: list[Path]) -> list[str]:
    """The files after the verdict (report.md, the rank map, the health picture with
    check=health) that are not among `paths`, by name."""
    stems = {p.stem if p.suffix != ".md" else "report.md" for p in paths}
    wanted = [("report.md", "report.md"), (RANKMAP_STEM, "the rank map")]
    if report.health:
        wanted.append((HEALTH_PICTURE, "the health picture"))
    return [name for stem, name in wanted if stem not in stems]


def _draw_health(health: dict, stem: Path) -> list[Path]:
    try:
        from ..reports.health_picture import draw_health

        return draw_health(health, stem)
    except Exception as exc:  # noqa: BLE001 - the picture is a convenience, not the verdict
        print(f"mimo-launch: warning: no health picture ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        return []


def finish_run(settings: LaunchSettings, report: Report, came: list[int]) -> None:
    """After a local run: the verdict first, then report.md and the rank map
    (`files_after_verdict`)."""
    from ..reports.console import print_final

    plan = plan_for(settings)
    print_final(with_modules(report, plan), plan)
    print(report_line(Path(settings.run_dir)), flush=True)
    files_after_verdict(settings, report, came, plan)


def files_after_verdict(settings: LaunchSettings, report: Report, came: list[int],
                        plan: Plan | None = None) -> None:
    """Write report.md and the rank map once the verdict is printed, and name them.

    The verdict stands: `came` is the run's hold (`interrupts.held(lasting=True)` inside
    `interrupts.one_run`), where signals are recorded instead of raised. One recorded before,
    or arriving while the files are written (the one `stoppable` window), stops only the
    files, which a note then names; the exit code stays the report's."""
    from ..app.interrupts import describe, signal_of, stoppable

    paths: list[Path] = []
    try:
        with stoppable():  # shut at once by a signal that came before
            time.sleep(settings.fault.artifacts_delay_s)  # a rehearsal's window; 0 normally
            write_artifacts(settings, report, plan, written=paths)
    except KeyboardInterrupt as exc:
        if signal_of(exc) not in came:
            came.append(signal_of(exc))
    if came:
        missing = not_written(report, paths)
        what = (f": {_names_text(missing)} {'was' if len(missing) == 1 else 'were'} not "
                f"written;" if missing else " (every file was written);")
        print(f"mimo-launch: interrupted ({describe(came[0])}) after the verdict{what} the "
              f"verdict above and report.json stand", file=sys.stderr)
    _print_paths(paths)


def _print_paths(paths: list[Path]) -> None:
    for path in (p for p in paths if p.suffix != ".svg"):  # the .svg is named with the .png
        name = ("report.md" if path.suffix == ".md" else
                "health picture" if path.stem == HEALTH_PICTURE else "rank map")
        print(f"{name}: {path}"
              + (" (and .svg)" if path.suffix == ".png" else ""))


def report_interrupted(settings: LaunchSettings, signum: int) -> None:
    """A run interrupted after its run directory was claimed and before any report exists
    (torch's import, the ranks' start): report.json says so (`interrupted` true)."""
    import signal

    from ..app.interrupts import describe
    from ..rank.rank_job import rank_job
    from ..reports.report import failure_report, write_report

    run_dir = Path(settings.run_dir)
    if settings.config.mode != "run" or not run_dir.is_dir() or read_report(run_dir):
        return
    report = failure_report(rank_job(settings), None, f"interrupted ({describe(signum)}) before "
                            f"the ranks started", None, [], signal.Signals(signum).name)
    try:
        write_report(run_dir, report)
    except OSError:
        pass


def artifacts_after(settings: LaunchSettings, came: list[int]) -> None:
    """After a launcher that printed its own verdict (Slurm): the files, if a report exists
    (`files_after_verdict`; `came`: the run's hold)."""
    report = read_report(Path(settings.run_dir))
    if report is not None:
        files_after_verdict(settings, report, came)


__all__ = ["run_plan", "finish_run", "files_after_verdict", "write_artifacts", "artifacts_after",
           "plan_for",
           "bad_ranks"]
