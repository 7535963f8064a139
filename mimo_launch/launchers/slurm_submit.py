"""What a Slurm job asks for, checked before anything is submitted, and the submitit executor.

Every check here raises `UsageError` (one line, exit 2) on the login node: the allocation must
hold the layout's world size, and every path the job's batch script and tasks use must survive
sbatch, srun and pyxis unchanged.
"""

from __future__ import annotations

import contextlib
import io
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import EXIT_FAILURE, EXIT_USAGE
from ..settings.app_config import DEVICES, LaunchSettings, UsageError
from ..settings.config_schema import SlurmCluster
from ..slurm_task import WARNING_SIGNAL

# Characters a run directory may hold on Slurm. sbatch and srun expand `%` in --output/--error
# (`%j` job id, `%x` job name, `%t` task...: sbatch(1) "filename pattern"), and submitit writes
# the paths unquoted into the batch script, so whitespace, quotes and shell characters break it.
_PATH_SAFE = frozenset("/._-+=@,:~")
# sbatch's words when Slurm itself, not the job, is the problem: slurmctld down (nothing was
# queued), or busy (a timed-out request may still have queued the job)
_SLURM_DOWN = ("unable to contact slurm controller", "temporarily unable to accept")
_SLURM_BUSY = ("socket timed out", "not responding")
# Image files pyxis reads from disk; a relative one is taken for a registry image name.
_IMAGE_FILES = (".sqsh", ".squashfs", ".sqfs")


@dataclass(frozen=True)
class Allocation:
    """What the job asks Slurm for, and the device its ranks use."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    device: str  # 'cuda' (nccl) or 'cpu' (gloo)
    time_min: int = 20  # the job's time limit, minutes


def allocation(settings: LaunchSettings) -> Allocation:
    """The allocation the cluster config asks for; UsageError unless it fits the layout.
    Types and ranges were checked with the config (`config_schema.SlurmCluster`)."""
    cluster, world = settings.cluster, settings.world_size
    gpus = cluster.gpus_per_node
    tasks = cluster.tasks_per_node
    if tasks is None:
        if not gpus:
            raise UsageError("cluster.tasks_per_node is not set and cluster.gpus_per_node=0: "
                             "give cluster.tasks_per_node")
        tasks = gpus
    if gpus and tasks != gpus:
        raise UsageError(f"cluster.tasks_per_node={tasks} but cluster.gpus_per_node={gpus}: "
                         f"each task drives one GPU (its local rank), so they must be equal")
    nodes = cluster.nodes
    if nodes is None:
        if world % tasks:
            raise UsageError(f"the layout's world size {world} is not a multiple of "
                             f"cluster.tasks_per_node={tasks}")
        nodes = world // tasks
    if nodes * tasks != world:
        raise UsageError(f"cluster.nodes={nodes} x cluster.tasks_per_node={tasks} = "
                         f"{nodes * tasks} tasks but the layout's world size is {world}")
    requested = str(settings.device)
    if requested not in DEVICES:
        raise UsageError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "cuda" and not gpus:
        raise UsageError("device=cuda but cluster.gpus_per_node=0")
    device = "cpu" if requested == "cpu" or not gpus else "cuda"
    return Allocation(nodes, tasks, gpus, device, cluster.time_min)


def setup_lines(cluster: SlurmCluster) -> list[str]:
    """The batch script's lines before srun: `cluster.setup`, then `export` of `cluster.env`."""
    return list(cluster.setup) + [
        f"export {key}={shlex.quote(str(value))}" for key, value in cluster.env.items()]


def srun_args(cluster: SlurmCluster) -> list[str]:
    """srun flags: kill the step when a task fails, the pyxis container, then `srun_args`."""
    args = ["--kill-on-bad-exit=1"]
    if cluster.container_image:
        args.append(f"--container-image={cluster.container_image}")
    if cluster.container_mounts:
        args.append(f"--container-mounts={','.join(cluster.container_mounts)}")
    if cluster.container_workdir:
        args.append(f"--container-workdir={cluster.container_workdir}")
    return args + list(cluster.srun_args)


