"""Mutation check of the verifier: every realistic builder bug must fail some preset's run.

Each mutant below puts one small bug into the builder side (mimo_builder.py, group_factory.py)
of this process; then every preset of conf/mimo/ (but large_16k, for planning only) runs as
`mimo-launch` would run it: `launch_local` forks real gloo ranks from this process (so they
inherit the mutant), each builds, verifies and writes its report. A mutant is caught by a
preset whose run names it (`caught`): exit 1 (a mismatch), or exit 3 naming the phase and the
rank(s) it failed in; any other non-zero exit (an unnamed failure, an interrupt, a health
code) is listed as "not caught (exit N)". Prints a table (mutant, presets that caught it, their
exit codes) and the score; exits 1 unless every mutant is caught, and also when an unmutated
run fails (the check would mean nothing).

    make mutants                  # or: .venv/bin/python -m benchmarks.mutants [--timeout-s 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch.distributed as dist
from omegaconf import OmegaConf

from mimo_launch import mimo_builder
from mimo_launch.groups import group_factory
from mimo_launch.launchers.local_launcher import launch_local
from mimo_launch.rank import rank_runner
from mimo_launch.rank.rank_runner import RankJob
from mimo_launch.reports.report import Report
from mimo_launch.settings.app_config import conf_dir, layout_from

SKIPPED_PRESETS = ("large_16k",)  # planning only: 16,384 ranks


@contextmanager
def _patched(obj, name: str, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _wrap_build(change):
    """A mutant of `build_mimo_groups` (where the rank runner calls it too): `change(rank,
    groups)` spoils what it returns."""
    build = mimo_builder.build_mimo_groups

    def mutant(*args, **kwargs):
        groups = build(*args, **kwargs)
        change(dist.get_rank(), groups)
        return groups
    return [(mimo_builder, "build_mimo_groups", mutant), (rank_runner, "build_mimo_groups", mutant)]


def no_timeout():
    """Groups created without the run's timeout (torch's 30 min default)."""
    init = group_factory.GroupFactory.__init__

    def mutant(self, backend=None, timeout=None):
        init(self, backend, None)
    return [(group_factory.GroupFactory, "__init__", mutant)]


def dropped_kind():
    """dp+ep left out of the builder's list of kinds."""
    kinds = tuple(k for k in mimo_builder.GRID_GROUPS if k != "dp+ep")
    return [(mimo_builder, "GRID_GROUPS", kinds),
            (mimo_builder, "_KIND_DIMS", [mimo_builder.dims_of(k) for k in kinds])]


def own_pp_only():
    """The public populate function makes embedding groups from the caller's PP group only
    (SPEC section 4's first trap)."""
    gather = mimo_builder._gather_pipeline_ends

    def mutant(pp_group):
        ends = gather(pp_group)
        return ends[dist.get_rank():dist.get_rank() + 1]
    return [(mimo_builder, "_gather_pipeline_ends", mutant)]


def never_joins():
    """Rank 3's tp slot holds its dp group: tp's other member waits for it forever."""
    def change(rank, groups):
        if rank == 3:
            for mg in groups.modules.values():
                if mg.groups["tp"] is not None:
                    mg.groups["tp"] = mg.groups["dp"]
                    return
    return _wrap_build(change)


def swapped_dims():
    """The grid's dims named cp, tp, ... for the shape [TP, CP, ...] (tp and cp swapped)."""
    return [(mimo_builder, "GRID_DIMS", ("cp", "tp", "ep", "pp", "dp"))]


def _build_grid_with(change):
    build = mimo_builder._build_grid

    def mutant(mod, factory):
        return build(change(mod), factory)
    return [(mimo_builder, "_build_grid", mutant)]


def wrong_offset():
    """Every grid starts at rank 0 (the module's rank_offset ignored)."""
    return _build_grid_with(lambda mod: dataclasses.replace(mod, rank_offset=0))


def offset_off_by_one():
    """A module past rank 0 starts one rank early."""
    return _build_grid_with(lambda mod: dataclasses.replace(
        mod, rank_offset=max(mod.rank_offset - 1, 0)))


def _swapped_kinds(a: str, b: str):
    dims_of = mimo_builder.dims_of
    swap = {a: b, b: a}

    def mutant(kind):
        return dims_of(swap.get(kind, kind))
    return [(mimo_builder, "dims_of", mutant)]


def swapped_dp_dpcp():
    """The dp slot holds the dp+cp group and the other way round."""
    return _swapped_kinds("dp", "dp+cp")


def swapped_tppp_tpeppp():
    """The tp+pp slot holds the tp+ep+pp group and the other way round."""
    return _swapped_kinds("tp+pp", "tp+ep+pp")


def crossed_embedding_pairs():
    """embd pairs the first stage of one pipeline with the last stage of the next."""
    groups = mimo_builder._embedding_groups

    def mutant(pp_group, pairs, factory):
        pairs = np.unique(np.asarray(pairs).reshape(-1, 2), axis=0)
        pairs = pairs[pairs[:, 0] >= 0]
        if len(pairs) > 1:
            pairs[:, 1] = np.roll(pairs[:, 1], 1)
        return groups(pp_group, pairs, factory)
    return [(mimo_builder, "_embedding_groups", mutant)]


