"""Where the default run's wall time goes: runs `mimo-launch device=cpu` in this process with
timers around its phases and prints them as JSON on the last line of stdout.

Phases are found by name (hydra_app.LaunchCallback.on_run_start: validation and the run
directory's claim, after Hydra composed the config; local_launcher.fork_ranks,
artifacts.finish_run); a phase the code no longer has is reported as missing, not guessed.
"""

from __future__ import annotations

import os
import time

T0 = time.perf_counter()

import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

warnings.filterwarnings("ignore")
import torch  # noqa: E402,F401

T_TORCH = time.perf_counter()
from mimo_launch import cli  # noqa: E402,F401
from mimo_launch.app import hydra_app, launch  # noqa: E402,F401
from mimo_launch.launchers import local_launcher  # noqa: E402

T_IMPORTS = time.perf_counter()
PHASES = {"validate + claim (LaunchCallback.on_run_start)": (hydra_app.LaunchCallback,
                                                            "on_run_start"),
          "ranks (fork to last exit)": (local_launcher, "fork_ranks")}


def _wrap(times: dict, label: str, module, name: str) -> None:
    fn = getattr(module, name, None)
    if fn is None:
        times[label] = None
        return

    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            times[label] = times.get(label) or 0.0
            times[label] += time.perf_counter() - t

    setattr(module, name, timed)


def main() -> None:
    times = {"python + torch import": T_TORCH - T0, "mimo_launch + hydra import":
             T_IMPORTS - T_TORCH}
    for label, (module, name) in PHASES.items():
        _wrap(times, label, module, name)
    try:
        from mimo_launch.reports import artifacts
        _wrap(times, "report + rank map (finish_run)", artifacts, "finish_run")
    except ImportError:
        times["report + rank map (finish_run)"] = None
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(["device=cpu", f"hydra.run.dir={tmp}/run"])
        total = time.perf_counter() - t
        report = Path(tmp, "run", "report.json")
        rank0 = json.loads(report.read_text()).get("timings", {}) if report.exists() else {}
    named = [v for k, v in times.items() if v is not None and k not in
             ("python + torch import", "mimo_launch + hydra import")]
    times["rest of cli.main"] = total - sum(named)
    ranks = "ranks (fork to last exit)"
    inside = {f"- rank 0 {k}": float(v) for k, v in rank0.items() if isinstance(v, (int, float))}
    times = {k: v for k, v in times.items() if k != ranks} | {ranks: times.get(ranks)} | inside
    times["exit code"] = code
    print(json.dumps(times))


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # as the mimo-launch console script does (cli.entry): no interpreter teardown
