"""Shared test helpers: layouts, the CLI as a subprocess, and real multi-process worlds."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mimo_launch.launchers.gloo_world import WorldFailed, run_gloo_world
from mimo_launch.mimo_config import MimoParallelismConfig, short_layout

REPO = Path(__file__).resolve().parent.parent
MIMO_LAUNCH = Path(sys.executable).parent / "mimo-launch"
# Held by the pytest session that uses the local Slurm cluster (see slurm_cluster).
SLURM_TESTS_LOCK = "/tmp/mimo-launch-slurm-tests.lock"


def layout(**modules) -> MimoParallelismConfig:
    """layout(vision=dict(tp=2, dp=2), language=dict(pp=2, dp=2, rank_offset=4))."""
    return short_layout(modules)


def run_cli(*args: str, cwd: Path, timeout: float = 240,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `mimo-launch ARGS` in `cwd`, with `env` added to the environment."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([str(MIMO_LAUNCH), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def require_root(what: str) -> None:
    """Fail, not skip, where a root-only test cannot run: `make test` must not pass without
    running it. Machines without root deselect those tests (`make test-fast`)."""
    if os.geteuid() != 0:
        pytest.fail(f"{what} needs root; without root, deselect these tests: make test-fast, "
                    f"or pytest -m 'not slurm and not container'", pytrace=False)


@pytest.fixture
def run_world():
    """The `world` helper below, as a fixture."""
    return world


def world(tmp_path: Path, world_size: int, body, timeout_s: float = 60) -> list:
    """Fork `world_size` real gloo ranks running `body(rank)`; return each rank's JSON result.
    Fails the test (with the failing ranks' logs) unless every rank returns."""
    try:
        return run_gloo_world(world_size, tmp_path, body, timeout_s)
    except WorldFailed as exc:
        pytest.fail(str(exc)[-4000:])


@pytest.fixture(scope="session")
def mismatch_run(tmp_path_factory):
    """One `mimo-launch mimo=colocated_8 verify_against=vlm_8` run (exit 1, many mismatches),
    shared by the tests that read its output: (process, run directory)."""
    tmp = tmp_path_factory.mktemp("mismatch")
    out = tmp / "run"
    proc = run_cli("mimo=colocated_8", "verify_against=vlm_8", f"hydra.run.dir={out}", cwd=tmp)
    return proc, out


def _controller_up() -> bool:
    try:
        return subprocess.run(["scontrol", "ping"], capture_output=True, text=True,
                              timeout=10).stdout.count("UP") > 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local cluster of slurm/local/, started if needed; stopped at the end if started here.

    One pytest session at a time uses it: a second session (another checkout, a helper) waits
    here for the first to finish, rather than restarting the cluster under its jobs."""
    require_root("the local Slurm cluster (slurm/local/start.sh)")
    lock = open(SLURM_TESTS_LOCK, "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    was_up = _controller_up()
    proc = subprocess.run(["bash", str(REPO / "slurm" / "local" / "start.sh")],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"slurm/local/start.sh failed:\n{proc.stdout}\n{proc.stderr}")
    yield
    if not was_up:
        subprocess.run(["bash", str(REPO / "slurm" / "local" / "stop.sh")],
                       capture_output=True, timeout=120)
    lock.close()


def collect_memberships(cfg: MimoParallelismConfig):
    """A rank body: build every module's groups and return their members as the rank sees
    them (straight from dist.get_process_group_ranks), plus its stage flags."""
    import torch.distributed as dist

    from mimo_launch.layout.layout_oracle import SPEC_GRID_KINDS
    from mimo_launch.mimo_builder import build_mimo_groups

    def ranks(group):
        return None if group is None else sorted(dist.get_process_group_ranks(group))

    def body(rank):
        groups = build_mimo_groups(cfg)
        out = {}
        for mod, mg in groups.modules.items():
            got = {kind: ranks(mg.grid.get_pg(kind.split("+"))) for kind in SPEC_GRID_KINDS}
            got["pos_embd"], got["embd"] = ranks(mg.pos_embd), ranks(mg.embd)
            got["first"], got["last"] = mg.is_first_stage, mg.is_last_stage
            out[mod] = got
        groups.destroy()
        return out

    return body


def assert_memberships_match(results: list, cfg: MimoParallelismConfig, world_size: int):
    """Every rank's groups and stage flags equal the oracle's, for every kind of SPEC's list
    (the oracle's own, not the builder's)."""
    from mimo_launch.layout.layout_oracle import SPEC_KINDS, expected_layout

    exp = expected_layout(cfg, world_size)
    for rank, got in enumerate(results):
        for name, mod in exp.modules.items():
            for kind in SPEC_KINDS:
                assert got[name][kind] == mod.members(kind, rank), (rank, name, kind)
            assert got[name]["first"] == bool(mod.first_stage[rank]), (rank, name)
            assert got[name]["last"] == bool(mod.last_stage[rank]), (rank, name)


# Variables of the shell that would change what the code under test does: the fast-path switch,
# torch.distributed's own knobs. Tests that want one set it themselves.
_LEAKY_PREFIXES = ("MIMO_LAUNCH_", "TORCH_DIST_", "TORCH_GLOO_", "MASTER_ADDR", "MASTER_PORT")


def pytest_configure(config):
    """Start every run from a clean environment, and make sure the `mimo-launch` that CLI
    tests start runs this checkout's code (an editable install of another checkout in the
    same virtual environment would silently test that one)."""
    for key in [k for k in os.environ if k.startswith(_LEAKY_PREFIXES)]:
        del os.environ[key]
    probe = subprocess.run(
        [sys.executable, "-c", "import mimo_launch.conf as c, mimo_launch.cli as m; "
                               "print(m.__file__); print(*c.__path__)"],
        capture_output=True, text=True, cwd="/", timeout=60)
    paths = probe.stdout.split()
    if probe.returncode or len(paths) < 2 or not all(
            Path(p).resolve().is_relative_to(REPO) for p in paths):
        raise pytest.UsageError(
            f"the virtual environment of {sys.executable} does not run this checkout ({REPO}): "
            f"it has {paths or probe.stderr.strip()[-300:]}; run `pip install -e .` here")
    if not MIMO_LAUNCH.exists():
        raise pytest.UsageError(f"{MIMO_LAUNCH} is missing: run `pip install -e .` here")


def pytest_report_header(config):
    """The stack under test, on the first lines of every run (CI runs two: see the Makefile)."""
    from importlib.metadata import version

    import torch

    return (f"stack: Python {sys.version.split()[0]}, torch {torch.__version__}, "
            f"megatron-core {version('megatron-core')}")
