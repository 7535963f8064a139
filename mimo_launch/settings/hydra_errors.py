"""Hydra's error messages as `mimo-launch` prints them: one line, and at most one short hint.

Hydra's messages span several lines (the options of a config group, the search path, the
grammar's expectations, numbered ways to fix an override). `describe` keeps what names the
problem on one line and, where Hydra numbers ways to fix it ("Ambiguous value": quote it, make
it a list, or sweep over it), keeps those as one hint line. A key that does not exist gets the
closest valid key (`config_keys.suggest_for_path`).
"""

from __future__ import annotations

import re

_NUMBERED = re.compile(r"^\d+\.\s+")
# "Error merging override cluster.env=[a]", the reason in the exception's cause
_MERGING = re.compile(r"^Error merging override (\S+)")
_KINDS = {dict: "a mapping", list: "a list"}
_NOT_IN_STRUCT = re.compile(r"^Could not override '([^']+)'\.")
# `~key` where the key is null or absent (Hydra says "does not exist" for both)
_NOT_DELETABLE = re.compile(r"^Could not delete from config\. '([^']+)' does not exist\.")


def describe(exc: BaseException, overrides: list[str]) -> tuple[str, str | None]:
    """(one line naming the problem, one hint line or None) for a Hydra or OmegaConf error
    raised while composing `overrides`."""
    message = str(exc)
    line = one_line(message, overrides)
    merging = _MERGING.match(message)
    if merging and exc.__cause__ is not None:
        line = f"{merging.group(1)}: {_merge_reason(exc.__cause__)}"
    bad = unparsable(overrides)
    if bad is not None and bad not in line:
        line = f"cannot parse override '{bad}': {line}"
    return line, hint(message)


def _merge_reason(cause: BaseException) -> str:
    """Why OmegaConf could not merge an override's value: a list given for a mapping (or the
    reverse) in words, else its own first line."""
    first = str(cause).splitlines()[0]
    key, target = getattr(cause, "full_key", None), getattr(cause, "object_type", None)
    if first.startswith("Cannot merge") and key and target in _KINDS:
        return f"{key} is {_KINDS[target]}, not {_KINDS[list if target is dict else dict]}"
    return first


def _inner_typo(path: str, overrides: list[str] | None) -> tuple[str, str] | None:
    """(the key up to its first unknown part, the closest valid key) where that part is not
    the last one (a leaf typo keeps `suggest_for_path`'s message), else None."""
    from ..settings.config_keys import suggest_path

    found = suggest_path(path, _module_names(overrides or []))
    if found is None or found[0] == path:
        return None
    return found


def _module_names(overrides: list[str]) -> list[str] | None:
    """The module names of the layout the command line picks (`mimo=NAME`, else the default
    preset), read from its preset file; None if that cannot be known."""
    from omegaconf import OmegaConf

    from ..settings.conf_files import conf_dir

    names = [o.split("=", 1)[1] for o in overrides if o.startswith("mimo=")]
    preset = names[-1] if names else None
    try:
        if preset is None:
            defaults = OmegaConf.load(conf_dir() / "config.yaml").defaults
            preset = next(d["mimo"] for d in defaults if hasattr(d, "get") and "mimo" in d)
        modules = OmegaConf.load(conf_dir() / "mimo" / f"{preset}.yaml").modules
        extra = [o.split("=", 1)[0].lstrip("+").split(".")[2] for o in overrides
                 if o.lstrip("+").startswith("mimo.modules.") and o.startswith("+")]
        return [str(k) for k in modules] + extra
    except Exception:  # noqa: BLE001 - a site's own preset: take any module name
        return None


def hint(message: str) -> str | None:
    """Hydra's numbered fixes ("1. To use it as a list, ...") joined into one line, or None."""
    fixes = [_NUMBERED.sub("", ln.strip()) for ln in message.splitlines()
             if _NUMBERED.match(ln.strip())]
    if not fixes:
        return None
    return "; ".join(f[0].lower() + f[1:] for f in fixes)


def one_line(message: str, overrides: list[str] | None = None) -> str:
    """The first line of a Hydra message, with what the next lines add that matters: the
    available options of a config group, the closest key for a key that does not exist (or
    Hydra's advice to append it), the grammar's complaint about an override."""
    from ..settings.config_keys import suggest_for_path

    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    first = lines[0] if lines else "invalid overrides"
    missing = _NOT_IN_STRUCT.match(first) or _NOT_DELETABLE.match(first)
    if "Available options in" in message:
        idx = next(i for i, ln in enumerate(lines) if ln.startswith("Available options in"))
        options = []
        for ln in lines[idx + 1:]:
            if ln.startswith("Config search path"):
                break
            options.append(ln)
        first += f"; available: {', '.join(options)}"
    elif missing and _inner_typo(missing.group(1), overrides) is not None:
        path = missing.group(1)
        bad, better = _inner_typo(path, overrides)
        first = f"unknown key '{bad}' in '{path}' (did you mean '{better}'?)"
    elif missing and suggest_for_path(missing.group(1)):
        path = missing.group(1)
        first = (f"unknown key '{path}' (did you mean "
                 f"'{path.rsplit('.', 1)[0] + '.' if '.' in path else ''}"
                 f"{suggest_for_path(path)}'?)")
    elif missing and missing.re is _NOT_DELETABLE:
        path = missing.group(1)
        first = (f"~{path}: nothing to remove ('{path}' has no value: it is null, or not a key "
                 f"of the config); leave ~{path} out")
    elif len(lines) > 1 and lines[1].startswith("To append"):
        first += f" (unknown key; {lines[1][0].lower()}{lines[1][1:]})"
    elif len(lines) > 1 and first.startswith("Error parsing override"):
        first += f": {lines[1]}"
    return first


def unparsable(overrides: list[str]) -> str | None:
    """The first override Hydra's grammar rejects, if any."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except Exception:  # noqa: BLE001 - any parse failure names this override
            return override
    return None


__all__ = ["describe", "hint", "one_line", "unparsable"]
