"""The health stage: its cost at W = 8, 16, 32 on gloo, and its busbw against a plain loop.

    python -m benchmarks.bench_health [--repeats N] [--worlds 8,16,32]

Each repeat is two local `check=health` runs (forked gloo ranks, the launcher's own code path)
of a two-module layout (vision TP2 on half the world, language TP1 PP2 on the other half, DP
filling each), with `health.fail=false`:
- the cost: the stage at its defaults (the CPU sizes, 10 iterations), as `check=health` runs;
- the agreement: one size, 1 MiB, 100 timed iterations (a budget that lets
  every one run); after the stage, in the same run, the
  entry point `benchmarks.bench_health:plain_all_reduce` times a plain `torch.distributed`
  all-reduce loop (barrier, 2 warm-up, 100 timed back to back: nccl-tests' loop) in every rank's
  dp groups, all at once as the stage runs them. The table compares the stage's median busbw
  of the dp all-reduce row with the plain loop's (the same groups, the same conventions: the
  slowest member's time, busbw = size / time x 2(n-1)/n): they must agree within 10%. (With
  10 iterations of ~3 ms on 2 shared cores, one run's ratio strays by up to 15% either way.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from .common import layout, median

SIZE = 1 << 20
ITERS = 100
AGREEMENT_BUDGET_S = 60.0  # per kind: every one of the ITERS iterations runs, as the loop's
WORLDS = (8, 16, 32)
REPO = Path(__file__).resolve().parent.parent


def plain_all_reduce(ctx) -> None:
    """Entry point: a plain all-reduce loop in this rank's dp groups, each rank's times to
    `<run_dir>/plain/rank<r>.json`."""
    import torch
    import torch.distributed as dist

    out = []
    dist.barrier()
    for name in ctx.process_groups.rank_modules:
        group = ctx.process_groups.collections[name].dp
        buf = torch.ones(SIZE // 4)
        for _ in range(2):
            dist.all_reduce(buf, group=group)
        start = time.perf_counter()
        for _ in range(ITERS):
            dist.all_reduce(buf, group=group)
        out.append({"module": name, "ranks": dist.get_process_group_ranks(group),
                    "time_s": (time.perf_counter() - start) / ITERS})
    path = ctx.run_dir / "plain" / f"rank{ctx.rank}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out))


def bench_layout(world: int):
    half = world // 2
    return layout(vision=dict(tp=2, pp=1, dp=half // 2),
                  language=dict(tp=1, pp=2, dp=half // 2, rank_offset=half)).validate(world)


def plain_busbw(run_dir: Path, world: int) -> float:
    """Median over dp groups of the plain loop's busbw (GB/s), slowest member's time."""
    slowest: dict[tuple, float] = {}
    for rank in range(world):
        for rec in json.loads((run_dir / "plain" / f"rank{rank}.json").read_text()):
            key = (rec["module"], tuple(rec["ranks"]))
            slowest[key] = max(slowest.get(key, 0.0), rec["time_s"])
    return statistics.median(SIZE / t / 1e9 * 2 * (len(k[1]) - 1) / len(k[1])
                             for k, t in slowest.items())


def _launch(world: int, run_dir: str, agreement: bool):
    """One local check=health run; (report, wall seconds). `agreement`: 1 MiB, ITERS
    iterations and the plain loop after the stage; else the stage at its defaults."""
    from mimo_launch.launchers.local_launcher import launch_local
    from mimo_launch.rank.rank_runner import RankJob
    from mimo_launch.settings.health_config import HealthSettings

    extra = dict(entrypoint="benchmarks.bench_health:plain_all_reduce",
                 entrypoint_dir=str(REPO)) if agreement else {}
    health = (HealthSettings(sizes=(SIZE,), iters=ITERS, budget_s=AGREEMENT_BUDGET_S,
                             fail=False) if agreement
              else HealthSettings(fail=False))
    job = RankJob(layout=bench_layout(world), world_size=world, run_dir=run_dir, timeout_s=120,
                  health=health, **extra)
    start = time.perf_counter()
    report = launch_local(job)
    wall = time.perf_counter() - start
    if report.failure or not report.health:
        raise RuntimeError(f"W={world}: {report.failure}")
    return report, wall


def run_once(world: int) -> dict:
    from mimo_launch.groups.pg_collections import process_group_collection_class

    process_group_collection_class()  # megatron-core's package init once, as `launch` does
    with tempfile.TemporaryDirectory(prefix="mimo_bench_health_") as tmp:
        cost, wall = _launch(world, str(Path(tmp) / "cost"), agreement=False)
        report, _ = _launch(world, str(Path(tmp) / "agreement"), agreement=True)
        (row,) = [r for r in report.health["rows"]
                  if r["kind"] == "dp" and r["op"] == "all_reduce"]
        return {"stage_s": cost.timings["health"], "wall_s": wall,
                "groups": len(report.health["groups"]), "health": row["busbw_median"],
                "plain": plain_busbw(Path(tmp) / "agreement", world)}


def measure(world: int, repeats: int) -> dict:
    """Medians over `repeats` runs at `world` ranks."""
    runs = [run_once(world) for _ in range(repeats)]
    out = {"W": world, "repeats": repeats}
    for key in ("stage_s", "wall_s", "groups", "health", "plain"):
        out[key] = median([r[key] for r in runs])
    # each run compares the stage with the plain loop of the same run (the same load on the
    # same cores); the median of those paired ratios, not a ratio of medians across runs
    ratios = [r["health"] / r["plain"] for r in runs]
    out["ratio"], out["ratio_min"], out["ratio_max"] = median(ratios), min(ratios), max(ratios)
    return out


def section(rows: list[dict]) -> list[str]:
    """The RESULTS.md section: stage cost and busbw agreement per world size."""
    lines = ["## Health stage (`check=health`, gloo)", "",
             "Cost: the stage at its defaults (64 KiB and 1 MiB, 10 iterations). Agreement: "
             f"1 MiB, {ITERS} iterations, stage and plain loop in the same run.", "",
             "| W | groups and links timed | stage s | whole run s | dp all-reduce busbw, "
             "stage (GB/s) | plain loop (GB/s) | stage / plain (paired) | runs' range | "
             "within 10% |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = "met" if abs(r["ratio"] - 1) <= 0.10 else "**not met**"
        lines.append(f"| {r['W']} | {r['groups']:.0f} | {r['stage_s']:.2f} | {r['wall_s']:.2f} | "
                     f"{r['health']:.3f} | {r['plain']:.3f} | {r['ratio']:.2f} | "
                     f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f} | {ok} |")
    return lines + ["", "The plain loop runs in the same run, right after the stage, as an "
                    "entry point (`benchmarks/bench_health.py`); stage / plain is the median "
                    "over runs of each run's own ratio.", ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--worlds", default=",".join(map(str, WORLDS)))
    args = parser.parse_args(argv)
    rows = [measure(int(w), args.repeats) for w in args.worlds.split(",")]
    print("\n".join(section(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
