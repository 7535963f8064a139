#!/usr/bin/env bash
# Build a small local stand-in for the NGC PyTorch base image.
#
# The real base (nvcr.io/nvidia/pytorch:<YY.MM>-py3, see the Dockerfile) cannot
# be pulled where no container registry is reachable (this project's CI). This
# script makes an image that looks like it in the ways the Dockerfile relies on:
#
#   * a Debian bookworm rootfs (debootstrap, minbase) with python3 + pip and
#     `python` on PATH;
#   * torch preinstalled into the system python (CPU wheel, from a local file);
#   * a pip constraint file pinning torch and what came with it, exported as
#     PIP_CONSTRAINT=/etc/pip/constraint.txt, like NGC does;
#   * no EXTERNALLY-MANAGED marker, so pip installs into the system python;
#   * WORKDIR /workspace.
#
# It is imported with `podman import` under STANDIN_IMAGE (a name of its own,
# never an nvcr.io name, so a stand-in can never be mistaken for, or silently
# used instead of, the real NGC image), and the build is skipped when an image
# of that name already exists locally (FORCE=1 rebuilds).
#
# Environment (all optional):
#   STANDIN_IMAGE  image name       (default localhost/mimo-launch/standin-pytorch:bookworm-torch2.13.0-cpu)
#   TORCH_WHEEL    torch wheel file (default /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl)
#   DEBIAN_MIRROR  mirror URL       (default http://deb.debian.org/debian)
#   HOST_CA_BUNDLE CA bundle used for pip's downloads while building
#                  (default /etc/ssl/certs/ca-certificates.crt of the host)
#   FORCE=1        rebuild even if the image exists
#
# Prints the image name as its last line. Must run as root.
set -euo pipefail

STANDIN_IMAGE=${STANDIN_IMAGE:-localhost/mimo-launch/standin-pytorch:bookworm-torch2.13.0-cpu}
TORCH_WHEEL=${TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_CA_BUNDLE=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
SUITE=bookworm

log() { echo "build_standin_base: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (debootstrap, chroot, podman import)"
    exit 1
fi
for tool in debootstrap podman unshare chroot tar; do
    command -v "$tool" >/dev/null || { log "missing '$tool': run container/install.sh"; exit 1; }
done

if [[ ${FORCE:-0} != 1 ]] && podman image exists "$STANDIN_IMAGE"; then
    log "cached: $STANDIN_IMAGE already exists (FORCE=1 rebuilds)"
    echo "$STANDIN_IMAGE"
    exit 0
fi

if [[ ! -f $TORCH_WHEEL ]]; then
    log "torch wheel not found: $TORCH_WHEEL (set TORCH_WHEEL)"
    exit 1
fi
if [[ ! -f $HOST_CA_BUNDLE ]]; then
    log "CA bundle not found: $HOST_CA_BUNDLE (set HOST_CA_BUNDLE)"
    exit 1
fi

work=$(mktemp -d /var/tmp/mimo-standin.XXXXXX)
cleanup() {
    # Mounts live in a private mount namespace (unshare below) and are gone
    # with it; this only removes files.
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
rootfs=$work/rootfs

log "debootstrap $SUITE (minbase + python3) into $rootfs"
# In a private mount namespace too: debootstrap mounts /proc etc. in the target.
unshare --mount --propagation private -- debootstrap --variant=minbase \
    --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates \
    "$SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 || {
    tail -n 40 "$work/debootstrap.log" >&2
    log "debootstrap failed"
    exit 1
}

wheel_name=$(basename "$TORCH_WHEEL")
cp "$TORCH_WHEEL" "$rootfs/tmp/$wheel_name"

# The install script that runs inside the rootfs. torch comes from the local
# wheel; its pure-Python dependencies come from PyPI.
cat >"$rootfs/tmp/standin-setup.sh" <<SETUP
set -euo pipefail
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
export PIP_DEFAULT_TIMEOUT=180
rm -f /usr/lib/python3*/EXTERNALLY-MANAGED
python3 -m pip install --no-cache-dir "/tmp/$wheel_name"
# Like NGC's /etc/pip/constraint.txt: pin torch and everything installed with
# it, so that later installs cannot replace them.
mkdir -p /etc/pip
site=\$(python3 -c 'import sysconfig; print(sysconfig.get_path("purelib", "posix_local"))')
{
    echo "# Stand-in for the NGC image's pip constraint file: the packages"
    echo "# preinstalled in this base (torch and its dependencies) are pinned."
    python3 -m pip list --format=freeze --path "\$site"
} >/etc/pip/constraint.txt
grep -q '^torch==' /etc/pip/constraint.txt
python3 -c 'import torch; print("standin torch", torch.__version__)'
rm -f "/tmp/$wheel_name" /tmp/standin-setup.sh
apt-get clean
rm -rf /var/lib/apt/lists/* /root/.cache /var/cache/debconf/*-old /var/log/*.log
mkdir -p /workspace
SETUP

# Runs in a private mount namespace (unshare below): its mounts disappear with
# it, even on error, and never show on the host.
cat >"$work/enter.sh" <<'ENTER'
set -euo pipefail
rootfs=$1 ca=$2
mount -t proc proc "$rootfs/proc"
mount --bind /dev "$rootfs/dev"
mount --bind /sys "$rootfs/sys"
# DNS and the host CA bundle (a TLS-intercepting egress proxy needs it), only
# while installing: the image keeps the files of its own Debian packages.
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
mount --bind -o ro "$ca" "$rootfs/etc/ssl/certs/ca-certificates.crt"
exec chroot "$rootfs" /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 /bin/bash /tmp/standin-setup.sh
ENTER

log "installing $wheel_name into the rootfs"
unshare --mount --propagation private -- bash "$work/enter.sh" "$rootfs" "$HOST_CA_BUNDLE"
: >"$rootfs/etc/resolv.conf"

log "importing the rootfs as $STANDIN_IMAGE"
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
tar -C "$rootfs" --numeric-owner --xattrs -cf - . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_CONSTRAINT=/etc/pip/constraint.txt' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'WORKDIR /workspace' \
    --change 'CMD ["/bin/bash"]' \
    --change 'LABEL org.opencontainers.image.title="mimo-launch stand-in base"' \
    --change 'LABEL org.opencontainers.image.description="Local stand-in for nvcr.io/nvidia/pytorch: Debian bookworm, CPU torch, pip constraint file. For CI only, never push."' \
    --change "LABEL org.opencontainers.image.created=$created" \
    --change 'LABEL io.github.mimo-launch.standin=true' \
    --message "mimo-launch stand-in base ($SUITE, $wheel_name)" \
    - "$STANDIN_IMAGE" >/dev/null

podman image exists "$STANDIN_IMAGE"
log "built $STANDIN_IMAGE ($(podman image inspect --format '{{.Size}}' "$STANDIN_IMAGE") bytes)"
echo "$STANDIN_IMAGE"
