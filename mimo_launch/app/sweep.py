"""A local sweep (`mimo-launch -m ...`): one point after another, each in its own Hydra sweep
subdirectory, then a summary table, printed and written as `sweep.md` and `sweep.json` in the
sweep directory.

The sweep's exit code is its worst point's, by severity (`SEVERITY`): an interrupt (128 + the
signal) first, then a failure while running (3), a mismatch (1), a health problem (4), a Slurm
job pending too long (5), bad input (2), and 0 only when every point passed. A sweep stopped by
an interrupt exits with that interrupt's code whatever its points did.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..reports.atomic_file import write_text_atomic
from ..settings.app_config import UsageError
from ..settings.run_dir import SWEEP_MARKER, absolute_path, holds_a_run, unusable_reason

# Created with O_EXCL in the sweep directory: "a sweep lives here".
# Most severe first; an interrupt (128 + signal, e.g. 130) outranks them all.
SEVERITY = (3, 1, 4, 5, 2, 0)
# Exit 0 without verifying anything: mode=plan, a Slurm dry run (Sweep.record's unverified).
PLANNED, DRY_RUN = "planned", "dry run"
VERDICTS = {0: "passed", 1: "mismatch", 2: "bad input", 3: "failure", 4: "health problem",
            5: "pending too long"}


def verdict_of(code: int) -> str:
    """A point's verdict word for its exit code ('interrupted' for 128 + a signal)."""
    return "interrupted" if code > 128 else VERDICTS.get(code, f"exit {code}")


def as_written(override: str) -> str:
    """An override of a sweep point as the user wrote it: without Hydra's backslash escapes
    (`examples.mimo_step\\:main` -> `examples.mimo_step:main`), booleans spelled as in YAML
    (Hydra writes a swept `dry_run=true` as Python's `dry_run=True`; a quoted 'True' keeps
    its quotes, so only a boolean matches)."""
    spelled = re.sub(r"(?<=[=,\[:])(True|False)(?=[,\]}]|$)",
                     lambda m: m.group(1).lower(), override)
    return re.sub(r"\\(.)", r"\1", spelled)


def cell(text: str) -> str:
    """`text` as one Markdown table cell: `|` escaped, on one line."""
    return " ".join(text.replace("\\", "\\\\").replace("|", "\\|").split())


def worst(codes: list[int]) -> int:
    """The most severe of `codes` (module docstring); 0 for none."""
    interrupts = [c for c in codes if c > 128]
    if interrupts:
        return interrupts[0]
    rank = {code: i for i, code in enumerate(SEVERITY)}
    return min(codes, key=lambda c: rank.get(c, -1), default=0)


@dataclass
class Point:
    """One point of the sweep: its overrides (Hydra's `hydra.overrides.task`), its directory,
    exit code, verdict, wall time (s) and, for bad input, the one-line error."""

    num: int
    overrides: list[str]
    run_dir: str
    exit_code: int = 0
    verdict: str = "passed"
    time_s: float = 0.0
    error: str | None = None

    @property
    def label(self) -> str:
        """The point's overrides as the user wrote them (`as_written`), or '(defaults)'."""
        return " ".join(as_written(o) for o in self.overrides) or "(defaults)"


