"""`mimo-launch -m hydra/launcher=submitit_slurm ...`: Hydra's submitit launcher plugin
(`hydra-submitit-launcher`) runs each point of a sweep as one Slurm job, every task one rank.

Submitting side: `LaunchCallback.on_multirun_start` calls `check_plugin(config)`, which refuses
another launcher plugin and a cluster config that is not Slurm's, then `point_to`, which puts
`PointsLauncher`, a subclass of the plugin's launcher, in its place (it lives in
`hydra_plugins/mimo_launch_submitit`: Hydra takes launchers from that package only). Its
`launch` (`launch_points`), for each point in turn:
- composes the point and validates it like a single run (`hydra_job.prepare`: the allocation
  fits the layout, Slurm-safe paths, the point's directory claimed); bad input (also
  `hydra.launcher.*` values that disagree with the layout or the cluster config, e.g. a task
  count other than the world size) is that point's exit 2, one line, and nothing is submitted;
- submits it through the plugin's own `launch` as one job of nodes x tasks_per_node tasks:
  nodes, tasks_per_node, gpus_per_node, timeout_min, partition, account, qos, cpus_per_task,
  mem_gb, setup and srun flags come from the layout and the cluster config
  (`launcher_params`), the job's submitit folder is `<point dir>/submitit`;
- takes rank 0's exit code from the job's JobReturn, or from rank 0's report.json where a task
  left no result (a rank was killed); prints the verdict, writes report.md and the rank map,
  and records the point in the sweep, whose summary `hydra_app.run` prints and writes;
- on Ctrl-C, SIGTERM or SIGHUP while a job runs, cancels it (scancel) and stops the sweep.

Task side: `hydra_app.task`, run by the plugin in every Slurm task (SUBMITIT_EXECUTOR=slurm in
a multirun), calls `run_point`: the per-rank code of our own Slurm launcher
(`slurm_task.run_task`, `task_entry.finish_task`), rank = the task's SLURM_PROCID.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, open_dict, read_write

from ..errors import EXIT_FAILURE, BadInput, message_of
from ..settings.app_config import UsageError, settings_from_config

PLUGIN_TARGET = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
OUR_TARGET = "hydra_plugins.mimo_launch_submitit.PointsLauncher"
# hydra.launcher.* keys set from the layout and cluster config: the cluster key that sets each.
MANAGED = {"nodes": "nodes", "tasks_per_node": "tasks_per_node",
           "gpus_per_node": "gpus_per_node", "timeout_min": "time_min",
           "partition": "partition", "account": "account", "qos": "qos",
           "cpus_per_task": "cpus_per_task", "mem_gb": "mem_gb"}


def in_plugin_task() -> bool:
    """This process is a Slurm task of a job the plugin submitted (our own Slurm launcher runs
    `slurm_task.run_task`, never Hydra's task function)."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_PROCID" in os.environ


def check_plugin(config: DictConfig) -> None:
    """A launcher plugin (`hydra/launcher=...`) is in use: UsageError unless it is the submitit
    plugin's Slurm launcher and the cluster is a Slurm one."""
    if config.hydra.launcher.get("_target_") != PLUGIN_TARGET:
        name = config.hydra.runtime.choices.get("hydra/launcher")
        raise UsageError(f"hydra/launcher={name} is not supported: use "
                         f"hydra/launcher=submitit_slurm (each point a Slurm job) or none (the "
                         f"points run one after another from here)")
    if config.cluster.get("launcher") != "slurm":
        raise UsageError(f"hydra/launcher=submitit_slurm runs each point as a Slurm job: give a "
                         f"Slurm cluster config (cluster=slurm, local_slurm or your own), not "
                         f"cluster={config.cluster.get('name')}")


def point_to(config: DictConfig, sweep_dir: Path) -> None:
    """Point `hydra.sweep.dir` at the claimed directory and the launcher at `PointsLauncher`,
    registered here: Hydra's plugin scan does not see it in an editable install."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.mimo_launch_submitit import PointsLauncher

    Plugins.instance().register(PointsLauncher)
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.sweep.dir = str(sweep_dir)
        config.hydra.launcher._target_ = OUR_TARGET


def launcher_params(settings, given: dict) -> dict:
    """The plugin's parameters for one point: `given` (hydra.launcher.*, resolved) with the
    allocation and the cluster's settings in place; UsageError where an explicit
    `hydra.launcher.<key>` disagrees with them (`given['_explicit']`)."""
    from ..launchers import slurm_submit as submit

    alloc = submit.allocation(settings)
    if settings.cluster.python:
        raise UsageError(f"cluster.python={settings.cluster.python}: with hydra/launcher="
                         f"submitit_slurm the tasks run this interpreter; leave it null")
    submit.check_paths(settings)
    cluster = settings.cluster
    ours = {key: getattr(cluster, ckey) for key, ckey in MANAGED.items()}
    ours.update(nodes=alloc.nodes, tasks_per_node=alloc.tasks_per_node,
                gpus_per_node=alloc.gpus_per_node or None, timeout_min=alloc.time_min)
    for key in given.get("_explicit", ()):
        if key in ours and given.get(key) != ours[key] and (given.get(key) or ours[key]):
            if key in ("nodes", "tasks_per_node"):
                nodes, tasks = given.get("nodes"), given.get("tasks_per_node")
                raise UsageError(
                    f"hydra.launcher.nodes={nodes} x hydra.launcher.tasks_per_node={tasks} = "
                    f"{nodes * tasks} tasks but the layout's world size is "
                    f"{settings.world_size}: leave them out (they come from the layout and "
                    f"cluster.*)")
            name = MANAGED[key]
            raise UsageError(f"hydra.launcher.{key}={given.get(key)} but cluster.{name}"
                             f"={getattr(cluster, name)}: set cluster.{name} instead")
    params = {k: v for k, v in given.items() if k != "_explicit"}
    params.update(ours, submitit_folder=str(submit.submitit_folder(settings)),
                  name=cluster.job_name,
                  setup=submit.setup_lines(cluster), srun_args=submit.srun_args(cluster),
                  **submit.warning_params(alloc.time_min, given.get("additional_parameters")))
    if cluster.exclusive:
        params["exclusive"] = True
    return params


def _explicit(config: DictConfig) -> list[str]:
    """The hydra.launcher.* keys given on the command line."""
    keys = []
    for override in config.hydra.overrides.hydra:
        key = str(override).split("=", 1)[0].lstrip("+~")
        if key.startswith("hydra.launcher."):
            keys.append(key.removeprefix("hydra.launcher."))
    return keys


def launch_points(launcher, job_overrides, initial_job_idx: int, plugin_launch) -> list:
    """`PointsLauncher.launch` (hydra_plugins.mimo_launch_submitit): each point validated, then
    submitted alone through `plugin_launch` (the plugin's own launch) with its own parameters
    and recorded in the sweep; returns JobReturns holding each point's exit code."""
    from hydra.core.utils import JobReturn, JobStatus

    given = dict(launcher.params, _explicit=_explicit(launcher.config))
    returns = []
    try:
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            code = _point(launcher, num, list(overrides), given, plugin_launch)
            returns.append(JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED,
                                     _return_value=code))
    finally:
        launcher.params = {k: v for k, v in given.items() if k != "_explicit"}
    return returns


def _point(launcher, num: int, overrides: list[str], given: dict, plugin_launch) -> int:
    from ..app.hydra_job import PROG, AppState, prepare
    from ..app.sweep import Point
    from ..errors import refuse

    start, error = time.monotonic(), None
    cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, overrides)
    with open_dict(cfg.hydra.job):
        cfg.hydra.job.num = num
    out = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
    point = Point(num, [str(o) for o in cfg.hydra.overrides.task], str(out))
    print(f"{PROG}: sweep point #{num}: {point.label}", flush=True)
    try:
        settings = settings_from_config(cfg, out)
        if settings.config.mode != "run" or settings.config.get("dry_run") or \
                not settings.config.get("wait", True):
            raise UsageError("hydra/launcher=submitit_slurm submits and follows each point: "
                             "mode=plan, dry_run=true and wait=false are for runs without it")
        launcher.params = launcher_params(settings, given)
        settings = prepare(settings)
        if settings.run_dir != out:
            raise UsageError(f"{out} holds an earlier run: give another hydra.sweep.dir")
    except BadInput as exc:
        error = message_of(exc)[0]
        code = refuse(exc)
    else:
        point.run_dir = str(settings.run_dir)
        code = _submit(launcher, overrides, num, settings, plugin_launch)
    AppState.sweep.record(point, code, time.monotonic() - start, error)
    return code


