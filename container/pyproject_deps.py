"""Print the requirements of a pyproject.toml, one per line.

Used by the Dockerfile to install the dependencies in a layer of their own,
before the package's code is copied in, so that a code change does not
reinstall them. Prints the build-system requirements (the package itself is
later installed with --no-build-isolation) followed by [project].dependencies.

Usage: python pyproject_deps.py [pyproject.toml] [--extra NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import tomllib


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    build = pyproject.get("build-system", {}).get("requires", [])
    project = pyproject.get("project", {})
    deps = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"pyproject_deps: no optional-dependencies group {extra!r}")
        deps.extend(optional[extra])
    seen: set[str] = set()
    out = []
    for req in [*build, *deps]:
        req = req.strip()
        if req and req not in seen:
            seen.add(req)
            out.append(req)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", nargs="?", default="pyproject.toml")
    parser.add_argument("--extra", action="append", default=[])
    args = parser.parse_args(argv)
    with open(args.pyproject, "rb") as f:
        data = tomllib.load(f)
    reqs = requirements(data, args.extra)
    if not reqs:
        print("pyproject_deps: no requirements found", file=sys.stderr)
        return 1
    print("\n".join(reqs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
