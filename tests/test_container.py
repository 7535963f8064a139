"""The container image: lint, build with buildah, run with podman.

Runs the real chain of container/*.sh scripts, as CI does on a fresh machine:

  container/install.sh              Debian packages (buildah, podman, runc, debootstrap)
  container/lint.sh                 hadolint --failure-threshold warning Dockerfile
  container/build_standin_base.sh   local stand-in for the NGC base (cached)
  container/build.sh                the Dockerfile, FROM the stand-in
  container/smoke.sh                `mimo-launch` inside the image, report.json must pass

The stand-in runs what the real base runs: Python 3.12 (NGC 25.12's), so that
the image built on it resolves megatron-core 0.19.x as on NGC, and
test_image_runs_the_ngc_python_and_megatron_core checks it inside the image.

Needs root (apt-get, debootstrap, rootful podman) and the network to Debian's
mirrors and PyPI. About six minutes on a fresh machine (the stand-in base:
torch 2.14.1 with its CUDA libraries, about 2.5 GB from PyPI), 40 seconds when
the base image and the layers are cached.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaging.version import Version

from conftest import require_root

REPO = Path(__file__).resolve().parents[1]
CONTAINER = REPO / "container"
# A tag of its own, so the test never overwrites an image someone built by hand.
TEST_IMAGE = "localhost/mimo-launch:test"
# What nvcr.io/nvidia/pytorch:25.12-py3 (the Dockerfile's base) runs: Python
# 3.12, on which `pip install .` resolves megatron-core 0.19.x (0.17+ need 3.12).
NGC_PYTHON = (3, 12)
MIN_MEGATRON_CORE = (0, 19)

pytestmark = [pytest.mark.container, pytest.mark.timeout(1200)]


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root("the container tests (apt-get, debootstrap, rootful podman and buildah)")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def _run(
    args: list[str], *, timeout: float, env: dict[str, str] | None = None, cwd: Path = REPO
) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    proc = subprocess.run(
        args,
        cwd=cwd,
        env=env or _env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc, time.monotonic() - start


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    assert proc.returncode == 0, (
        f"{what} exited {proc.returncode}; last output:\n{proc.stdout[-6000:]}"
    )


def _hadolint() -> str:
    """The hadolint binary that container/lint.sh uses (installing it if needed)."""
    proc, _ = _run(
        ["bash", str(CONTAINER / "lint.sh")], timeout=300, env=_env(PYTHON=sys.executable)
    )
    _check(proc, "container/lint.sh")
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint not found after container/lint.sh"
    return found


@pytest.fixture(scope="module")
def image() -> dict[str, object]:
    """Install the tools, build the stand-in base and the image; time each step."""
    timings: dict[str, float] = {}

    proc, timings["install"] = _run(["bash", str(CONTAINER / "install.sh")], timeout=900)
    _check(proc, "container/install.sh")

    proc, timings["base"] = _run(["bash", str(CONTAINER / "build_standin_base.sh")], timeout=900)
    _check(proc, "container/build_standin_base.sh")
    base = proc.stdout.strip().splitlines()[-1]

    proc, timings["build"] = _run(
        ["bash", str(CONTAINER / "build.sh")],
        timeout=900,
        env=_env(IMAGE=TEST_IMAGE, BASE_IMAGE=base),
    )
    _check(proc, "container/build.sh")

    rounded = {k: round(v, 1) for k, v in timings.items()}
    print(f"\ncontainer chain timings (s): {json.dumps(rounded)}")
    return {"image": TEST_IMAGE, "base": base, "timings": timings}


def _podman_run(image: str, *cmd: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc, _ = _run(
        [
            "podman", "--runtime", "runc", "run", "--rm", "--network", "none",
            "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768",
            image, *cmd,
        ],
        timeout=timeout,
    )
    return proc


def test_hadolint_clean_at_warning_level() -> None:
    _hadolint()  # container/lint.sh fails on any finding at warning level or above


def test_hadolint_flags_a_missing_oci_label(tmp_path: Path) -> None:
    # The lint can fail: .hadolint.yaml makes a missing OCI label an error.
    bad = tmp_path / "Dockerfile"
    text = (REPO / "Dockerfile").read_text()
    assert "org.opencontainers.image.version=" in text
    bad.write_text(
        "\n".join(
            line for line in text.splitlines() if "org.opencontainers.image.version=" not in line
        )
        + "\n"
    )
    proc, _ = _run(
        [_hadolint(), "--config", str(REPO / ".hadolint.yaml"),
         "--failure-threshold", "warning", str(bad)],
        timeout=60,
    )
    assert proc.returncode != 0, proc.stdout
    assert "DL3049" in proc.stdout


def test_smoke_run_in_image_passes(image: dict[str, object], tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc, elapsed = _run(
        ["bash", str(CONTAINER / "smoke.sh")],
        timeout=600,
        env=_env(IMAGE=str(image["image"]), SMOKE_OUT=str(out)),
    )
    print(f"\nsmoke: {elapsed:.1f}s\n{proc.stdout[-3000:]}")
    _check(proc, "container/smoke.sh")
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is True
    assert report["world_size"] == 8
    assert report.get("mismatches", []) == []


def test_smoke_fails_on_a_failing_run(image: dict[str, object], tmp_path: Path) -> None:
    # smoke.sh must not pass a run that fails: an unknown preset exits 2 with no report.
    proc, _ = _run(
        ["bash", str(CONTAINER / "smoke.sh"), "mimo=no_such_preset"],
        timeout=300,
        env=_env(IMAGE=str(image["image"]), SMOKE_OUT=str(tmp_path / "out")),
    )
    assert proc.returncode != 0, proc.stdout
    assert "FAIL" in proc.stdout


def test_image_keeps_base_torch_and_has_metadata(image: dict[str, object]) -> None:
    probe = "import torch; print(torch.__version__)"
    base_torch = _podman_run(str(image["base"]), "python", "-c", probe)
    _check(base_torch, "torch in the base image")
    got_torch = _podman_run(str(image["image"]), "python", "-c", probe)
    _check(got_torch, "torch in the image")
    assert got_torch.stdout.strip().splitlines()[-1] == base_torch.stdout.strip().splitlines()[-1]

    where = _podman_run(str(image["image"]), "bash", "-c", "pwd; command -v mimo-launch")
    _check(where, "pwd / mimo-launch on PATH")
    assert where.stdout.split() == ["/workspace", "/usr/local/bin/mimo-launch"]

    # Nothing from the developer's tree that .dockerignore keeps out.
    leak = _podman_run(
        str(image["image"]), "bash", "-c",
        "find / -xdev \\( -name '.venv*' -o -name .git "
        "-o -name tests -path '*mimo_launch*' \\) -print",
    )
    _check(leak, "find")
    assert leak.stdout.strip() == "", leak.stdout

    proc, _ = _run(
        ["podman", "image", "inspect", "--format", "{{json .Labels}}", str(image["image"])],
        timeout=60,
    )
    _check(proc, "podman image inspect")
    labels = json.loads(proc.stdout)
    for key in ("title", "description", "version", "revision", "created", "source", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"label {key} missing: {labels}"
    version = next(
        line.split('"')[1]
        for line in (REPO / "pyproject.toml").read_text().splitlines()
        if line.startswith("version")
    )
    assert labels["org.opencontainers.image.version"] == version


def _versions(image: str) -> dict[str, str]:
    """Python, torch and megatron-core versions inside an image, as its python reports them."""
    probe = (
        "import json, sys; from importlib import metadata as m\n"
        "v = {'python': '%d.%d.%d' % sys.version_info[:3]}\n"
        "for d in ('torch', 'megatron-core'):\n"
        "    try: v[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(v))"
    )
    proc = _podman_run(image, "python", "-c", probe)
    _check(proc, f"versions in {image}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_image_runs_the_ngc_python_and_megatron_core(image: dict[str, object]) -> None:
    """The stack the container test runs is the one NGC 25.12 gives users."""
    base = _versions(str(image["base"]))
    got = _versions(str(image["image"]))
    print(f"\nbase: {base}\nimage: {got}")
    assert Version(base["python"]).release[:2] == NGC_PYTHON, base
    assert Version(got["python"]).release[:2] == NGC_PYTHON, got
    assert "megatron-core" in got, got
    assert Version(got["megatron-core"]).release[:2] >= MIN_MEGATRON_CORE, got
    assert got["torch"] == base["torch"], (base, got)


def test_code_change_reuses_the_dependency_layer(image: dict[str, object], tmp_path: Path) -> None:
    """A change under mimo_launch/ rebuilds the package layer, not the dependencies."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("Dockerfile", ".dockerignore", ".hadolint.yaml", "pyproject.toml"):
        shutil.copy2(REPO / name, tree / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("container", "conf", "mimo_launch", "hydra_plugins"):
        shutil.copytree(REPO / name, tree / name, ignore=ignore)
    with open(tree / "mimo_launch" / "__init__.py", "a") as f:
        f.write(f"\n# code-only change for the layer cache test {time.time_ns()}\n")

    cache_image = TEST_IMAGE + "-cache"
    proc, elapsed = _run(
        ["bash", str(tree / "container" / "build.sh")],
        timeout=900,
        env=_env(IMAGE=cache_image, BASE_IMAGE=str(image["base"])),
        cwd=tree,
    )
    try:
        _check(proc, "container/build.sh (code change)")
        steps = _steps(proc.stdout)
        deps = [s for s in steps if "pip install" in s[0] and "requirements.txt" in s[0]]
        code_copy = [s for s in steps if s[0].startswith("COPY mimo_launch/")]
        assert len(deps) == 1 and len(code_copy) == 1, [s[0][:80] for s in steps]
        assert deps[0][1], f"dependency layer was rebuilt:\n{deps[0][0][:300]}"
        assert not code_copy[0][1], "code layer came from the cache although the code changed"
        print(f"\ncode-only rebuild: {elapsed:.1f}s, dependency layer from cache")
    finally:
        _run(["podman", "rmi", "--force", cache_image], timeout=120)


def _steps(log: str) -> list[tuple[str, bool]]:
    """(instruction, came from the cache) for each STEP in a buildah bud log."""
    steps: list[tuple[str, bool]] = []
    current: str | None = None
    cached = False
    for line in log.splitlines():
        if line.startswith("STEP "):
            if current is not None:
                steps.append((current, cached))
            current = line.split(": ", 1)[1] if ": " in line else line
            cached = False
        elif line.startswith("--> Using cache"):
            cached = True
    if current is not None:
        steps.append((current, cached))
    return steps
