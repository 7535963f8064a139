"""The run's report: what report.json holds and what the launcher prints.

Rank 0 keeps its report current through the run (`keep_rank0_report`). Where a launcher
concludes the run (`RankJob.launcher_concludes`: the local and Slurm launchers), rank 0 hands it
over in `status/report-rank0.json` (`HANDOFF_NAME`) and the launcher writes report.json once,
rank 0's report merged with what the launcher knows (`failure_report`). Where none does (an
sbatch script, torchrun, the sweep plugin's jobs), rank 0 is the concluder and keeps
report.json itself, so that a job killed later still leaves its last verdict. Every file is
written atomically (temporary file, then rename), for passing and failing runs.
"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..app.interrupts import exit_code
from ..checks.health_report import health_lines
from ..errors import EXIT_FAILURE, EXIT_HEALTH, EXIT_MISMATCH, EXIT_PASSED
from ..mimo_config import MimoParallelismConfig
from ..rank.phases import (
    AFTER_VERIFY,
    BEFORE_VERIFY,
    ENTRYPOINT_PHASE,
    HEALTH_PHASE,
    TEARDOWN_PHASE,
)
from ..reports.atomic_file import write_text_atomic

if TYPE_CHECKING:
    from ..rank.rank_job import RankJob

REPORT_NAME = "report.json"
HANDOFF_NAME = "status/report-rank0.json"  # rank 0's report, for the launcher that concludes
# A failed report's `failed_phase` when the concluder could not write report.json: not a rank's
# phase, and after the verdict, which stands
REPORT_WRITE = "report"


@dataclass
class Report:
    """The outcome of one run; `passed` is False on any mismatch or failure."""

    passed: bool
    world_size: int
    backend: str
    mismatches: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    modules: dict[str, dict] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)
    new_group_calls: int | None = None  # groups created world-wide (one per module, kind, list)
    member_new_group_calls: int | None = None  # dist.new_group calls rank 0 really made
    failure: str | None = None
    failed_phase: str | None = None
    failed_ranks: list[int] = field(default_factory=list)
    interrupted: bool = False
    interrupted_by: str | None = None  # 'SIGINT', 'SIGTERM' or 'SIGHUP' when interrupted
    entrypoint: str | None = None  # 'pkg.module:function' run after a passing verification
    entrypoint_finished: bool = False  # it returned on every rank
    health: dict | None = None  # check=health: the health stage's section (health_stage.py)
    skipped_checks: dict[str, str] = field(default_factory=dict)  # check -> why it was not done
    verify_against: str | None = None  # the preset verified against instead of the layout run

    @property
    def awaiting_entrypoint(self) -> bool:
        """Verification passed and the entry point has not finished on every rank (yet)."""
        return (self.entrypoint is not None and self.passed and not self.failure
                and not self.entrypoint_finished)

    @property
    def exit_code(self) -> int:
        """0 pass, 1 mismatch, 3 a failure (a rank died, hung or raised, also in the entry
        point, or the entry point never finished), 4 a health problem (a blamed rank or node,
        with health.fail true), 128 + the signal when interrupted (130 Ctrl-C, 143 SIGTERM,
        129 SIGHUP: `interrupts.exit_code`)."""
        if self.interrupted:
            return exit_code(signal.Signals[self.interrupted_by or "SIGINT"])
        if self.failure or self.awaiting_entrypoint:
            return EXIT_FAILURE
        if self.passed and self.health_problem:
            return EXIT_HEALTH
        return EXIT_PASSED if self.passed else EXIT_MISMATCH

    @property
    def health_problem(self) -> bool:
        """The health stage named a suspect and health.fail asks for a failing exit."""
        return bool(self.health and self.health.get("problem") and self.health.get("fail"))

    def to_dict(self) -> dict:
        """The fields, and `exit_code` (what `mimo-launch` exits with; under torchrun the
        shell sees torchrun's own 0 or 1, so this is where the report's code is kept)."""
        return asdict(self) | {"exit_code": self.exit_code}

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def record_failure(report: Report, message: str, phase: str | None,
                   ranks: list[int]) -> Report:
    """Mark `report` failed by `message` in `phase`, naming `ranks`; what it recorded before
    (modules, timings, hosts, verification results) is kept."""
    report.passed = False
    report.failure = message
    report.failed_phase = phase
    report.failed_ranks = list(ranks)
    return report


def failure_report(job: RankJob, partial: Report | None, message: str, phase: str | None,
                   ranks: list[int], interrupted_by: str | None = None) -> Report:
    """The one place where what a launcher knows of a failed run (its diagnosis, Slurm's
    facts, log tails, a signal) joins what rank 0 recorded: `partial` (rank 0's report, kept
    whole) or, where rank 0 wrote none, a report of `job`'s modules, entry point and
    `verify_against`; failed by `message` in `phase` naming `ranks`; interrupted when
    `interrupted_by` names a signal ('SIGTERM'). The caller writes it (`write_report`)."""
    report = partial or Report(passed=False, world_size=job.world_size, backend=job.backend,
                               modules=module_summary(job.layout), entrypoint=job.entrypoint,
                               verify_against=job.verify_against)
    record_failure(report, message, phase, ranks)
    report.interrupted, report.interrupted_by = interrupted_by is not None, interrupted_by
    return report


def write_json_atomic(path: Path, data: dict) -> None:
    """Write `data` as JSON to `path` so that readers see the old file or the whole new one
    (`atomic_file.write_text_atomic`; OSError such as ENOSPC leaves the old file)."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_report(run_dir: Path, report: Report, name: str = REPORT_NAME) -> Path:
    """Write `report` to `<run_dir>/<name>` atomically (OSError, e.g. ENOSPC, leaves the old
    file); return the path. The concluder of a run writes report.json once with it."""
    path = Path(run_dir) / name
    write_json_atomic(path, report.to_dict())
    return path


