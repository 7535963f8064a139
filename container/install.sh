#!/usr/bin/env bash
# Install the Debian packages that build and run the container image without a
# Docker engine: buildah (build), podman + runc (run), debootstrap (stand-in
# base image), and the rootless/overlay helpers podman pulls in on Debian.
#
# Idempotent and fast when everything is present: `dpkg -s` decides, and
# `apt-get update` only runs when something is missing. Must run as root.
set -euo pipefail

PKGS=(buildah podman runc debootstrap fuse-overlayfs uidmap slirp4netns ca-certificates)

if [[ $(id -u) -ne 0 ]]; then
    echo "container/install.sh: must run as root (apt-get install)" >&2
    exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
    # `dpkg -s` also succeeds for removed-but-not-purged packages; check Status.
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "container/install.sh: all present (${PKGS[*]})"
    exit 0
fi

echo "container/install.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
APT=(apt-get -o DPkg::Lock::Timeout=900 -o Acquire::Retries=3)
# Some configured third-party sources are unreachable here; apt-get update then
# exits non-zero although the Debian lists were fetched. Do not fail on that;
# the install below fails loudly if a package really cannot be found.
"${APT[@]}" update || echo "container/install.sh: apt-get update reported errors; continuing" >&2
"${APT[@]}" install -y --no-install-recommends "${missing[@]}"
