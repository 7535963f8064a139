"""Claiming a run directory: atomically, so that two runs never write into the same one."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

# Created with O_EXCL in the directory a run claims; its presence means "a run lives here".
RUN_MARKER = ".mimo-launch-run"
# Created with O_EXCL in the directory a sweep (`-m`) claims (`app.sweep.Sweep.claim`).
SWEEP_MARKER = ".mimo-launch-sweep"
# What runs made before the marker existed leave behind.
_EARLIER_RUN = ("report.json", "logs")


def absolute_path(path: str | Path) -> Path:
    """`path` with `~` expanded, made absolute against the working directory and normalised
    (`a/../b` is `b`; symbolic links are kept as given)."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def holds_a_run(path: Path) -> bool:
    """Whether `path` holds a run's output: its marker, or what runs made before it left."""
    return any((path / name).exists() for name in (RUN_MARKER, *_EARLIER_RUN))


class RunDirError(ValueError):
    """A path that cannot be a run directory; the message is one line meant for the user."""


def claim_run_dir(path: str | Path) -> Path:
    """Claim the first of `path`, `path-2`, `path-3`... that holds no earlier run, and return it
    (absolute).

    A directory holding no run's output (a new one, an empty one, or `.`) is used as it is;
    one that holds an earlier run (its marker, a report.json or logs/) or a sweep is passed
    over. The claim
    is the creation of `RUN_MARKER` with O_EXCL, so of two runs started together with the same
    path each gets its own directory. Raises RunDirError for a path that cannot be written: a
    file, a path under a file, no permission, a read-only file system, the file-system root.
    """
    base = absolute_path(path)
    if base == Path(base.anchor):
        raise RunDirError(f"run directory {base} is the file-system root: give hydra.run.dir a "
                          f"directory of its own")
    n = 1
    candidate = base
    while True:
        if _claim(candidate):
            return candidate
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")


def _claim(candidate: Path) -> bool:
    """True if this process now owns `candidate`; False if an earlier run holds it."""
    try:
        candidate.mkdir(parents=True, exist_ok=True)
        if holds_a_run(candidate) or (candidate / SWEEP_MARKER).exists():
            return False
        fd = os.open(candidate / RUN_MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        if candidate.is_dir():  # the marker: another run holds it
            return False
        raise RunDirError(f"run directory {candidate} cannot be used: a file of that name "
                          f"exists") from None
    except OSError as exc:
        raise RunDirError(f"run directory {candidate} cannot be used: "
                          f"{unusable_reason(exc)}") from None
    with os.fdopen(fd, "w") as marker:
        marker.write(f"pid {os.getpid()}\n")
    return True


def unusable_reason(exc: OSError) -> str:
    """Why a directory could not be made or written, in words: a part of the path is a file,
    a read-only file system, else the system's own message."""
    return {errno.ENOTDIR: "a part of the path is a file",
            errno.EROFS: "the file system is read-only"}.get(exc.errno, exc.strerror)


def release_run_dir(path: Path, made: Path) -> None:
    """Undo a claim that came to nothing (a job sbatch refused): remove `made` (a folder the
    run created inside `path`), the marker, then `path` itself where that left it empty (a
    folder given as it was keeps what it held). Best effort."""
    shutil.rmtree(made, ignore_errors=True)
    try:
        (path / RUN_MARKER).unlink(missing_ok=True)
        path.rmdir()
    except OSError:
        pass
