# Image that Slurm jobs (pyxis/enroot) run mimo-launch in.
#
# Based on the NGC PyTorch image, whose torch, CUDA and NCCL are kept as they
# are: the package and its other dependencies are installed into the image's
# system python under its pip constraint file (PIP_CONSTRAINT), plus a pin of
# the torch that is already there, and the build fails if torch changed.
#
#   container/build.sh                        # buildah/podman, see container/README.md
#   docker build -t mimo-launch:0.1.0 .       # where a Docker engine exists
#
# Where nvcr.io cannot be reached (CI), container/build_standin_base.sh makes a
# local stand-in and container/build.sh passes it as BASE_IMAGE.
#
# Layers are ordered so that a code change does not reinstall dependencies:
# pyproject.toml first, dependencies, then the code.

ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.12-py3
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1

# Only used while building: pip's CA bundle. The system bundle exists on NGC
# (Ubuntu) and Debian bases; a build behind a TLS-intercepting proxy mounts the
# host's bundle over it (container/build.sh does).
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt

WORKDIR /opt/mimo_launch

# 1. Dependencies: only pyproject.toml decides this layer.
# USE_BASE_CONSTRAINT=0 drops the base image's own constraint file for this
# install (should one of its pins ever conflict with a dependency); the pin of
# the base's torch applies either way. The pin is the version of the installed
# torch distribution, as pip sees it: torch.__version__ can differ (PyPI's CUDA
# builds report 2.x.y+cu130 for a distribution 2.x.y).
ARG USE_BASE_CONSTRAINT=1
COPY pyproject.toml container/pyproject_deps.py ./
RUN torch_version='from importlib.metadata import version; print(version("torch"))' \
 && torch_before="$(python -c "${torch_version}")" \
 && echo "torch==${torch_before}" > /tmp/torch-pin.txt \
 && constraints=/tmp/torch-pin.txt \
 && if [ "${USE_BASE_CONSTRAINT}" = 1 ] && [ -n "${PIP_CONSTRAINT:-}" ]; then \
        constraints="${PIP_CONSTRAINT} ${constraints}"; \
    fi \
 && echo "base image torch ${torch_before}; pip constraints: ${constraints}" \
 && python pyproject_deps.py pyproject.toml > /tmp/requirements.txt \
 && PIP_CONSTRAINT="${constraints}" python -m pip install --no-cache-dir -r /tmp/requirements.txt \
 && torch_after="$(python -c "${torch_version}")" \
 && if [ "${torch_after}" != "${torch_before}" ]; then \
        echo "torch changed from ${torch_before} to ${torch_after}" >&2; exit 1; \
    fi \
 && rm -f /tmp/torch-pin.txt /tmp/requirements.txt

# 2. The package: a code change rebuilds from here on only. (README.md, the
# long description, is left out: setuptools only warns, and the build does
# not depend on it.)
COPY conf/ ./conf/
COPY mimo_launch/ ./mimo_launch/
COPY hydra_plugins/ ./hydra_plugins/
RUN python -m pip install --no-cache-dir --no-deps --no-build-isolation . \
 && rm -rf build ./*.egg-info \
 && python -c 'import mimo_launch, megatron.core, torch; print("mimo_launch ok; torch", torch.__version__)' \
 && command -v mimo-launch

WORKDIR /workspace
CMD ["mimo-launch"]

# Metadata last: changing these values (revision, date) invalidates nothing.
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="mimo-launch" \
      org.opencontainers.image.description="Brings up and verifies the process groups of a multi-module (MIMO) Megatron-Core model; NGC PyTorch base, for Slurm with pyxis/enroot." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
