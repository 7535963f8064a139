"""Where the Hydra configs live: inside the installed package, or `conf/` of a checkout."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError


def conf_dir() -> Path:
    """The Hydra config directory: inside the installed package, or `conf/` of a checkout."""
    pkg = Path(__file__).resolve().parent.parent  # mimo_launch/, beside settings/
    for candidate in (pkg / "conf", pkg.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise UsageError(f"no Hydra configs found beside {pkg}")