def warning_signal_s(time_min: int) -> int:
    """Seconds before the time limit at which Slurm signals the tasks (`WARNING_SIGNAL`):
    submitit's 90 s, but at most a quarter of the limit."""
    return min(90, time_min * 60 // 4)


def warning_params(time_min: int, additional: dict | None = None) -> dict:
    """submitit parameters asking for `WARNING_SIGNAL` `warning_signal_s(time_min)` seconds
    before the limit, in place of its USR2 (`additional`: other sbatch flags to keep)."""
    delay = warning_signal_s(time_min)
    return {"signal_delay_s": delay,
            "additional_parameters": {**(additional or {}),
                                      "signal": f"{WARNING_SIGNAL.name[3:]}@{delay}"}}


def make_executor(settings: LaunchSettings, alloc: Allocation):
    """A submitit SlurmExecutor for the cluster config, its folder inside the run directory."""
    from submitit import SlurmExecutor

    cluster = settings.cluster
    folder = submitit_folder(settings)
    try:
        executor = SlurmExecutor(folder=folder, python=cluster.python)
    except RuntimeError:  # submitit looks for srun
        raise UsageError("srun not found: run mimo-launch cluster=... on a Slurm login node, "
                         "or use cluster=local") from None
    params = dict(job_name=cluster.job_name, nodes=alloc.nodes,
                  ntasks_per_node=alloc.tasks_per_node, time=alloc.time_min,
                  setup=setup_lines(cluster), srun_args=srun_args(cluster),
                  **warning_params(alloc.time_min))
    for key in ("partition", "account", "qos", "cpus_per_task"):
        if getattr(cluster, key) is not None:
            params[key] = getattr(cluster, key)
    if alloc.gpus_per_node:
        params["gpus_per_node"] = alloc.gpus_per_node
    if cluster.mem_gb is not None:  # sbatch --mem: megabytes without a unit; 0: all of it
        params["mem"] = f"{cluster.mem_gb}G" if cluster.mem_gb else "0"
    if cluster.exclusive:
        params["exclusive"] = True
    try:
        executor.update_parameters(**params)
    except ValueError as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    return executor


def submit(executor, function, *args):
    """`executor.submit(function, *args)`: the submitted job. Raises what submitit raises
    when sbatch fails (FailedJobError, FailedSubmissionError, subprocess errors, OSError);
    submitit's own print of sbatch's error is held back then (the error carries it, and the
    caller says it in one line: `sbatch_failure`). After a submission, whatever was written to
    stderr meanwhile goes out."""
    held = io.StringIO()
    with contextlib.redirect_stderr(held):  # on a failure: sbatch's stderr, also in the error
        submitted = executor.submit(function, *args)
    sys.stderr.write(held.getvalue())
    return submitted


def sbatch_failure(exc: BaseException) -> tuple[str, int, bool]:
    """(one line, exit code, whether the job may be queued all the same) for a submission that
    failed: EXIT_FAILURE where Slurm did not answer (its controller down: nothing was
    submitted; or busy: the job may have been queued), EXIT_USAGE where sbatch refused the
    job (a partition, account or limit the cluster does not have)."""
    message = " ".join(str(exc).split())[:400]
    said = message.lower()
    if any(words in said for words in _SLURM_DOWN):
        return (f"Slurm did not answer sbatch, nothing was submitted (is slurmctld up? "
                f"`scontrol ping`): {message}", EXIT_FAILURE, False)
    if any(words in said for words in _SLURM_BUSY):
        return (f"Slurm did not answer sbatch in time; the job may have been queued all the "
                f"same (`squeue --me`): {message}", EXIT_FAILURE, True)
    return f"sbatch refused the job: {message}", EXIT_USAGE, False


def submitit_folder(settings: LaunchSettings) -> Path:
    """Where submitit keeps the job's pickles and batch logs, inside the run directory."""
    return settings.run_dir / settings.cluster.submitit_dir


def check_paths(settings: LaunchSettings) -> None:
    """Refuse (UsageError) a run directory Slurm or pyxis would change, a relative image file,
    and a container run whose directory the container cannot see at the same path."""
    folder = submitit_folder(settings)
    bad = next((ch for ch in str(folder) if not (ch.isalnum() or ch in _PATH_SAFE)), None)
    if bad is not None:
        what = ("sbatch and srun expand '%' in log paths (%j, %x...)" if bad == "%"
                else "submitit writes it unquoted into the batch script")
        raise UsageError(f"hydra.run.dir {settings.run_dir} holds {bad!r}, which Slurm cannot "
                         f"take: {what}; use letters, digits and {''.join(sorted(_PATH_SAFE))}")
    cluster = settings.cluster
    image = cluster.container_image
    if not image:
        return
    if image.endswith(_IMAGE_FILES) and not image.startswith("/"):
        raise UsageError(f"cluster.container_image={image} is a relative path: pyxis takes it "
                         f"for a registry image name; give the absolute path of the file")
    for mount in cluster.container_mounts:
        src, _, rest = mount.partition(":")
        dst = rest.split(":")[0] or src
        if src == dst and _under(settings.run_dir, src):
            return
    raise UsageError(f"hydra.run.dir {settings.run_dir} is not under any "
                     f"cluster.container_mounts entry mounted at the same path (src:src): the "
                     f"tasks in the container could not write the report there")


def _under(path: Path, root: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(root))