def read_report(run_dir: Path, name: str = REPORT_NAME) -> Report | None:
    """The report at `<run_dir>/<name>` (report.json, or rank 0's hand-off `HANDOFF_NAME`);
    None where there is none."""
    path = Path(run_dir) / name
    if not path.exists():
        return None
    return Report.from_dict(json.loads(path.read_text()))


def write_final_report(job: RankJob, report: Report) -> Report:
    """The concluder's one write of report.json; returns the run's report. Where it cannot be
    written (OSError: a full disk, a read-only or replaced path) the run fails: the report
    returned (printed, not written) says why, with the verdict it carried."""
    try:
        write_report(Path(job.run_dir), report)
        return report
    except OSError as exc:
        why = f"report.json could not be written: {exc}"
        print(f"mimo-launch: warning: {why}", file=sys.stderr, flush=True)
        if report.failure:  # the run's own failure stays first
            return failure_report(job, report, f"{report.failure}\n{why}", report.failed_phase,
                                  report.failed_ranks, report.interrupted_by)
        return failure_report(job, report, why, REPORT_WRITE, [], report.interrupted_by)


def report_line(run_dir: Path) -> str:
    """'report: <run_dir>/report.json', the console's last line, or where it could not be
    written (`write_final_report`), that it was not."""
    path = Path(run_dir) / REPORT_NAME
    return f"report: {path}" if path.is_file() else f"report: {path} not written (see above)"


def rank0_report_name(job: RankJob) -> str:
    """Where rank 0 keeps its report during `job`: the hand-off for the launcher that concludes
    the run, else report.json itself (see the module docstring)."""
    return HANDOFF_NAME if job.launcher_concludes else REPORT_NAME


def keep_rank0_report(job: RankJob, report: Report) -> None:
    """Rank 0: record `report` as the run stands now (`rank0_report_name`)."""
    write_report(Path(job.run_dir), report, rank0_report_name(job))


def read_rank0_report(job: RankJob) -> Report | None:
    """What rank 0 last recorded (`keep_rank0_report`); None before it recorded anything."""
    return read_report(Path(job.run_dir), rank0_report_name(job))


# verify.Mismatch.check values, in the verifier's order (verify._CHECKS is step 1's part)
CHECKS = ("members", "consistency", "timeout", "collective", "stage")



def module_summary(layout: MimoParallelismConfig) -> dict[str, dict]:
    """Per module of a validated layout: its sizes and rank range, as the report records them."""
    return {name: {"shape": mod.shape, "first_rank": mod.rank_offset,
                   "end_rank": mod.rank_offset + mod.total_ranks}
            for name, mod in layout.module_parallelisms.items()}


def shape_text(shape: dict[str, int]) -> str:
    """A module's sizes as 'TP2 CP1 ETP1 PP2 DP2' (keys in the dict's order)."""
    return " ".join(f"{k.upper()}{v}" for k, v in shape.items())

_AFTER_VERDICT = AFTER_VERIFY + (REPORT_WRITE,)  # a failure there leaves the verdict standing
_AFTER_VERIFY_NAMES = {HEALTH_PHASE: "health stage", ENTRYPOINT_PHASE: "entry point",
                       TEARDOWN_PHASE: "teardown", REPORT_WRITE: "report.json"}


