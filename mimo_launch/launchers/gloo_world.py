"""Run a function on every rank of a real gloo world on this machine, and collect its results.

For tests, benchmarks and anyone checking their own code against real process groups:
`run_gloo_world(4, "/tmp/w", body)` forks 4 ranks (the local launcher's mechanism), joins them
into a gloo world, runs `body(rank)` in each and returns the JSON-able values in rank order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from ..launchers.diagnosis import tail
from ..launchers.local_launcher import fork_ranks, log_path
from ..rank.rank_runner import init_distributed


class WorldFailed(RuntimeError):
    """Some rank did not return: the message says which and ends with the logs' last lines."""


def run_gloo_world(world_size: int, run_dir: Path | str, body: Callable[[int], object],
                   timeout_s: float = 60) -> list:
    """Fork `world_size` gloo ranks running `body(rank)`; return each rank's value in order.

    Logs and results go to `run_dir`. Raises WorldFailed unless every rank returned.
    """
    run_dir = Path(run_dir)

    def rank_main(rank: int, store) -> int:
        torch.set_num_threads(1)
        init_distributed(rank, world_size, "gloo", timeout_s, store)
        result = body(rank)
        (run_dir / f"result{rank}.json").write_text(json.dumps(result))
        dist.destroy_process_group()
        return 0

    run = fork_ranks(world_size, run_dir, timeout_s, rank_main)
    failed = [e for e in run.exits if e.code != 0]
    if not run.ok or failed:
        logs = "\n".join(f"--- rank {e.rank}\n{tail(log_path(run_dir, e.rank), 40)}"
                         for e in failed)
        raise WorldFailed(f"world of {world_size} failed: "
                          f"{run.reason or [e.describe() for e in failed]}\n{logs}")
    return [json.loads((run_dir / f"result{r}.json").read_text()) for r in range(world_size)]
