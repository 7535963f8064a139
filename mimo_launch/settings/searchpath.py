"""`hydra.searchpath`: every entry must be there, and readable by Hydra, before it composes.

Hydra skips a missing entry with a warning, so a site's cluster config then seems not to
exist ("Could not find 'cluster/mysite'"), and it cannot read a namespace package as a
config folder (a traceback). Entries are checked twice: from the command line before Hydra
composes anything (`check_command_line`), and from the composed config (`check_composed`:
entries set in a YAML, interpolations resolved). Each refusal is a UsageError, one line.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..errors import UsageError

KEY = "hydra.searchpath"


def check_entry(entry: str) -> None:
    """A directory for `file://DIR` or a plain path; for `pkg://NAME`, a package whose files
    Hydra can read as a folder (importlib.resources)."""
    if entry.startswith("pkg://"):
        name = entry.removeprefix("pkg://").strip("/").replace("/", ".")
        try:
            found = bool(name) and importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise UsageError(f"{KEY} entry {entry}: no package {name!r}")
        try:
            readable = importlib.resources.files(name).is_dir()
        except (OSError, TypeError, ValueError) as exc:
            raise UsageError(f"{KEY} entry {entry}: Hydra cannot read package {name!r} as a "
                             f"config folder ({type(exc).__name__}: {exc}); name a "
                             f"subpackage or a directory holding the configs") from None
        if not readable:
            raise UsageError(f"{KEY} entry {entry}: package {name!r} is not a folder")
        return
    path = Path(entry.removeprefix("file://")).expanduser()
    if not path.is_dir():
        raise UsageError(f"{KEY} entry {entry}: no directory {path.absolute()}")


def check_command_line(overrides: list[str]) -> None:
    """The entries the command line's `hydra.searchpath=[...]` overrides give (not those
    holding an interpolation, checked once composed)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for text in overrides:
        if KEY not in text:
            continue
        try:
            (override,) = parser.parse_overrides([text])
        except Exception:  # noqa: BLE001 - Hydra names a bad override itself
            continue
        if override.key_or_group != KEY or override.is_sweep_override():
            continue
        value = override.value()
        for entry in value if isinstance(value, list) else [value]:
            if isinstance(entry, str) and "${" not in entry:
                check_entry(entry)


def check_composed(cfg: DictConfig) -> None:
    """The entries of the composed config."""
    for entry in OmegaConf.select(cfg, KEY, default=None) or []:
        check_entry(str(entry))


__all__ = ["check_command_line", "check_composed", "check_entry"]
