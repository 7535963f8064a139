"""Local launch: the default `mimo-launch` run against a floor of the same number of gloo ranks
that only import torch once, fork, join the world and barrier (`benchmarks/launch_floor.py`).

Wall time is measured on runs with nothing watching them. Memory is sampled on separate runs:
every 10 ms the whole process tree's /proc/<pid>/smaps_rollup is read. Per process we keep the
peak PSS (proportional set size: shared pages, such as the torch pages a forked rank shares
with its parent, are divided among the processes sharing them, so PSS adds up to the memory
the run really takes) and the peak USS (pages only that process has). Totals are the largest
sum of PSS over the tree at one sample. The per-rank PSS figure is taken only at samples where
all W ranks are alive (the largest mean over them), since a rank that outlives the others
inherits a larger share of the shared pages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .common import median, smaps_rollup

SUB = "- "  # a phase inside the one before it (not added to the sum)
MIMO_LAUNCH = Path(sys.executable).parent / "mimo-launch"
REPO = Path(__file__).resolve().parent.parent


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out.extend(int(c) for c in text)
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(_children(p))
    return seen


def run(cmd: list[str], sample: bool, world_size: int = 8) -> dict:
    """Run `cmd` in a fresh directory; wall seconds, the JSON phases it prints on its last
    line (if any) and, if `sample`, per-process peaks."""
    with tempfile.TemporaryDirectory(prefix="mimo_launch_bench_") as tmp:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        peaks: dict[int, dict] = {}
        total = [0, 0]  # peak PSS of the tree; peak mean PSS of the ranks while all alive
        stop = threading.Event()

        def sampler():
            while not stop.is_set():
                now, ranks = 0, []
                for pid in _tree(proc.pid):
                    try:
                        m = smaps_rollup(pid)
                    except (OSError, KeyError, ValueError):
                        continue
                    now += m["pss"]
                    if pid != proc.pid:
                        ranks.append(m["pss"])
                    best = peaks.setdefault(pid, dict(m, parent=pid == proc.pid))
                    for k in ("rss", "pss", "uss"):
                        best[k] = max(best[k], m[k])
                if len(ranks) == world_size:
                    total[1] = max(total[1], sum(ranks) / world_size)
                total[0] = max(total[0], now)
                stop.wait(0.01)

        thread = threading.Thread(target=sampler, daemon=True) if sample else None
        if thread:
            thread.start()
        stdout, _ = proc.communicate()
        code = proc.returncode
        wall = time.perf_counter() - t0
        stop.set()
        if thread:
            thread.join()
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {code}")
    ranks = [p for p in peaks.values() if not p["parent"]]
    out = {"wall": wall, "phases": _phases(stdout)}
    if sample and not total[1]:
        return out | {"missed": True}  # no sample caught every rank alive
    if sample:
        out.update(ranks=len(ranks), total_pss_mib=total[0] / 1024,
                   rank_pss_mib=total[1] / 1024,
                   rank_uss_mib=median([p["uss"] for p in ranks]) / 1024,
                   rank_rss_mib=median([p["rss"] for p in ranks]) / 1024)
    return out


def _phases(stdout: str) -> dict:
    lines = stdout.strip().splitlines()
    try:
        return json.loads(lines[-1]) if lines else {}
    except ValueError:
        return {}


def _median_phases(runs: list[dict]) -> dict:
    """Median of each disjoint phase; the rest of the wall time is interpreter start and exit
    (and, for the phase split, what it does not name)."""
    keys = [k for k, v in runs[0]["phases"].items() if isinstance(v, float)]
    out = {k: median([r["phases"][k] for r in runs]) for k in keys}
    disjoint = [k for k in keys if not k.startswith(SUB)]
    out["rest (interpreter start, exit)"] = median(
        [r["wall"] - sum(r["phases"][k] for k in disjoint) for r in runs])
    out["wall"] = median([r["wall"] for r in runs])
    return out


def measure(repeats: int, world_size: int = 8) -> dict:
    """The default run and the floor, alternately `repeats` times each; the default run once
    more per repeat with phase timers (benchmarks/launch_breakdown.py); then one sampled run
    of each for memory."""
    ours_cmd = [str(MIMO_LAUNCH), "device=cpu"]
    split_cmd = [sys.executable, "-m", "benchmarks.launch_breakdown"]
    floor_cmd = [sys.executable, "-m", "benchmarks.launch_floor", str(world_size)]
    walls = {"ours": [], "floor": []}
    splits, floors = [], []
    for _ in range(repeats):
        walls["ours"].append(run(ours_cmd, False)["wall"])
        floors.append(_in_repo(floor_cmd))
        splits.append(_in_repo(split_cmd))
    mem = {"ours": _sampled(lambda: run(ours_cmd, True, world_size)),
           "floor": _sampled(lambda: _in_repo(floor_cmd, True, world_size))}
    return {"W": world_size, "ours_wall": median(walls["ours"]),
            "floor_wall": median([f["wall"] for f in floors]), "mem": mem,
            "ours_phases": _median_phases(splits), "floor_phases": _median_phases(floors)}


def _sampled(fn, attempts: int = 5) -> dict:
    """A sampled run that caught every rank alive at least once (short runs can slip by)."""
    for _ in range(attempts):
        result = fn()
        if not result.get("missed"):
            return result
    raise RuntimeError(f"no memory sample caught every rank alive in {attempts} runs")


def _in_repo(cmd: list[str], sample: bool = False, world_size: int = 8):
    """Run a module of this package (the floor, the phase split) from the repository."""
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = f"{REPO}{os.pathsep}{env_path}" if env_path else str(REPO)
    try:
        result = run(cmd, sample, world_size)
    finally:
        if env_path:
            os.environ["PYTHONPATH"] = env_path
        else:
            del os.environ["PYTHONPATH"]
    return result
