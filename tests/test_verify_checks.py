"""Each of the verifier's checks fires on its own: for each, a real gloo world whose groups are
wrong in a way only that check catches (the others pass on the same record), with the exact
mismatches written out by hand. Plus: the kinds checked are the oracle's own, a kind the builder
does not build fails, and a run builds its embedding groups through the public function."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from conftest import MIMO_LAUNCH, layout
from mimo_launch import mimo_builder
from mimo_launch.checks.verify import verify
from mimo_launch.layout.group_kinds import GRID_GROUPS
from mimo_launch.layout.layout_oracle import SPEC_GRID_KINDS, SPEC_KINDS, expected_layout
from mimo_launch.mimo_builder import build_mimo_groups

SINGLE_8 = layout(language=dict(tp=2, pp=2))  # rank = tp + 2*pp + 4*dp
VLM_8 = layout(vision=dict(tp=2, dp=2), language=dict(pp=2, dp=2, rank_offset=4))
TIMEOUT_S = 4.0


def _verified(cfg, world_size, rewire=None, build_timeout_s=TIMEOUT_S):
    """A rank body: build with `build_timeout_s`, let `rewire(rank, groups)` change the groups,
    verify with timeout TIMEOUT_S; every rank returns passed, rank 0 also the mismatches."""
    def body(rank):
        timeout = None if build_timeout_s is None else timedelta(seconds=build_timeout_s)
        groups = build_mimo_groups(cfg, timeout=timeout)
        if rewire is not None:
            rewire(rank, groups)
        verdict, _ = verify(groups, expected_layout(cfg, world_size), "local", TIMEOUT_S)
        return {"passed": verdict.passed, "skipped": verdict.skipped,
                "mismatches": [[m.rank, m.module, m.group, m.check, m.expected, m.actual]
                               for m in verdict.mismatches]}
    return body


def test_the_checked_kinds_are_specs_own_list():
    """SPEC section 3, copied by hand: the oracle checks these, whatever the builder builds."""
    assert SPEC_GRID_KINDS == ("tp", "cp", "ep", "pp", "dp", "dp+cp", "tp+pp", "tp+ep+pp",
                               "dp+ep", "tp+cp+ep+pp+dp")
    assert SPEC_KINDS == SPEC_GRID_KINDS + ("pos_embd", "embd")
    assert GRID_GROUPS == SPEC_GRID_KINDS  # and the builder builds all of them


@pytest.mark.timeout(120)
def test_right_groups_pass_every_check(tmp_path, run_world):
    res = run_world(tmp_path, 8, _verified(VLM_8, 8))
    assert res[0] == {"passed": True, "skipped": {}, "mismatches": []}
    assert all(r["passed"] for r in res)


@pytest.mark.timeout(120)
def test_members_check_names_a_group_one_member_never_joins(tmp_path, run_world):
    """Rank 3's tp slot holds its dp group [3, 7] (tp should be [2, 3]): the all-reduce in
    [2, 3] would wait for rank 3 forever; the members check names it before any collective.
    Rank 2 still holds the right [2, 3], which its other member does not report: consistency."""
    def rewire(rank, groups):
        if rank == 3:
            mg = groups.modules["language"]
            mg.groups["tp"] = mg.groups["dp"]

    res = run_world(tmp_path, 8, _verified(SINGLE_8, 8, rewire))
    assert not any(r["passed"] for r in res)
    assert res[0]["mismatches"] == [[2, "language", "tp", "consistency", [2, 3], [2, 3]],
                                    [3, "language", "tp", "members", [2, 3], [3, 7]]]


@pytest.mark.timeout(120)
def test_a_kind_the_builder_did_not_build_fails_on_every_rank(tmp_path, run_world):
    """No rank has a dp+ep group (a kind dropped from the builder's list)."""
    def rewire(rank, groups):
        for mg in groups.modules.values():
            del mg.groups["dp+ep"]

    res = run_world(tmp_path, 8, _verified(VLM_8, 8, rewire))
    # vision TP2 DP2 on 0-3: dp+ep = dp = [0,2] [1,3]; language PP2 DP2 on 4-7: [4,6] [5,7]
    want = {0: [0, 2], 1: [1, 3], 2: [0, 2], 3: [1, 3], 4: [4, 6], 5: [5, 7], 6: [4, 6],
            7: [5, 7]}
    assert res[0]["mismatches"] == [
        [r, "vision" if r < 4 else "language", "dp+ep", "members", want[r], None]
        for r in range(8)]


@pytest.mark.timeout(120)
def test_consistency_check_alone_catches_cross_wired_members(tmp_path, run_world):
    """Ranks 2 and 3 each hold a real group of members [2, 3], but two different ones (their
    all-reduces would never meet): members, timeouts and stages are right."""
    def rewire(rank, groups):
        first = dist.new_group([2, 3], timeout=timedelta(seconds=TIMEOUT_S))
        second = dist.new_group([2, 3], timeout=timedelta(seconds=TIMEOUT_S))
        if rank in (2, 3):
            groups.modules["language"].groups["tp"] = first if rank == 2 else second

    res = run_world(tmp_path, 8, _verified(SINGLE_8, 8, rewire))
    assert not any(r["passed"] for r in res)
    assert res[0]["mismatches"] == [[2, "language", "tp", "consistency", [2, 3], [2, 3]],
                                    [3, "language", "tp", "consistency", [2, 3], [2, 3]]]


@pytest.mark.timeout(120)
def test_timeout_check_alone_catches_groups_without_the_runs_timeout(tmp_path, run_world):
    """Built with torch's default timeout (30 min), verified for a 4 s run: every group of
    every rank is named, nothing else. vision TP2 DP2 (PP1) on 0-3: 10 grid groups + pos_embd
    + embd each = 48; language PP2 DP2 on 4-7 (pp groups [4, 5] [6, 7]): 10 grid groups each,
    pos_embd on the first stages 4 and 6, embd on all four = 46."""
    res = run_world(tmp_path, 8, _verified(VLM_8, 8, build_timeout_s=None))
    found = res[0]["mismatches"]
    assert len(found) == 94
    assert {m[3] for m in found} == {"timeout"}
    assert found[0] == [0, "vision", "tp", "timeout", 4.0, 1800.0]
    assert sum(1 for m in found if m[2] == "pos_embd") == 6  # 4 vision + ranks 4, 6


@pytest.mark.timeout(120)
def test_stage_check_alone_catches_a_wrong_stage_flag(tmp_path, run_world):
    """Rank 7 (language PP2 DP2 on 4-7: pp groups [4, 5] [6, 7]; rank 7 is a last stage) says
    it is first."""
    def rewire(rank, groups):
        if rank == 7:
            groups.modules["language"].is_first_stage = True

    res = run_world(tmp_path, 8, _verified(VLM_8, 8, rewire))
    assert res[0]["mismatches"] == [[7, "language", "stage", "stage",
                                     {"first": False, "last": True},
                                     {"first": True, "last": True}]]


@pytest.mark.timeout(120)
def test_collective_check_alone_catches_a_group_that_does_not_communicate(tmp_path, run_world):
    """Rank 3 has an all-reduce of 100 in flight in its (right) tp group [2, 3] before the
    verification: rank 2's all-reduce meets it (2 + 100) and rank 3's own never completes.
    Members, names, timeouts and stages are all right."""
    def rewire(rank, groups):
        if rank == 3:
            stray = torch.tensor([100], dtype=torch.int64)
            groups.stray = (dist.all_reduce(stray, group=groups.modules["language"].groups["tp"],
                                            async_op=True), stray)

    res = run_world(tmp_path, 8, _verified(SINGLE_8, 8, rewire))
    assert not any(r["passed"] for r in res)
    assert res[0]["mismatches"] == [
        [2, "language", "tp", "collective", 5, 102],
        [3, "language", "tp", "collective", 5, "did not complete within 4 s"]]


@pytest.mark.timeout(120)
def test_a_run_builds_its_embedding_groups_through_the_public_function(tmp_path, run_world,
                                                                      monkeypatch):
    """`build_mimo_groups` calls `populate_embedding_and_position_groups` once per module."""
    calls = []
    public = mimo_builder.populate_embedding_and_position_groups

    def counted(pp_group, **kwargs):
        calls.append(1)
        return public(pp_group, **kwargs)

    monkeypatch.setattr(mimo_builder, "populate_embedding_and_position_groups", counted)

    def body(rank):
        build_mimo_groups(VLM_8).destroy()
        return len(calls)

    assert run_world(tmp_path, 8, body) == [2] * 8


@pytest.mark.timeout(120)
def test_group_timeouts_are_read_and_the_check_is_skipped_with_a_reason_where_they_cannot_be(
        tmp_path, run_world):
    """compat.group_timeout reads the timeout a group was made with; with the fast paths off
    (its guard) it reads nothing, and the verification passes saying the check was skipped."""
    from mimo_launch import compat

    def body(rank):
        import os
        seven = dist.new_group([0, 1], timeout=timedelta(seconds=7))
        read = compat.group_timeout(seven, torch.device("cpu"))
        os.environ[compat.NO_FAST_PATHS] = "1"
        unread = compat.group_timeout(seven, torch.device("cpu"))
        return {"read": read, "unread": unread, **_verified(SINGLE_8, 8)(rank)}

    res = run_world(tmp_path, 8, body)
    assert res[0]["read"] == 7.0 and res[0]["unread"] is None
    assert res[0]["passed"] and res[0]["mismatches"] == []
    assert res[0]["skipped"] == {"timeout": "group timeouts: not checked, torch does not expose "
                                             "a group's timeout here (compat.group_timeout)"}


def test_every_mutant_of_the_mutation_check_patches_a_member_that_exists():
    """`make mutants` runs on demand only: this notices, in every test run, a builder rename
    that leaves one of its patches pointing at nothing."""
    from benchmarks.mutants import MUTANTS

    assert len(MUTANTS) == 14
    for mutant in MUTANTS:
        for obj, attr, value in mutant():
            assert hasattr(obj, attr), (mutant.__name__, attr)
            assert getattr(obj, attr) is not value, mutant.__name__


def test_a_mutant_is_caught_only_by_a_mismatch_or_a_failure_named_by_phase_and_rank():
    """`make mutants` counts exit 1 and a named exit 3; an exit 3 that names no rank, an
    interrupt or a health code is 'not caught', as a pass is."""
    from benchmarks.mutants import caught
    from mimo_launch.reports.report import Report, record_failure

    def report(**fields):
        return Report(passed=False, world_size=8, backend="gloo", **fields)

    assert caught(report(mismatches=[{"rank": 0}])) == "1"
    named = record_failure(report(), "rank(s) 3 did not finish", "verify", [3])
    assert caught(named) == "3: phase 'verify', rank(s) 3"
    assert caught(record_failure(report(), "the job failed", "verify", [])) is None
    assert caught(record_failure(report(), "rank 2 died", None, [2])) is None
    assert caught(report(interrupted=True, interrupted_by="SIGTERM")) is None  # exit 143
    health = Report(passed=True, world_size=8, backend="gloo",
                    health={"problem": True, "fail": True})
    assert health.exit_code == 4 and caught(health) is None
    assert caught(Report(passed=True, world_size=8, backend="gloo")) is None


def test_member_list_fingerprints_equal_the_oracles_row_fingerprints():
    """The two sides encode a group the same way: lists in any order, ragged, absent."""
    from mimo_launch.checks import fingerprint as fpr

    lists = [[3, 1], None, [7], [9, 8, 10, 11], []]
    got = fpr.of_member_lists(lists)
    assert got[0].tolist() == fpr.of_rows([[1, 3]])[0].tolist()
    assert got[0, :3].tolist() == [2, 1, 3]
    assert got[1].tolist() == [0, 0, 0, 0] and got[4].tolist() == [0, 0, 0, 0]
    assert got[2].tolist() == fpr.of_rows([[7]])[0].tolist()
    assert got[3].tolist() == fpr.of_rows([[8, 9, 10, 11]])[0].tolist()
    assert got[3, :3].tolist() == [4, 8, 11] and got[0, 3] != got[3, 3]


def test_the_reports_check_columns_name_every_check_the_verifier_makes():
    """report.md's table and the console count mismatches by `report.CHECKS`: a check missing
    there (as 'timeout' was) drops its mismatches from the per-module columns."""
    from mimo_launch.reports.report import CHECKS, Report, module_checks

    assert CHECKS == ("members", "consistency", "timeout", "collective", "stage")
    report = Report(passed=False, world_size=1, backend="gloo", modules={"language": {}},
                    mismatches=[{"rank": 0, "module": "language", "kind": "tp",
                                 "check": "timeout", "expected": 5, "actual": 1800}])
    assert module_checks(report) == {"language": {"members": 0, "consistency": 0, "timeout": 1,
                                                  "collective": 0, "stage": 0}}


def test_a_run_whose_timeout_check_was_skipped_says_so_everywhere(tmp_path):
    """Without the fast paths the group timeouts cannot be read: the run still passes, but the
    console, report.json and report.md say the timeout check was not done, not 'passed'."""
    out = tmp_path / "run"
    env = dict(os.environ, MIMO_LAUNCH_NO_FAST_PATHS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([str(MIMO_LAUNCH), f"hydra.run.dir={out}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    why = ("group timeouts: not checked, torch does not expose a group's timeout here "
           "(compat.group_timeout)")
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is True and report["skipped_checks"] == {"timeout": why}
    assert f"timeout not checked: {why}" in proc.stdout
    table = (out / "report.md").read_text()
    assert "| vision | [0, 4) | 2 | 1 | 1 | 1 | 2 | " in table
    rows = [ln for ln in table.splitlines() if ln.startswith(("| vision ", "| language "))]
    assert [ln.split(" | ")[-3:] for ln in rows] == [["not checked", "passed", "passed |"]] * 2
