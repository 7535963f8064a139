"""Shared test helpers: layouts, the CLI as a subprocess, and real multi-process worlds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mimo_launch.local_launcher import fork_ranks
from mimo_launch.mimo_config import MimoParallelismConfig, short_layout
from mimo_launch.rank_runner import init_distributed

REPO = Path(__file__).resolve().parent.parent
MIMO_LAUNCH = Path(sys.executable).parent / "mimo-launch"


def layout(**modules) -> MimoParallelismConfig:
    """layout(vision=dict(tp=2, dp=2), language=dict(pp=2, dp=2, rank_offset=4))."""
    return short_layout(modules)


def run_cli(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `mimo-launch ARGS` in `cwd`; CI=1 keeps the output plain."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([str(MIMO_LAUNCH), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def run_world():
    """The `world` helper below, as a fixture."""
    return world


def world(tmp_path: Path, world_size: int, body, timeout_s: float = 60) -> list:
    """Fork `world_size` real gloo ranks running `body(rank)`; return each rank's JSON result.

    Fails the test (with the failing rank's log) unless every rank exits 0.
    """
    def rank_main(rank: int, store) -> int:
        init_distributed(rank, world_size, "gloo", timeout_s, store)
        result = body(rank)
        (tmp_path / f"result{rank}.json").write_text(json.dumps(result))
        import torch.distributed as dist

        dist.destroy_process_group()
        return 0

    run = fork_ranks(world_size, tmp_path, timeout_s, rank_main)
    if not run.ok or any(e.code != 0 for e in run.exits):
        logs = "\n".join(f"--- rank {r}\n{(tmp_path / 'logs' / f'rank{r}.log').read_text()}"
                         for r in range(world_size) if (tmp_path / "logs" / f"rank{r}.log").exists())
        pytest.fail(f"world failed: {run.reason or [e.describe() for e in run.exits]}\n"
                    f"{logs[-4000:]}")
    return [json.loads((tmp_path / f"result{r}.json").read_text()) for r in range(world_size)]


def collect_memberships(cfg: MimoParallelismConfig):
    """A rank body: build every module's groups and return their members as the rank sees
    them (straight from dist.get_process_group_ranks), plus its stage flags."""
    from mimo_launch.group_kinds import GRID_GROUPS, dims_of
    from mimo_launch.mimo_builder import build_mimo_groups
    import torch.distributed as dist

    def ranks(group):
        return None if group is None else sorted(dist.get_process_group_ranks(group))

    def body(rank):
        groups = build_mimo_groups(cfg)
        out = {}
        for mod, mg in groups.modules.items():
            got = {kind: ranks(mg.grid.get_pg(dims_of(kind))) for kind in GRID_GROUPS}
            got["pos_embd"], got["embd"] = ranks(mg.pos_embd), ranks(mg.embd)
            got["first"], got["last"] = mg.is_first_stage, mg.is_last_stage
            out[mod] = got
        groups.destroy()
        return out

    return body


def assert_memberships_match(results: list, cfg: MimoParallelismConfig, world_size: int):
    """Every rank's groups and stage flags equal the oracle's."""
    from mimo_launch.group_kinds import ALL_GROUPS
    from mimo_launch.layout_oracle import expected_layout

    exp = expected_layout(cfg, world_size)
    for rank, got in enumerate(results):
        for name, mod in exp.modules.items():
            for kind in ALL_GROUPS:
                assert got[name][kind] == mod.members(kind, rank), (rank, name, kind)
            assert got[name]["first"] == bool(mod.first_stage[rank]), (rank, name)
            assert got[name]["last"] == bool(mod.last_stage[rank]), (rank, name)
