#!/usr/bin/env bash
# Build a local stand-in for the NGC PyTorch base image.
#
# The real base (nvcr.io/nvidia/pytorch:25.12-py3, see the Dockerfile) cannot
# be pulled where no container registry is reachable (this project's CI). This
# script makes an image that looks like it in the ways the Dockerfile relies on,
# so that `pip install .` on it resolves what it resolves on NGC:
#
#   * Python 3.12 (NGC 25.12's), as `python`/`python3` on PATH: with it pip
#     picks megatron-core 0.19.x, as on NGC (0.17+ need Python >= 3.12);
#   * torch preinstalled (torch==2.14.1 from PyPI, its CUDA build; it runs on
#     CPU) with a pip constraint file pinning torch and what came with it,
#     exported as PIP_CONSTRAINT=/etc/pip/constraint.txt, like NGC does;
#   * no EXTERNALLY-MANAGED marker, so pip installs into the system python;
#   * WORKDIR /workspace.
#
# Where Python 3.12 comes from: Debian bookworm packages only 3.11 and trixie
# only 3.13, and python.org is not reachable from CI. This machine image (CI's
# is the same) has a CPython 3.12 build under pyenv, compiled on this Debian 12
# against bookworm's libraries. It is copied into a bookworm rootfs at
# /usr/local, as the official python:3.12-bookworm images install their own
# build, together with the bookworm runtime libraries its extension modules
# link (libssl3, libffi8, ...). Nothing is compiled and the Python minor is
# NGC's; the rootfs has no Debian python3 at all, so `python3` cannot be 3.11.
# The build checks that every extension module finds its libraries. A trixie
# rootfs (3.13) would have been self-contained but runs another minor than NGC.
#
# torch and its nvidia-* dependencies are big: about 2.5 GB of wheels from
# PyPI, 5.6 GB installed. The whole build takes about 3.5 minutes here (2
# cores); the download is a small part of it, so no wheel cache is kept (pip's
# HTTP cache stays empty behind this CI's egress proxy anyway).
#
# It is imported with `podman import` under STANDIN_IMAGE (a name of its own,
# never an nvcr.io name, so a stand-in can never be mistaken for, or silently
# used instead of, the real NGC image), and the build is skipped when an image
# of that name already exists locally (FORCE=1 rebuilds).
#
# Environment (all optional):
#   STANDIN_IMAGE     image name (default, container/common.sh:
#                     localhost/mimo-launch/standin-pytorch:bookworm-py3.12-torch2.14.1)
#   STANDIN_PYTHON    Python minor (default 3.12); STANDIN_TORCH torch (default 2.14.1)
#   PYTHON_PREFIX     installation prefix of a CPython STANDIN_PYTHON built for
#                     Debian 12 (default: newest $PYENV_ROOT/versions/3.12.*,
#                     PYENV_ROOT defaulting to /root/.pyenv)
#   DEBIAN_MIRROR     mirror URL       (default http://deb.debian.org/debian)
#   HOST_CA_BUNDLE    CA bundle used for pip's downloads while building
#                     (default /etc/ssl/certs/ca-certificates.crt of the host)
#   FORCE=1           rebuild even if the image exists
#
# Prints the image name as its last line. Must run as root.
set -euo pipefail
# shellcheck source=container/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PY=$STANDIN_PYTHON
# The bookworm libraries that CPython's extension modules link (ssl, ctypes,
# sqlite3, readline, curses, dbm, nis, pyexpat, ...); minbase has the rest.
RUNTIME_LIBS=ca-certificates,libssl3,libffi8,libsqlite3-0,libexpat1,libreadline8,libncursesw6,libgdbm6,libgdbm-compat4,libnsl2,libtirpc3

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

if [[ -z ${PYTHON_PREFIX:-} ]]; then
    PYTHON_PREFIX=$(find "${PYENV_ROOT:-/root/.pyenv}/versions" -maxdepth 1 -name "$PY.*" 2>/dev/null | sort -V | tail -n 1 || true)
