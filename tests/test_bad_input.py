"""Bad input through `mimo-launch` as a subprocess: exit 2, one line naming the field and the
numbers, no traceback, and nothing started (no run directory is even created)."""

import pytest

from conftest import run_cli

VISION_DP3 = ("mimo.modules.vision.dp=3", "mimo.modules.language.rank_offset=6",
              "mimo.modules.language.pp=1")

CASES = {
    "missing language": (["~mimo.modules.language"], ["no module named 'language'", "'vision'"]),
    "unknown module key (+)": (["+mimo.modules.language.foo=1"], ["'language'", "foo"]),
    "unknown module key": (["mimo.modules.language.foo=1"], ["mimo.modules.language.foo"]),
    "tp zero": (["mimo.modules.language.tp=0"], ["'language'", "(TP)", ">= 1, got 0"]),
    "pp negative": (["mimo.modules.language.pp=-1"], ["'language'", "(PP)", "got -1"]),
    "dp zero": (["mimo.modules.vision.dp=0"], ["'vision'", "(DP)", "got 0"]),
    "etp zero": (["mimo.modules.vision.etp=0"], ["'vision'", "(ETP)", "got 0"]),
    "cp not an integer": (["mimo.modules.language.cp=abc"], ["'language'", "(CP)", "'abc'"]),
    "tp not an integer": (["mimo.modules.language.tp=2.5"], ["'language'", "(TP)", "2.5"]),
    "offset negative": (["mimo.modules.language.rank_offset=-4"],
                        ["'language'", "rank_offset", "got -4"]),
    "tp not a power of two": (["mimo.modules.vision.tp=3"], ["'vision'", "power of two", "3"]),
    "overlapping ranges": (["mimo.modules.vision.dp=3"],
                           ["'vision' [0, 6)", "'language' [4, 8)", "[4, 6)"]),
    "partially colocated": (["mimo=colocated_8", "mimo.modules.vision.dp=2"],
                            ["'vision' [0, 4)", "'language' [0, 8)"]),
    "gap between modules": (["mimo.modules.language.rank_offset=5", "mimo.world_size=9"],
                            ["[4, 5)", "no module"]),
    "range past the world": (["mimo.modules.language.pp=4"],
                             ["'language' [4, 12)", "world size is 8"]),
    "gap at the end": (["mimo.world_size=12"], ["[8, 12)", "no module"]),
    "derived dp does not divide": (["mimo=single_8", "mimo.modules.language.pp=4",
                                    "mimo.world_size=12"],
                                   ["'language'", "12", "model-parallel size 8"]),
    "dp pair does not divide": (list(VISION_DP3), ["'vision' (DP 3)", "'language' (DP 2)"]),
    "dp missing when not colocated": (["mimo.modules.vision.dp=null"],
                                      ["'vision'", "must be given", "model-parallel size=2"]),
    "world size zero": (["mimo.world_size=0"], ["mimo.world_size", "got 0"]),
    "world too large to run locally": (["mimo=large_16k"], ["16384", "cluster.max_ranks=256"]),
    "allocation differs (local)": (["cluster.nproc=4"], ["cluster.nproc=4", "world size is 8"]),
    "GPUs where there are none": (["device=cuda"], ["device=cuda", "no GPU"]),
    "unknown device": (["device=tpu"], ["device", "'tpu'"]),
    "unknown preset": (["mimo=nope"], ["mimo/nope", "vlm_8"]),
    "unknown cluster": (["cluster=nope"], ["cluster/nope", "local"]),
    "malformed override": (["mimo.modules.language.tp=="], ["mimo.modules.language.tp=="]),
    "override without a value": (["tp"], ["'tp'"]),
    "unclosed list": (["mimo.modules.language=[1"], ["mimo.modules.language=[1"]),
    "timeout not positive": (["timeout_s=-1"], ["timeout_s", "-1"]),
    "timeout not finite": (["timeout_s=nan"], ["timeout_s", "nan"]),
    "entry point timeout not positive": (["entrypoint_timeout_s=0"],
                                         ["entrypoint_timeout_s must be", "got 0"]),
    "entry point fault without one": (["fault.hang_rank=1", "fault.phase=entrypoint"],
                                      ["fault.phase=entrypoint needs an entrypoint"]),
    "timeout infinite": (["timeout_s=inf"], ["timeout_s", "inf"]),
    "fault not a mapping": (["fault=3"], ["fault must be a mapping", "3"]),
    "plan not a mapping": (["plan=5"], ["plan must be a mapping", "5"]),
    "special tokens not a mapping": (["mimo.special_token_ids=5"],
                                     ["mimo.special_token_ids", "5"]),
    "fault rank outside the world": (["fault.kill_rank=99", "fault.phase=grids"],
                                     ["fault.kill_rank=99", "[0, 8)"]),
    "fault without a phase": (["fault.hang_rank=1"], ["fault.phase", "None"]),
    "fault with an unknown phase": (["fault.hang_rank=1", "fault.phase=train"],
                                    ["fault.phase", "'train'"]),
    "verify against an unknown preset": (["verify_against=nope"], ["verify_against", "'nope'"]),
    "unknown mode": (["mode=bogus"], ["mode", "'bogus'"]),
    "unknown option": (["--frobnicate"], ["--frobnicate"]),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", CASES)
def test_bad_input_exits_2_with_one_line(name, tmp_path):
    overrides, fragments = CASES[name]
    run_dir = tmp_path / "run"
    proc = run_cli(*overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=50)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mimo-launch: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not run_dir.exists()