def wrong_stage_flags():
    """is_last_stage set from the first stage."""
    module_groups = mimo_builder.ModuleGroups

    @dataclasses.dataclass
    class Mutant(module_groups):
        def __post_init__(self):
            self.is_last_stage = self.is_first_stage
    return [(mimo_builder, "ModuleGroups", Mutant)]


def dropped_rank():
    """The last member list of every enumeration loses its last rank."""
    new_subgroups = group_factory.GroupFactory.new_subgroups

    def mutant(self, enumeration):
        rows = [list(r) for r in enumeration]
        if rows and len(rows[-1]) > 1:
            rows[-1] = rows[-1][:-1]
        return new_subgroups(self, rows)
    return [(group_factory.GroupFactory, "new_subgroups", mutant)]


def non_member_given_group():
    """A rank outside a module keeps the groups of the module it is in (an aliased dict)."""
    def change(rank, groups):
        mine = next(mg for mg in groups.modules.values() if mg.groups["tp"] is not None)
        for mg in groups.modules.values():
            if mg.groups["tp"] is None:
                mg.groups = mine.groups
    return _wrap_build(change)


def colocated_share_grid():
    """Modules on the same ranks share the first one's grid."""
    build_grid = mimo_builder._build_grid

    def mutant(mod, factory):
        key = (mod.rank_offset, mod.total_ranks, id(factory))
        cache = mutant.__dict__.setdefault("grids", {})
        if key not in cache:
            cache[key] = build_grid(mod, factory)
        return cache[key]
    return [(mimo_builder, "_build_grid", mutant)]


MUTANTS = [no_timeout, dropped_kind, own_pp_only, never_joins, swapped_dims, wrong_offset,
           offset_off_by_one, swapped_dp_dpcp, swapped_tppp_tpeppp, crossed_embedding_pairs,
           wrong_stage_flags, dropped_rank, non_member_given_group, colocated_share_grid]


def presets() -> dict[str, tuple]:
    """name -> (layout, world size) for every runnable preset of conf/mimo/."""
    out = {}
    for path in sorted((conf_dir() / "mimo").glob("*.yaml")):
        if path.stem not in SKIPPED_PRESETS:
            node = OmegaConf.load(path)
            out[path.stem] = (layout_from(node).validate(node.world_size), node.world_size)
    return out


def run_preset(cfg, world: int, run_dir: Path, timeout_s: float) -> Report:
    """One run as `mimo-launch` runs it; its report."""
    return launch_local(RankJob(cfg, world, str(run_dir), timeout_s=timeout_s))


def caught(report: Report) -> str | None:
    """How a mutant's run caught it, as the table shows it: '1' (mismatches listed) or
    "3: phase 'P', rank(s) R" (a failure named by phase and rank); None when it did not: it
    passed, or failed in a way that names no phase and rank or with another code."""
    code = report.exit_code
    if code == 1:
        return "1"
    if code == 3 and report.failed_phase and report.failed_ranks:
        return (f"3: phase '{report.failed_phase}', rank(s) "
                f"{', '.join(map(str, report.failed_ranks))}")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout-s", type=float, default=5.0,
                        help="the runs' timeout_s (a hanging mutant costs a few of these)")
    parser.add_argument("--only", nargs="*", help="mutant names to run (default: all)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    runs = presets()
    chosen = [m for m in MUTANTS if not args.only or m.__name__ in args.only]
    with tempfile.TemporaryDirectory(prefix="mimo-mutants-") as tmp:
        tmp = Path(tmp)
        clean = {name: run_preset(cfg, w, tmp / f"clean-{name}", args.timeout_s).exit_code
                 for name, (cfg, w) in runs.items()}
        rows, score = [], 0
        for mutant in chosen:
            reports = {}
            for name, (cfg, w) in runs.items():
                with ExitStack() as stack:
                    for obj, attr, value in mutant():
                        stack.enter_context(_patched(obj, attr, value))
                    reports[name] = run_preset(cfg, w, tmp / f"{mutant.__name__}-{name}",
                                               args.timeout_s)
            by = [f"{n} ({caught(r)})" for n, r in reports.items() if caught(r)]
            missed = [f"{n}: not caught (exit {r.exit_code})" for n, r in reports.items()
                      if r.exit_code != 0 and not caught(r)]
            score += bool(by)
            rows.append((mutant.__name__, (mutant.__doc__ or "").split("\n")[0],
                         "; ".join([", ".join(by) or "NOT CAUGHT"] + missed)))
            print(f"  {mutant.__name__}: {rows[-1][2]}", file=sys.stderr, flush=True)
    print("| mutant | bug | caught by preset (exit code) |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    failing_clean = {n: c for n, c in clean.items() if c != 0}
    print(f"\nscore: {score} of {len(chosen)} mutants caught, on {len(runs)} presets "
          f"({', '.join(runs)}); unmutated runs: "
          f"{'all exit 0' if not failing_clean else failing_clean}; "
          f"{time.perf_counter() - t0:.0f} s")
    return 0 if score == len(chosen) and not failing_clean else 1


if __name__ == "__main__":
    sys.exit(main())
