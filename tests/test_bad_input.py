"""Bad input through `mimo-launch` as a subprocess: exit 2, one line naming the field and the
numbers, no traceback, and nothing started (no run directory is even created)."""

import pytest

from conftest import run_cli

VISION_DP3 = ("mimo.modules.vision.dp=3", "mimo.modules.language.rank_offset=6",
              "mimo.modules.language.pp=1")

CASES = {
    "missing language": (["~mimo.modules.language"], ["no module named 'language'", "'vision'"]),
    "unknown module key (+)": (["+mimo.modules.language.foo=1"],
                               ["unknown key 'mimo.modules.language.foo' (known: tp, "]),
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
    "timeout below a second": (["timeout_s=1e-4"],
                               ["timeout_s must be a number of seconds in [1, 604800]",
                                "got 0.0001"]),
    "entry point timeout below a second": (["entrypoint_timeout_s=0.5"],
                                           ["entrypoint_timeout_s must be", "got 0.5"]),
    "fault not a mapping": (["fault=3"], ["fault must be a mapping", "3"]),
    "plan not a mapping": (["plan=5"], ["plan must be a mapping", "5"]),
    "special tokens not a mapping": (["mimo.special_token_ids=5"],
                                     ["mimo.special_token_ids", "5"]),
    "fault rank outside the world": (["fault.kill_rank=99", "fault.phase=grids"],
                                     ["fault.kill_rank=99", "[0, 8)"]),
    "fault without a phase": (["fault.hang_rank=1"], ["fault.phase", "got null"]),
    "fault with an unknown phase": (["fault.hang_rank=1", "fault.phase=train"],
                                    ["fault.phase", "'train'"]),
    "verify against an unknown preset": (["verify_against=nope"], ["verify_against", "'nope'"]),
    "verify against a preset of another world size": (
        ["verify_against=vlm_16"],
        ["verify_against=vlm_16: the preset is a 16-rank layout and does not fit this run's "
         "world of 8 ranks ("]),
    "unknown mode": (["mode=bogus"], ["mode", "'bogus'"]),
    "switch not a boolean": (["dry_run=maybe"], ["dry_run must be true or false", "'maybe'"]),
    "switch a number other than 0/1": (["wait=2"], ["wait must be true or false", "got 2"]),
    "picture not a boolean": (["mode=plan", "plan.picture=sometimes"],
                              ["plan.picture must be true or false", "'sometimes'"]),
    "preset given as a path": (["verify_against=../config"],
                               ["no mimo preset '../config'", "vlm_8"]),
    "max ranks negative": (["cluster.max_ranks=-1"], ["cluster.max_ranks must be", ">= 1",
                                                      "got -1"]),
    "nproc not an integer": (["cluster.nproc=four"], ["cluster.nproc must be an integer",
                                                      "'four'"]),
    "unknown launcher": (["cluster.launcher=pbs"], ["cluster.launcher must be one of", "'pbs'"]),
    "time limit not a number": (["cluster=local_slurm", "cluster.time_min=abc"],
                                ["cluster.time_min must be an integer >= 1", "'abc'"]),
    "time limit null": (["cluster=local_slurm", "cluster.time_min=null"],
                        ["cluster.time_min must be an integer >= 1", "None"]),
    "time limit zero": (["cluster=local_slurm", "cluster.time_min=0"],
                        ["cluster.time_min must be an integer >= 1", "got 0"]),
    "time limit negative": (["cluster=local_slurm", "cluster.time_min=-5"],
                            ["cluster.time_min", "got -5"]),
    "time limit fractional": (["cluster=local_slurm", "cluster.time_min=1.9"],
                              ["cluster.time_min must be an integer", "1.9"]),
    "pending timeout negative": (["cluster=local_slurm", "cluster.pending_timeout_min=-1"],
                                 ["cluster.pending_timeout_min must be a number > 0", "-1"]),
    "setup not a list": (["cluster=local_slurm", "cluster.setup=5"],
                         ["cluster.setup must be a list of strings", "got 5"]),
    "env not a mapping": (["cluster=local_slurm", "cluster.env=5"],
                          ["cluster.env must be a mapping", "got 5"]),
    "srun args not a list": (["cluster=local_slurm", "cluster.srun_args=5"],
                             ["cluster.srun_args must be a list of strings", "got 5"]),
    "exclusive not a boolean": (["cluster=local_slurm", "cluster.exclusive=often"],
                                ["cluster.exclusive must be true or false", "'often'"]),
    "gpus negative": (["cluster=local_slurm", "cluster.gpus_per_node=-1"],
                      ["cluster.gpus_per_node must be an integer >= 0", "got -1"]),
    "a list for a mapping": (["cluster=local_slurm", "cluster.env=[a]"],
                             ["cluster.env=[a]: cluster.env is a mapping, not a list"]),
    "a mapping for a list": (["cluster=local_slurm", "cluster.container_mounts={a:b}"],
                             ["cluster.container_mounts is a list, not a mapping"]),
    "a list in a list of strings": (["cluster=local_slurm", "cluster.setup=[a,[b]]"],
                                    ["cluster.setup must be a list of strings, got"]),
    "a null env value": (["cluster=local_slurm", "+cluster.env.Z=null"],
                         ["cluster.env.Z must be a string or a number, got null"]),
    "an env variable that is not set": (
        ["cluster=local_slurm", "cluster.job_name=${oc.env:MIMO_TEST_NOT_SET}"],
        ["cluster.job_name=${oc.env:MIMO_TEST_NOT_SET}: cannot resolve its interpolation",
         "'MIMO_TEST_NOT_SET' not found"]),
    "a cluster value left ???": (["cluster=local_slurm", "cluster.account=???"],
                                 ["cluster.account must be given a value (it is ??? in the"]),
    "a value left ???": (["timeout_s=???"], ["timeout_s must be given a value"]),
    "an optional value left ???": (["entrypoint=???"], ["entrypoint must be given a value"]),
    "a list item left ???": (["health.sizes=[1MiB,???]"],
                             ["health.sizes[1] must be given a value"]),
    "submitit folder outside the run directory": (
        ["cluster=local_slurm", "cluster.submitit_dir=../up"],
        ["cluster.submitit_dir must be a folder inside the run directory", "'../up'"]),
    "an env variable that is not set, outside the cluster": (
        ["timeout_s=${oc.env:MIMO_TEST_NOT_SET}"],
        ["timeout_s=${oc.env:MIMO_TEST_NOT_SET}: cannot resolve its interpolation",
         "'MIMO_TEST_NOT_SET' not found"]),
    "a plan on nodes a run refuses": (
        ["mode=plan", "cluster=local_slurm", "cluster.gpus_per_node=2"],
        ["cluster.tasks_per_node=4 but cluster.gpus_per_node=2"]),
    "unknown cluster key": (["cluster=local_slurm", "+cluster.nodez=2"],
                            ["unknown key 'cluster.nodez' for cluster.launcher=slurm (did you "
                             "mean 'cluster.nodes'?)"]),
    "relative image file": (["cluster=local_slurm", "cluster.container_image=img.sqsh",
                             "cluster.container_mounts=[/tmp:/tmp]"],
                            ["cluster.container_image=img.sqsh is a relative path",
                             "registry image name"]),
    "run dir outside the container's mounts": (
        ["cluster=local_slurm", "cluster.container_image=/images/mimo.sqsh",
         "cluster.container_mounts=[/shared/runs:/shared/runs]"],
        ["is not under any cluster.container_mounts entry", "same path"]),
    "run dir mounted elsewhere in the container": (
        ["cluster=local_slurm", "cluster.container_image=/images/mimo.sqsh",
         "cluster.container_mounts=[/tmp:/data]"],
        ["is not under any cluster.container_mounts entry"]),
    "unknown option": (["--frobnicate"], ["--frobnicate"]),
    "typo in a middle part (health)": (["heath.iters=3", "check=health"],
                                       ["unknown key 'heath' in 'heath.iters'",
                                        "did you mean 'health.iters'?"]),
    "typo in a middle part (cluster)": (["clustr.partition=x"],
                                        ["unknown key 'clustr'", "'cluster.partition'?"]),
    "typo in mimo.modules": (["mimo.modulse.language.tp=2"],
                             ["unknown key 'mimo.modulse'", "'mimo.modules.language.tp'?"]),
    "typo in a module's name": (["mimo.modules.langauge.tp=2"],
                                ["unknown key 'mimo.modules.langauge'",
                                 "'mimo.modules.language.tp'?"]),
    "absurd health warmup": (["check=health", "health.warmup=100000000"],
                             ["health.warmup must be an integer in [0, 1000]", "100000000"]),
    "mimo removed": (["mode=plan", "~mimo"], ["no key 'mimo'", "~mimo", "required"]),
    "cluster removed": (["mode=plan", "~cluster"], ["no key 'cluster'", "required"]),
    "timeout removed": (["mode=plan", "~timeout_s"], ["no key 'timeout_s'", "required"]),
    "a null key removed": (["mode=plan", "~plan.rank"],
                           ["~plan.rank: nothing to remove", "leave ~plan.rank out"]),
    "a misspelt key removed": (["mode=plan", "~plan.rnk"],
                               ["unknown key 'plan.rnk' (did you mean 'plan.rank'?)"]),
    # a setting that would silently do nothing
    "plan setting in a run": (["plan.rank=3"], ["plan.rank=3 acts in mode=plan only"]),
    "verify_against in a plan": (["mode=plan", "verify_against=colocated_8"],
                                 ["verify_against=colocated_8 acts in a run only",
                                  "mode=plan starts no rank"]),
    "fault in a plan": (["mode=plan", "fault.kill_rank=3", "fault.phase=grids"],
                        ["fault.kill_rank=3 acts in a run only"]),
    "dry run of a plan, on Slurm too": (["mode=plan", "cluster=local_slurm", "dry_run=true"],
                                        ["dry_run=true acts in a run only",
                                         "mode=plan starts no rank"]),
    "no wait in a plan": (["mode=plan", "cluster=local_slurm", "wait=false"],
                          ["wait=false acts in a run only"]),
    "dry run of a local run": (["dry_run=true"], ["dry_run=true acts on Slurm only: "
                                                  "cluster=local runs the ranks itself"]),
    "no wait on a local run": (["wait=false"], ["wait=false acts on Slurm only"]),
    "entry point timeout without one": (["entrypoint_timeout_s=5"],
                                        ["entrypoint_timeout_s=5 acts on an entrypoint only"]),
    "plan setting outside a plan, before its range": (["plan.rank=[0,9]"],
                                                      ["plan.rank=[0, 9] acts in mode=plan "
                                                       "only"]),
    "fault in a plan, before its own checks": (["mode=plan", "fault.kill_rank=3"],
                                               ["fault.kill_rank=3 acts in a run only"]),
    "search path to no directory": (["hydra.searchpath=[file:///nonexistent/site]"],
                                    ["hydra.searchpath entry file:///nonexistent/site: no "
                                     "directory /nonexistent/site"]),
    "search path to no package": (["hydra.searchpath=[pkg://no_such_site_pkg]"],
                                  ["hydra.searchpath entry pkg://no_such_site_pkg: no package "
                                   "'no_such_site_pkg'"]),
    "search path a config group needs": (["hydra.searchpath=[file:///nonexistent/site]",
                                          "cluster=mysite"],
                                         ["hydra.searchpath entry file:///nonexistent/site: "
                                          "no directory"]),
    "search path to a package Hydra cannot read": (
        ["hydra.searchpath=[pkg://mimo_launch]"],  # a namespace package, installed editable
        ["hydra.searchpath entry pkg://mimo_launch: Hydra cannot read package 'mimo_launch'"]),
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


def test_a_value_out_of_range_is_shown_as_given():
    from mimo_launch.settings.app_config import UsageError, load_settings

    with pytest.raises(UsageError, match=r"cluster.pending_timeout_min must be a number > 0 or "
                                         r"null, got 0$"):  # not 0.0, the float it became
        load_settings(["cluster=local_slurm", "cluster.pending_timeout_min=0"])


def test_boolean_words_are_read_strictly():
    """`dry_run=no` (a string to Hydra) once counted as true: every boolean word means what it
    says, in any case."""
    from mimo_launch.settings.app_config import load_settings

    for word, value in [("no", False), ("No", False), ("0", False), ("false", False),
                        ("yes", True), ("TRUE", True), ("1", True)]:
        settings = load_settings([f"dry_run={word}", f"wait={word}",
                                  "cluster=local_slurm", f"cluster.exclusive={word}"])
        assert (settings.config.dry_run, settings.config.wait) == (value, value), word
        assert settings.cluster.exclusive is value, word


@pytest.mark.timeout(120)
def test_a_setting_that_does_nothing_is_refused_from_a_site_yaml_too(tmp_path):
    """The same rules whether a value comes from the command line or a config file."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "myrun.yaml").write_text("defaults: [config, _self_]\nplan: {rank: 3}\n")
    (site / "myplan.yaml").write_text("defaults: [config, _self_]\nmode: plan\n"
                                      "fault: {kill_rank: 3, phase: grids}\n")
    for name, line in [("myrun", "plan.rank=3 acts in mode=plan only: add mode=plan"),
                       ("myplan", "fault.kill_rank=3 acts in a run only")]:
        proc = run_cli("--config-dir", str(site), "--config-name", name,
                       f"hydra.run.dir={tmp_path / name}", cwd=tmp_path, timeout=60)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.startswith(f"mimo-launch: error: {line}"), proc.stderr
        assert len(proc.stderr.splitlines()) == 1 and not (tmp_path / name).exists()
