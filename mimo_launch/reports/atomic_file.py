"""Files that readers see whole or not at all: write a temporary file beside the target,
fsync it, then rename it over the target (`os.replace`, atomic on POSIX file systems).

A write that fails (a full disk: OSError ENOSPC; an interrupt) removes its temporary file and
leaves the target as it was, so a run directory never holds a half-written report or picture.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once, at import (single-threaded then)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """Open a temporary binary file beside `path`; on leaving the block without an error it
    becomes `path` (mode 0666 less the umask, as `open()` would make it, not mkstemp's 0600).
    Raises what the writes raise (OSError, e.g. ENOSPC); the temporary file is removed then."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; return `path`."""
    with atomic_file(path) as f:
        f.write(text.encode())
    return Path(path)
