"""Submit the ranks to Slurm with submitit, follow the job, write and print the run's report.

The submitting process (a login node; it needs no GPU) checks the allocation and the paths
before anything is submitted (`slurm_submit`, exit 2), submits one job of nodes x
tasks_per_node tasks running `slurm_task.run_task`, records it in `<run dir>/job.json`, follows
it (`slurm_watch`: its state and pending reason on each change) and writes report.json once:
the report rank 0 handed over, completed with Slurm's facts where it is a failure
(`slurm_report`). Exit codes: 0 pass, 1 mismatch, 2 bad input (sbatch refused the job) or a
pending reason that can never clear, 3 failure (or Slurm did not answer sbatch), 5 still
pending after `cluster.pending_timeout_min` (cancelled), 130/143/129 Ctrl-C/SIGTERM/SIGHUP (the
job is cancelled, running, pending or just submitted; a second signal does not cut the cancel
or the report short).

`mimo-launch collect <run dir>` does the following and reporting for a job submitted with
`wait=false`, or by a launcher that was stopped: it follows the job if it is still queued or
running, then writes and prints the report, with the same exit codes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from ..app.interrupts import describe, exit_code, held, one_run
from ..compat import sbatch_script
from ..errors import EXIT_NEVER_STARTED, refuse, usage_error
from ..launchers.slurm_report import JobFiles, conclude
from ..launchers.slurm_submit import allocation, make_executor, sbatch_failure, submit
from ..launchers.slurm_watch import follow
from ..rank.rank_job import rank_job
from ..reports.report import REPORT_NAME, Report, format_summary, read_report, report_line
from ..settings.app_config import LaunchSettings, UsageError
from ..settings.run_dir import absolute_path, release_run_dir

JOB_RECORD = "job.json"  # in the run directory: what `mimo-launch collect` needs


def run_slurm(settings: LaunchSettings) -> int:
    """The Slurm launcher's run (`interface.Launcher`): submit, follow and report
    (`launch_slurm`), then report.md and the rank map; the exit code."""
    from ..reports.artifacts import files_after_verdict

    with one_run():  # from the job's end on, signals are held: the verdict stands
        code, report = launch_slurm(settings)
        with held(lasting=True) as came:
            if report is not None:
                files_after_verdict(settings, report, came)
    return code


def launch_slurm(settings: LaunchSettings) -> tuple[int, Report | None]:
    """Submit, follow and report (see the module docstring); return the exit code and the
    run's report (None where no job was followed to its end: refused, dry_run, wait=false)."""
    try:
        alloc = allocation(settings)
        executor = make_executor(settings, alloc)
    except UsageError as exc:
        return refuse(exc), None
    job = rank_job(settings, device=alloc.device)
    if settings.config.get("dry_run"):
        print(sbatch_script(executor), end="")
        return 0, None
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    from ..slurm_task import run_task

    # the job's record but its id, made before anything is submitted: a job is never left
    # running for want of its record
    record = {"submitit_folder": str(executor.folder),
              "overrides": [str(o) for o in settings.config.hydra.overrides.task],
              "world_size": job.world_size, "device": job.device,
              # as composed (a site's --config-dir or --config-name included), for `collect`
              "config": OmegaConf.to_container(settings.config, resolve=False,
                                               enum_to_str=True)}
    json.dumps(record)  # raises here, before sbatch, should it not serialise

    with held() as came:  # a job submitted is recorded, and cancelled if a signal came
        try:
            submitted = submit(executor, run_task, job)
        except (FailedJobError, FailedSubmissionError, subprocess.SubprocessError,
                OSError) as exc:
            if came:  # a signal to the process group stopped sbatch too
                print(f"mimo-launch: interrupted ({describe(came[0])}) while submitting",
                      file=sys.stderr)
                return exit_code(came[0]), None
            line, code, maybe_queued = sbatch_failure(exc)
            usage_error(line)
            if not maybe_queued:  # nothing was submitted: leave no trace
                release_run_dir(settings.run_dir, Path(executor.folder))
            return code, None
        job_id = str(submitted.job_id)
        (settings.run_dir / JOB_RECORD).write_text(
            json.dumps({"job_id": job_id, **record}, indent=2) + "\n")
        backend = "NCCL on GPUs" if alloc.device == "cuda" else "gloo on CPU"
        print(f"mimo-launch: submitted job {job_id}: {alloc.nodes} node(s) x "
              f"{alloc.tasks_per_node} task(s), {backend}; output in {settings.run_dir}",
              flush=True)
    if not settings.config.get("wait", True) and not came:
        print(f"report: run `mimo-launch collect {settings.run_dir}` to follow job {job_id} "
              f"and write {settings.run_dir / REPORT_NAME}")
        return 0, None
    return follow_and_report(job, job_id, JobFiles(settings.run_dir, Path(executor.folder),
                                                   job_id), settings, came[0] if came else None)


def follow_and_report(job, job_id: str, files: JobFiles, settings: LaunchSettings,
                      interrupted: int | None = None) -> tuple[int, Report]:
    """Follow the job to its end, write and print the report; return the exit code and it.
    `interrupted`: a signal that came while the job was submitted (it is cancelled at once).
    Once the job has left the nodes, signals are held until the report is printed."""
    record_path = files.run_dir / JOB_RECORD
    record = json.loads(record_path.read_text())
    report = read_report(files.run_dir) if record.get("concluded") else None
    if report is None:  # not concluded yet: follow the job (at once if it has ended)
        followed = follow(job_id, files.run_dir, settings.cluster.pending_timeout_min,
                          interrupted)
    with held(lasting=True):  # the job has ended: its report is written and printed whole
        if report is None:
            report = conclude(job, job_id, files, followed)
            record_path.write_text(json.dumps(record | {"concluded": True}, indent=2) + "\n")
            if followed.never_started:
                code = usage_error(followed.never_started)
                return code if followed.refused else EXIT_NEVER_STARTED, report
        print(format_summary(report))
        print(report_line(files.run_dir))
    return report.exit_code, report


def collect(run_dir: str) -> int:
    """`mimo-launch collect <run dir>`: follow or conclude the job submitted into `run_dir`,
    write and print its report, and return the run's exit code (2 with one line when the
    directory holds no submitted job)."""
    from ..reports.artifacts import files_after_verdict
    from ..settings.app_config import settings_from_config

    path = absolute_path(run_dir)
    try:
        record = json.loads((path / JOB_RECORD).read_text())
        # the config the job was submitted with, not one composed anew: the same site
        # configs (--config-dir, --config-name) and values, whatever the working directory
        settings = settings_from_config(OmegaConf.create(record["config"]), path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = ("no job.json there (was the job submitted by mimo-launch cluster=...?)"
                  if isinstance(exc, OSError)
                  else f"job.json has no {exc} (written by another mimo-launch version?)"
                  if isinstance(exc, KeyError) else str(exc).splitlines()[0])
        return usage_error(f"cannot collect {path}: {reason}")
    job = rank_job(settings, device=record["device"])
    job_id = str(record["job_id"])
    print(f"mimo-launch: collecting job {job_id}; output in {path}", flush=True)
    with one_run():  # from the job's end on, signals are held: the verdict stands
        code, report = follow_and_report(job, job_id, JobFiles(
            path, Path(record["submitit_folder"]), job_id), settings)
        with held(lasting=True) as came:
            files_after_verdict(settings, report, came)
    return code
