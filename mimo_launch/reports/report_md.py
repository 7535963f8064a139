"""`report.md`: the run's report as Markdown, to attach to a CI run or a ticket.

Same content as the console summary (verdict, a row per module with its checks, phase times,
the failure), plus the rank-map picture linked (relative path), the health stage's table and
picture (check=health) and every mismatch in a table.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..checks.health_report import TABLE_HEADER, table_rows
from ..reports.atomic_file import write_text_atomic
from ..reports.report import CHECKS, Report, module_checks, verdict_line

REPORT_MD_NAME = "report.md"
HEALTH_PICTURE = "health"  # health.png / health.svg beside report.md (artifacts.py draws it)


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def render_report_md(report: Report, picture: str | None = None, plan=None) -> str:
    """The Markdown text; `picture` is the rank map's path relative to report.md."""
    ok = report.passed and not report.failure
    out = [f"# {verdict_line(report)}", ""]
    hosts = Counter(report.hosts)
    where = ", ".join(f"{h} ({n} ranks)" for h, n in sorted(hosts.items())[:20])
    if len(hosts) > 20:
        where += f", ... ({len(hosts)} hosts)"
    out.append(f"**{'PASSED' if ok else 'FAILED'}** (exit code {report.exit_code}); "
               f"world size {report.world_size}, backend {report.backend}"
               + (f"; hosts: {where}" if where else "") + ".")
    out.append("")
    if picture:
        svg = str(Path(picture).with_suffix(".svg"))
        out += [f"![rank map]({picture})", "", f"Rank map: [{picture}]({picture}), "
                f"[{svg}]({svg}). Red cells are ranks that failed or have a mismatch.", ""]
    checks = module_checks(report)
    rows = []
    for name, info in report.modules.items():
        counts = checks.get(name)
        groups = "-"
        if plan is not None and name in plan.modules:
            groups = plan.modules[name].group_count
        row = [name, f"[{info['first_rank']}, {info['end_rank']})", *info["shape"].values(),
               groups]
        row += ["not run" if counts is None else f"**{counts[c]} failed**" if counts[c] else
                "not checked" if c in report.skipped_checks else "passed" for c in CHECKS]
        rows.append(row)
    out += ["## Modules", ""]
    out += _table(["module", "ranks", "TP", "CP", "ETP", "PP", "DP", "groups", *CHECKS], rows)
    out.append("")
    if report.timings:
        out += ["## Phase times", ""]
        out += _table(["phase", "seconds"], [[k, f"{v:.3f}"] for k, v in report.timings.items()])
        out.append("")
    if report.new_group_calls is not None:
        line = f"Groups created: {report.new_group_calls} (one per module, kind and member list)"
        if report.member_new_group_calls is not None:
            line += f" (rank 0 called `new_group` {report.member_new_group_calls} times)"
        out += [line, ""]
    if report.failure:
        ranks = ", ".join(map(str, report.failed_ranks)) or "unknown"
        out += ["## Failure", "", f"Phase: `{report.failed_phase}`; rank(s): {ranks}"
                + ("; interrupted" if report.interrupted else "") + ".", "", "```text",
                report.failure, "```", ""]
    out += _health_section(report.health)
    out += [f"## Mismatches ({len(report.mismatches)})", ""]
    if report.mismatches:
        out += _table(["rank", "module", "group", "check", "expected", "actual"],
                      [[m["rank"], m["module"], m["group"], m["check"], m["expected"],
                        m["actual"]] for m in report.mismatches])
    else:
        out.append("None.")
    out.append("")
    return "\n".join(out)


def _health_section(health: dict | None) -> list[str]:
    """check=health: headline, the per-kind table, the suspects, the picture linked."""
    if not health:
        return []
    out = ["## Communication health", "", f"**{health['headline']}**", "",
           f"{health['seconds']:.2f} s, backend {health['backend']}; busbw in GB/s by "
           f"nccl-tests' conventions; suspects: below {health['threshold']:g}x of their "
           f"kind's median at its largest size.", ""]
    out += _table(TABLE_HEADER, table_rows(health)) + [""]
    if health["suspects"]["groups"]:
        out += [f"- {text}" for text in health["suspects"]["groups"]] + [""]
    out += [f"![busbw per group and node]({HEALTH_PICTURE}.png)", ""]
    return out


def write_report_md(run_dir: Path, report: Report, picture: str | None = None,
                    plan=None) -> Path:
    """Write `<run_dir>/report.md` atomically; return its path. OSError (e.g. a full disk)
    leaves no file."""
    return write_text_atomic(Path(run_dir) / REPORT_MD_NAME,
                             render_report_md(report, picture, plan))


__all__ = ["render_report_md", "write_report_md", "REPORT_MD_NAME"]
