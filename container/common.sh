# Sourced by the container/*.sh scripts: names and settings they share.
# shellcheck shell=bash
# The variables are used by the scripts that source this file:
# shellcheck disable=SC2034

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Version of the package, from pyproject.toml ([project] version = "...").
MIMO_VERSION=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$REPO_ROOT/pyproject.toml" | head -n 1)
MIMO_VERSION=${MIMO_VERSION:-0.0.0}

# The image that container/build.sh makes and container/smoke.sh runs.
IMAGE=${IMAGE:-localhost/mimo-launch:$MIMO_VERSION}

# The local stand-in for the NGC base (container/build_standin_base.sh): the
# Python minor of nvcr.io/nvidia/pytorch:25.12-py3, and a torch from PyPI for it.
# The tag names both; the build checks that the image really has them.
STANDIN_PYTHON=${STANDIN_PYTHON:-3.12}
STANDIN_TORCH=${STANDIN_TORCH:-2.14.1}
STANDIN_IMAGE=${STANDIN_IMAGE:-localhost/mimo-launch/standin-pytorch:bookworm-py$STANDIN_PYTHON-torch$STANDIN_TORCH}

# The host's CA bundle, mounted into builds and runs so that pip works behind a
# TLS-intercepting egress proxy (harmless elsewhere).
HOST_CA_BUNDLE=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

# podman on this kind of host: crun fails with cgroups v1/hybrid, runc works;
# the default nofile/nproc limits are too low for 8 torch ranks.
PODMAN_RUNTIME=${PODMAN_RUNTIME:-runc}
PODMAN=(podman --runtime "$PODMAN_RUNTIME")
PODMAN_RUN_LIMITS=(--ulimit nofile=20000:20000 --ulimit nproc=32768:32768 --shm-size 2g)

need_tools() {
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || {
            echo "$(basename "$0"): '$t' not found: run container/install.sh" >&2
            exit 1
        }
    done
}
