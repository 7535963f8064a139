#!/usr/bin/env bash
# Runs INSIDE the stand-in rootfs (chroot), started by build_standin_base.sh,
# after the CPython build has been copied to /usr/local. Not for the host.
#
#   standin_setup.sh PYTHON_MINOR TORCH_VERSION
#
# Checks that every extension module of the interpreter finds its libraries,
# installs pip and torch==TORCH_VERSION from PyPI, writes the NGC-like
# constraint file /etc/pip/constraint.txt and cleans up.
set -euo pipefail

py=$1 torch_version=$2
python=/usr/local/bin/python$py
# PIP_CERT: the system bundle (the host's, mounted over it while this runs),
# not pip's own certifi copy.
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=180 PIP_PROGRESS_BAR=off PIP_CERT=/etc/ssl/certs/ca-certificates.crt

ldconfig
missing=$(for so in /usr/local/lib/python"$py"/lib-dynload/*.so; do
    ldd "$so" | sed -n "s#^\s*\(\S*\) => not found#$(basename "$so"): \1#p"
done)
if [[ -n $missing ]]; then
    echo "standin_setup: libraries missing for the interpreter's modules:" >&2
    echo "$missing" >&2
    exit 1
fi
"$python" -c 'import bz2, ctypes, curses, dbm, decimal, hashlib, lzma, readline, sqlite3, ssl, uuid, zlib'

ln -sf "python$py" /usr/local/bin/python3
ln -sf "python$py" /usr/local/bin/python
"$python" -m ensurepip --default-pip >/dev/null
"$python" -m pip install --quiet --upgrade pip

"$python" -m pip install "torch==$torch_version" \
    | grep -E '^\s*(Processing|Downloading|Using cached|Successfully installed)'

# Like NGC's /etc/pip/constraint.txt: pin torch and everything installed with
# it (pip itself aside), so that later installs cannot replace them.
mkdir -p /etc/pip
{
    echo "# Stand-in for the NGC image's pip constraint file: the packages"
    echo "# preinstalled in this base (torch and its dependencies) are pinned."
    "$python" -m pip list --format=freeze | grep -v -i '^pip=='
} >/etc/pip/constraint.txt
grep -q "^torch==$torch_version\$" /etc/pip/constraint.txt
"$python" -c 'import sys, torch; print("standin: python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/*.log /tmp/standin_setup.sh
rm -rf /root/.cache
mkdir -p /workspace