fi
if [[ ! -x ${PYTHON_PREFIX:-/nonexistent}/bin/python$PY ]] \
    || [[ $("$PYTHON_PREFIX/bin/python$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) != "$PY" ]]; then
    log "no CPython $PY found (looked for ${PYTHON_PREFIX:-${PYENV_ROOT:-/root/.pyenv}/versions/$PY.*}/bin/python$PY; set PYTHON_PREFIX to a CPython $PY prefix built on Debian 12)"
    exit 1
fi
PYTHON_PREFIX=$(realpath "$PYTHON_PREFIX")
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
start=$SECONDS

log "debootstrap $SUITE (minbase + the libraries CPython links) into $rootfs"
# In a private mount namespace too: debootstrap mounts /proc etc. in the target.
unshare --mount --propagation private -- debootstrap --variant=minbase \
    --include="$RUNTIME_LIBS" "$SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 || {
    tail -n 40 "$work/debootstrap.log" >&2
    log "debootstrap failed"
    exit 1
}

log "copying CPython $("$PYTHON_PREFIX/bin/python$PY" -V 2>&1 | cut -d' ' -f2) from $PYTHON_PREFIX to /usr/local"
# The interpreter, its shared library, the standard library and the headers;
# not its site-packages (pip comes from ensurepip), tests, or tkinter/IDLE (no
# X libraries in the image), nor the static libpython.
lib=lib/python$PY
mapfile -t shared < <(cd "$PYTHON_PREFIX" && compgen -G "lib/libpython$PY*.so*" || true)
build_prefix=$("$PYTHON_PREFIX/bin/python$PY" -c 'import sysconfig; print(sysconfig.get_config_var("prefix"))')
tar -C "$PYTHON_PREFIX" -cf - \
    --exclude="$lib/site-packages/*" --exclude="$lib/test" --exclude="$lib/idlelib" \
    --exclude="$lib/tkinter" --exclude="$lib/turtledemo" --exclude="$lib/lib-dynload/_tkinter*" \
    --exclude="$lib/config-*/libpython*.a" \
    "bin/python$PY" "$lib" "include/python$PY" "${shared[@]}" \
    | tar -C "$rootfs/usr/local" -xf -
# Build-time paths in sysconfig (used when compiling extensions) name the prefix.
sed -i "s#$build_prefix#/usr/local#g" "$rootfs/usr/local/$lib"/_sysconfigdata_*.py
cp "$REPO_ROOT/container/standin_setup.sh" "$rootfs/tmp/standin_setup.sh"

# Runs in a private mount namespace (unshare below): its mounts disappear with
# it, even on error, and never show on the host.
cat >"$work/enter.sh" <<'ENTER'
set -euo pipefail
rootfs=$1 ca=$2 py=$3 torch=$4
mount -t proc proc "$rootfs/proc"
mount --bind /dev "$rootfs/dev"
mount --bind /sys "$rootfs/sys"
# DNS and the host CA bundle (a TLS-intercepting egress proxy needs it), only
# while installing: the image keeps the files of its own Debian packages.
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
mount --bind -o ro "$ca" "$rootfs/etc/ssl/certs/ca-certificates.crt"
exec chroot "$rootfs" /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 /bin/bash /tmp/standin_setup.sh "$py" "$torch"
ENTER

log "installing pip and torch==$STANDIN_TORCH from PyPI"
unshare --mount --propagation private -- bash "$work/enter.sh" \
    "$rootfs" "$HOST_CA_BUNDLE" "$PY" "$STANDIN_TORCH"
: >"$rootfs/etc/resolv.conf"
log "rootfs ready after $((SECONDS - start))s: $(du -sh --one-file-system "$rootfs" | cut -f1)"

log "importing the rootfs as $STANDIN_IMAGE"
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
tar -C "$rootfs" --numeric-owner --xattrs -cf - . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_CONSTRAINT=/etc/pip/constraint.txt' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'WORKDIR /workspace' \
    --change 'CMD ["/bin/bash"]' \
    --change 'LABEL org.opencontainers.image.title="mimo-launch stand-in base"' \
    --change "LABEL org.opencontainers.image.description=\"Local stand-in for nvcr.io/nvidia/pytorch: Debian $SUITE, Python $PY, torch $STANDIN_TORCH from PyPI, pip constraint file. For CI only, never push.\"" \
    --change "LABEL org.opencontainers.image.created=$created" \
    --change 'LABEL io.github.mimo-launch.standin=true' \
    --message "mimo-launch stand-in base ($SUITE, Python $PY, torch $STANDIN_TORCH)" \
    - "$STANDIN_IMAGE" >/dev/null

podman image exists "$STANDIN_IMAGE"
log "built $STANDIN_IMAGE in $((SECONDS - start))s ($(podman image inspect --format '{{.Size}}' "$STANDIN_IMAGE") bytes)"
echo "$STANDIN_IMAGE"
