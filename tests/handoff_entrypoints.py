"""Entry points for the hand-off tests (`mimo-launch entrypoint=tests.handoff_entrypoints:...`,
run from the repository root): each misbehaves on one rank or leaves a trace."""

import time

import torch
import torch.distributed as dist


def raise_on_rank_3(ctx):
    if ctx.rank == 3:
        raise ValueError("rank 3 refuses")


def hang_on_rank_5(ctx):
    if ctx.rank == 5:
        while True:
            time.sleep(1)


def return_7_on_rank_2(ctx):
    return 7 if ctx.rank == 2 else None


def record_groups(ctx):
    """Write what this rank was handed: its modules, and the sum of ranks over each of its
    collections' dp groups (a real all-reduce)."""
    sums = {}
    for name in ctx.process_groups.rank_modules:
        t = torch.tensor([ctx.rank])
        dist.all_reduce(t, group=ctx.process_groups.collections[name].dp)
        sums[name] = int(t.item())
    (ctx.run_dir / f"handed{ctx.rank}.txt").write_text(f"{ctx.world_size} {sums}")


def record_environment(ctx):
    """Write the torchrun variables this rank's environment holds."""
    import json
    import os

    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    (ctx.run_dir / f"env{ctx.rank}.json").write_text(
        json.dumps({k: os.environ.get(k) for k in names}))


def exit_0_on_rank_0(ctx):
    """Rank 0 leaves with exit code 0 while the others are still inside the entry point."""
    import os

    if ctx.rank == 0:
        os._exit(0)
    time.sleep(5)


def record_reports(ctx):
    """Rank 0, inside the entry point (the verdict is in): write which reports the run
    directory holds now, and what rank 0's hand-off to the launcher says."""
    import json

    if ctx.rank == 0:
        handoff = ctx.run_dir / "status" / "report-rank0.json"
        seen = {"report.json": (ctx.run_dir / "report.json").exists(),
                "handoff": json.loads(handoff.read_text()) if handoff.exists() else None}
        (ctx.run_dir / "reports_seen.json").write_text(json.dumps(seen))


def block_report_json(ctx):
    """Rank 0 puts a directory where report.json is to go, so that the launcher cannot write
    it (as a full or read-only disk would refuse it)."""
    if ctx.rank == 0:
        (ctx.run_dir / "report.json").mkdir()
