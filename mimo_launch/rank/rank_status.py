"""Each Slurm task's or torchrun worker's record of where it is: `<run dir>/status/rank<N>.json`.

A task rewrites its file (atomically) when it starts, on entering each phase and when it ends,
so whoever concludes the job reads every rank's last phase and how it ended from files, even
when rank 0, which hosts the store, is dead. Fields: `rank`, `node`, `phase` (the last phase
entered, null before `init`), `ended` (null while running; 'passed', 'mismatch', 'failed' (exit
3), 'terminated' (SIGTERM from Slurm or torchrun), or 'teardown_overdue' (still destroying its
groups `timeout_s` after it began: ended by its own watchdog, `phases.TeardownWatchdog`)).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..reports.report import write_json_atomic

STATUS_DIR = "status"
ENDINGS = {0: "passed", 1: "mismatch"}
TEARDOWN_OVERDUE = "teardown_overdue"


def status_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / STATUS_DIR / f"rank{rank}.json"


class RankStatus:
    """Writes one rank's status file; every write is best effort (a full disk never stops a
    rank)."""

    def __init__(self, run_dir: Path, rank: int, node: str):
        self.path = status_path(run_dir, rank)
        self.data = {"rank": rank, "node": node, "phase": None, "ended": None}
        self._write()

    def enter(self, phase: str) -> None:
        self.data["phase"] = phase
        self._write()

    def end(self, how: str) -> None:
        self.data["ended"] = how
        self._write()

    def _write(self) -> None:
        try:
            write_json_atomic(self.path, self.data)
        except OSError:
            pass


def read_statuses(run_dir: Path, world_size: int) -> dict[int, dict]:
    """Every rank's last status, by rank; ranks that wrote none (never started) are absent."""
    found = {}
    for rank in range(world_size):
        try:
            found[rank] = json.loads(status_path(run_dir, rank).read_text())
        except (OSError, ValueError):
            continue
    return found
