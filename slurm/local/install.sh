#!/usr/bin/env bash
# Install the Debian packages needed by the local single-machine Slurm
# cluster (see start.sh). Idempotent: when everything is already installed it
# only runs a few `dpkg -s` checks and exits without touching apt.
set -euo pipefail

PACKAGES=(
    slurmctld
    slurmd
    slurmdbd
    slurm-client
    munge
    mariadb-server
    mariadb-client
    procps
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    # "Status: install ok installed" is the only fully-installed state.
    if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed$'; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: missing packages (${missing[*]}) and not root; cannot install" >&2
    exit 1
fi

echo "install.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
APT=(apt-get -o DPkg::Lock::Timeout=900 -q -y)
"${APT[@]}" update >/dev/null
"${APT[@]}" install --no-install-recommends "${missing[@]}" >/dev/null
echo "install.sh: done" >&2