def _submit(launcher, overrides: list[str], num: int, settings, plugin_launch) -> int:
    """Run one point's job through the plugin; its exit code (rank 0's)."""
    from hydra.core.utils import JobStatus

    from ..reports.artifacts import artifacts_after
    from ..reports.report import format_summary, read_report, report_line

    print(f"mimo-launch: submitting {launcher.params['nodes']} node(s) x "
          f"{launcher.params['tasks_per_node']} task(s); output in {settings.run_dir}",
          flush=True)
    code = None
    try:
        ret = plugin_launch([overrides], num)[0]
        if ret.status == JobStatus.COMPLETED and isinstance(ret.return_value, int):
            code = ret.return_value
    except Exception as exc:  # noqa: BLE001 - a task left no result: read the report
        print(f"mimo-launch: the job of point #{num} ended without every task's result "
              f"({type(exc).__name__}); reading rank 0's report", file=sys.stderr)
    except KeyboardInterrupt:  # also SIGTERM/SIGHUP (interrupts.Interrupted): stop the job
        _cancel(Path(launcher.params["submitit_folder"]))
        raise
    report = read_report(settings.run_dir)
    if report is not None:
        print(format_summary(report))
        print(report_line(settings.run_dir), flush=True)
        artifacts_after(settings, [])
        code = report.exit_code if code is None else code
    return EXIT_FAILURE if code is None else code


def _cancel(folder: Path) -> None:
    """scancel the jobs submitit recorded in `folder` (`<job id>_submitted.pkl`)."""
    import subprocess

    from ..app.interrupts import held

    jobs = [p.name.split("_")[0] for p in folder.glob("*_submitted.pkl")]
    if jobs:
        with held():  # a second signal does not cut the cancel short
            print(f"mimo-launch: interrupted: cancelling job {', '.join(jobs)}", flush=True)
            subprocess.run(["scancel", *jobs], check=False, timeout=60)


def run_point(cfg: DictConfig) -> int:
    """In each Slurm task of a point's job: run this task's rank as our own Slurm launcher's
    tasks do; rank 0 returns the run's exit code, the others 0 (3 on a failure)."""
    from hydra.core.hydra_config import HydraConfig

    from ..app.hydra_job import with_hydra
    from ..launchers.slurm_submit import allocation
    from ..rank.rank_job import rank_job
    from ..rank.task_entry import finish_task
    from ..slurm_task import run_task, slurm_rank

    settings = settings_from_config(with_hydra(cfg), HydraConfig.get().runtime.output_dir)
    job = rank_job(settings, device=allocation(settings).device,
                   launcher_concludes=False)  # rank 0 concludes; the plugin reads its report
    return finish_task(slurm_rank().rank, settings, lambda: run_task(job))


__all__ = ["check_plugin", "in_plugin_task", "launch_points", "launcher_params", "point_to",
           "run_point"]
