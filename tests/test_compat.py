"""The compatibility layer (mimo_launch/compat.py): each private member is detected, and where it
does not fit, the public API takes over by itself. Runs on both CI legs (megatron-core 0.16.1
and 0.19.x, torch 2.13 and 2.14)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

from mimo_launch import compat
from mimo_launch.layout.group_kinds import GRID_DIMS, GRID_GROUPS, dims_of
from mimo_launch.mimo_builder import HyperCommGrid

KINDS = [dims_of(kind) for kind in GRID_GROUPS]


def test_group_key_follows_create_pgs_documented_order():
    # create_pg's docstring: dim_names ["tp", "cp", "dp"], dims ["dp", "tp"] -> "dp-tp"
    assert compat.grid_group_key(["tp", "cp", "dp"], ["dp", "tp"]) == "dp-tp"
    assert compat.grid_group_key(list(GRID_DIMS), ["tp", "pp"]) == "pp-tp"
    assert compat.grid_group_key(list(GRID_DIMS), ["dp", "cp"]) == "dp-cp"


class _KeyedOtherwise(HyperCommGrid):
    """A grid whose get_pg looks groups up under another key than create_pg's documented one
    (as a future megatron-core might): storing into `_pgs` would not be seen."""

    def get_pg(self, dims, **kwargs):
        return self._pgs[("base", tuple(sorted(dims if isinstance(dims, list) else [dims])))]


class _NoStorage(HyperCommGrid):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self._pgs


@pytest.fixture
def world_size_env(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")  # HyperCommGrid reads it when no world is initialised


def test_grid_storage_is_used_only_where_it_fits(world_size_env, monkeypatch):
    assert compat.can_register_groups(HyperCommGrid, list(GRID_DIMS), KINDS)
    assert not compat.can_register_groups(_KeyedOtherwise, list(GRID_DIMS), KINDS)
    assert not compat.can_register_groups(_NoStorage, list(GRID_DIMS), KINDS)
    monkeypatch.setenv(compat.NO_FAST_PATHS, "1")
    assert not compat.can_register_groups(HyperCommGrid, list(GRID_DIMS), KINDS)


def test_registered_groups_come_back_from_get_pg(world_size_env):
    grid = HyperCommGrid([1, 1, 1, 1, 1], list(GRID_DIMS))
    markers = {kind: object() for kind in GRID_GROUPS}
    for kind, marker in markers.items():
        compat.register_group(grid, dims_of(kind), marker)
    assert all(grid.get_pg(dims_of(kind)) is m for kind, m in markers.items())
    with pytest.raises(KeyError):
        compat.register_group(grid, ["tp"], object())


class _NoDestroy(HyperCommGrid):
    destroy = None  # as on megatron-core < 0.17


def test_destroy_fallback_without_grid_destroy(tmp_path, run_world):
    """Where the grid has no `destroy` (megatron-core < 0.17), each kind's group is destroyed
    through torch, once, and the grid forgets them; exercised on every CI leg."""

    def body(rank):
        grid = _NoDestroy([2, 1, 1, 1, 1], list(GRID_DIMS), backend="gloo")
        for dims in KINDS:
            grid.create_pg(dims)
        groups = [grid.get_pg(dims) for dims in KINDS]
        compat.destroy_grid(grid, KINDS)
        gone = 0
        for group in groups:
            try:
                dist.get_process_group_ranks(group)
            except (KeyError, ValueError, RuntimeError):
                gone += 1
        try:
            grid.get_pg(["tp"])
            forgotten = False
        except KeyError:
            forgotten = True
        return {"gone": gone, "forgotten": forgotten}

    assert run_world(tmp_path, 2, body, 30) == [{"gone": len(KINDS), "forgotten": True}] * 2


@pytest.mark.parametrize("env, light", [({}, True), ({compat.NO_FAST_PATHS: "1"}, False)])
def test_light_import_is_the_same_class_and_megatron_core_still_imports(env, light):
    """The builder's HyperCommGrid comes without megatron-core's package init (fast path) or
    from the ordinary import; either way it is the class megatron-core itself exports, and
    the rest of megatron-core imports afterwards."""
    code = (
        "import json, sys\n"
        "from mimo_launch.mimo_builder import HyperCommGrid\n"
        "light = 'megatron.core.parallel_state' not in sys.modules\n"
        "import megatron.core.hyper_comm_grid\n"
        "attr = megatron.core.hyper_comm_grid.HyperCommGrid is HyperCommGrid\n"
        "from megatron.core.hyper_comm_grid import HyperCommGrid as theirs\n"
        "from megatron.core import parallel_state\n"
        "import megatron.core\n"
        "after = megatron.core.hyper_comm_grid.HyperCommGrid is HyperCommGrid\n"
        "print(json.dumps({'light': light, 'same': HyperCommGrid is theirs, 'attr': attr,\n"
        "                  'after': after,\n"
        "                  'ps': hasattr(parallel_state, 'initialize_model_parallel')}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "light": light, "same": True, "attr": True, "after": True, "ps": True}


def test_counter_skip_is_off_where_torch_would_barrier(tmp_path, run_world):
    """torch reads TORCH_DIST_INIT_BARRIER as an integer: '01' and ' 1' turn its barrier on
    too (the skip then hung the build); '0' and '00' leave it off."""
    values = ["1", "01", " 1", "x", "0", "00"]

    def body(rank):
        before = compat.can_skip_non_member_groups()
        barrier = []
        for value in values:
            os.environ["TORCH_DIST_INIT_BARRIER"] = value
            barrier.append(compat.can_skip_non_member_groups())
        del os.environ["TORCH_DIST_INIT_BARRIER"]
        os.environ[compat.NO_FAST_PATHS] = "1"
        off = compat.can_skip_non_member_groups()
        return [before, barrier, off, isinstance(compat.group_count(), int)]

    assert run_world(tmp_path, 1, body, 30) == [
        [True, [False, False, False, False, True, True], False, True]]


def test_importing_the_public_api_loads_nothing_of_megatron_core():
    """Importing the builder changes no other module: megatron-core's HyperCommGrid is loaded
    (and `megatron.core` registered) only when a grid is first asked for."""
    code = ("import sys\n"
            "import mimo_launch.mimo_builder, mimo_launch.mimo_config\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'megatron'))\n"
            "from mimo_launch.mimo_builder import HyperCommGrid\n"
            "print('megatron.core.hyper_comm_grid' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["[]", "True"]