@dataclass
class Sweep:
    """The points run so far in `sweep_dir`."""

    sweep_dir: Path
    points: list[Point] = field(default_factory=list)

    @classmethod
    def claim(cls, sweep_dir: str | Path) -> Sweep:
        """Claim `sweep_dir` (created if needed) for this sweep. A directory holding an earlier
        sweep or run, or one that cannot be written, is refused: UsageError (one line)."""
        path = absolute_path(sweep_dir)
        if path == Path(path.anchor):
            raise UsageError(f"hydra.sweep.dir {path} is the file-system root: give "
                             f"hydra.sweep.dir a directory of its own")
        if path.exists() and not path.is_dir():
            raise UsageError(f"hydra.sweep.dir {path} cannot be used: a file of that name "
                             f"exists")
        if path.is_dir() and holds_a_run(path):
            raise UsageError(f"hydra.sweep.dir {path} holds an earlier single run: give "
                             f"another hydra.sweep.dir")
        try:
            path.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path / SWEEP_MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            raise UsageError(f"hydra.sweep.dir {path} holds an earlier sweep: give another "
                             f"hydra.sweep.dir") from None
        except OSError as exc:
            raise UsageError(f"hydra.sweep.dir {path} cannot be used: "
                             f"{unusable_reason(exc)}") from None
        return cls(path)

    def point_dir(self, output_dir: str | Path) -> Path:
        """A point's directory, which must lie inside the sweep directory (hydra.sweep.subdir
        neither absolute nor climbing out with `..`); UsageError otherwise."""
        point = absolute_path(output_dir)
        inside = Path(os.path.normpath(point))
        if inside == self.sweep_dir or self.sweep_dir not in inside.parents:
            raise UsageError(f"hydra.sweep.subdir puts a point in {inside}, outside the sweep "
                             f"directory {self.sweep_dir}: give a relative subdir without '..'")
        return point

    def release_if_empty(self) -> None:
        """Undo the claim of a sweep that ran no point (refused before its first): the marker,
        Hydra's `multirun.yaml` of this sweep, and the directory if that leaves it empty."""
        if self.points:
            return
        try:
            (self.sweep_dir / SWEEP_MARKER).unlink()
            (self.sweep_dir / "multirun.yaml").unlink(missing_ok=True)
            self.sweep_dir.rmdir()
        except OSError:
            pass

    def record(self, point: Point, code: int, time_s: float, error: str | None = None,
               unverified: str | None = None) -> None:
        """Record `point`'s outcome; `unverified` ('planned', 'dry run') is its verdict when it
        exits 0 without verifying anything."""
        point.exit_code, point.verdict = code, unverified if unverified and code == 0 \
            else verdict_of(code)
        point.time_s, point.error = round(time_s, 2), error
        self.points.append(point)

    def exit_code(self, interrupted: int | None = None) -> int:
        """The sweep's exit code: `interrupted` (128 + signal) if it was stopped, else the
        worst point's."""
        return interrupted if interrupted is not None else worst(
            [p.exit_code for p in self.points])

    def table(self, interrupted: int | None = None) -> str:
        """The summary as a Markdown table (also the console's), with a closing line."""
        rows = ["| # | point | verdict | exit | time (s) | output |",
                "| --- | --- | --- | --- | --- | --- |"]
        for p in self.points:
            verdict = p.verdict + (f": {p.error}" if p.error else "")
            rows.append(f"| {p.num} | {cell(p.label)} | {cell(verdict)} | {p.exit_code} | "
                        f"{p.time_s:.1f} | {cell(p.run_dir)} |")
        end = (f"stopped by an interrupt after {len(self.points)} point(s)"
               if interrupted is not None else f"{len(self.points)} point(s)")
        return "\n".join(rows) + f"\n\n{end}; exit code {self.exit_code(interrupted)}\n"

    def write(self, interrupted: int | None = None) -> list[Path]:
        """Write sweep.md and sweep.json (atomically) into the sweep directory."""
        data = {"sweep_dir": str(self.sweep_dir), "exit_code": self.exit_code(interrupted),
                "interrupted": interrupted is not None,
                "severity": "interrupt, then exit codes " + ", ".join(map(str, SEVERITY)),
                "points": [asdict(p) for p in self.points]}
        md = f"# mimo-launch sweep\n\n{self.sweep_dir}\n\n{self.table(interrupted)}"
        return [write_text_atomic(self.sweep_dir / "sweep.md", md),
                write_text_atomic(self.sweep_dir / "sweep.json",
                                  json.dumps(data, indent=2) + "\n")]


def check_subdir(subdir: str) -> None:
    """`hydra.sweep.subdir` as written (before interpolation): relative and without `..`, so
    that every point stays inside the sweep directory; UsageError otherwise."""
    if not subdir.strip() or os.path.isabs(subdir) or ".." in Path(subdir).parts:
        raise UsageError(f"hydra.sweep.subdir={subdir} would put points outside the sweep "
                         f"directory: give a relative subdir without '..' (default: "
                         f"${{hydra.job.num}})")


__all__ = ["Point", "cell", "check_subdir", "as_written", "SEVERITY", "Sweep", "verdict_of",
           "worst"]