def verdict_line(report: Report) -> str:
    """'mimo-launch verification PASSED: world size 8, backend gloo'; FAILED on a mismatch or a
    failure in it; 'PASSED, entry point FAILED' after it; 'NOT RUN, grids FAILED' before it
    ('NOT RUN' alone where no rank got as far as a phase: interrupted, never started)."""
    verdict = "PASSED" if report.passed and not report.failure else "FAILED"
    phase, clean = report.failed_phase, report.failure and not report.mismatches
    if phase in _AFTER_VERDICT and not report.mismatches:
        verdict = f"PASSED, {_AFTER_VERIFY_NAMES.get(phase, phase)} FAILED"
    elif clean and phase in BEFORE_VERIFY:
        verdict = f"NOT RUN, {phase} FAILED"
    elif clean and phase is None and "verify" not in report.timings:
        verdict = "NOT RUN"
    preset = report.verify_against
    against = ("" if not preset else f", to verify against preset {preset} (verify_against)"
               if verdict.startswith("NOT RUN")
               else f", verified against preset {preset} (verify_against)")
    return (f"mimo-launch verification {verdict}: world size {report.world_size}, "
            f"backend {report.backend}{against}")


def module_checks(report: Report) -> dict[str, dict[str, int]]:
    """Per module, the number of mismatches of each check; {} when verification never ran."""
    if report.failure and not report.mismatches and report.failed_phase not in _AFTER_VERDICT:
        return {}  # (after a passing verification its checks stand)
    out = {name: dict.fromkeys(CHECKS, 0) for name in report.modules}
    for mm in report.mismatches:
        counts = out.setdefault(mm["module"], dict.fromkeys(CHECKS, 0))
        counts[mm["check"]] = counts.get(mm["check"], 0) + 1
    return out


def checks_text(counts: dict[str, int] | None, skipped=()) -> str:
    """'checks passed', 'checks FAILED: members 3' or 'checks not run', with
    ' (timeout not checked)' for the `skipped` checks."""
    if counts is None:
        return "checks not run"
    bad = [f"{check} {n}" for check, n in counts.items() if n]
    text = "checks FAILED: " + ", ".join(bad) if bad else "checks passed"
    return text + (f" ({', '.join(skipped)} not checked)" if skipped else "")


def detail_lines(report: Report, max_mismatches: int = 20, timings: bool = True) -> list[str]:
    """Phase times, group-call count, the failure and the first mismatches, as plain lines."""
    lines = []
    if report.timings and timings:
        times = "  ".join(f"{k} {v:.3f}s" for k, v in report.timings.items())
        lines.append(f"  timings: {times}")
    if report.new_group_calls is not None:
        line = f"  groups created: {report.new_group_calls} (one per module, kind and member list)"
        if report.member_new_group_calls is not None:
            line += f" (rank 0 called new_group {report.member_new_group_calls} times)"
        lines.append(line)
    lines.extend(f"  {check} not checked: {why}" for check, why in report.skipped_checks.items())
    if report.entrypoint:
        if report.entrypoint_finished:
            state = "finished on every rank"
        elif report.failed_phase == ENTRYPOINT_PHASE or report.awaiting_entrypoint:
            state = "did not finish"
        else:
            state = "not started (verification did not pass)"
        lines.append(f"  entry point {report.entrypoint}: {state}")
    if report.failure:
        first, *rest = report.failure.splitlines()
        lines.append(f"  failure: {first}")
        lines.extend(f"    {line}" for line in rest)
    if report.mismatches:
        lines.append(f"  {len(report.mismatches)} mismatch(es):")
        for mm in report.mismatches[:max_mismatches]:
            lines.append(f"    rank {mm['rank']} module {mm['module']} group {mm['group']} "
                         f"({mm['check']}): expected {mm['expected']}, actual {mm['actual']}")
        if len(report.mismatches) > max_mismatches:
            lines.append(f"    ... {len(report.mismatches) - max_mismatches} more in report.json")
    return lines


def format_summary(report: Report, max_mismatches: int = 20) -> str:
    """A plain-text summary: verdict, one line per module (with its checks), phase times,
    the failure and the first mismatches."""
    lines = [verdict_line(report)]
    checks = module_checks(report)
    for name, info in report.modules.items():
        shape = shape_text(info["shape"])
        lines.append(f"  module {name:<12} ranks [{info['first_rank']}, {info['end_rank']})"
                     f"  {shape}  {checks_text(checks.get(name), report.skipped_checks)}")
    lines.extend(detail_lines(report, max_mismatches))
    lines.extend(health_lines(report.health))
    return "\n".join(lines)
