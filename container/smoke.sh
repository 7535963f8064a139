#!/usr/bin/env bash
# Run `mimo-launch` (default layout: 8 ranks on CPU with gloo) inside the image
# with podman, and check that it passed: exit status 0 and report.json says
# "passed": true. The Hydra output directory is a host folder mounted at /out.
#
#   container/smoke.sh                  # IMAGE (default localhost/mimo-launch:<version>)
#   SMOKE_OUT=/some/dir container/smoke.sh
#   container/smoke.sh key=value ...    # extra Hydra overrides for mimo-launch
#
# Prints the report path as its last line. Exit status: 0 on pass, non-zero
# otherwise.
set -euo pipefail
# shellcheck source=container/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
need_tools podman python3

if ! podman image exists "$IMAGE"; then
    echo "smoke.sh: image $IMAGE not found: run container/build.sh" >&2
    exit 1
fi

out=${SMOKE_OUT:-$(mktemp -d /var/tmp/mimo-smoke.XXXXXX)}
mkdir -p "$out"
rm -f "$out/report.json"

echo "smoke.sh: podman run $IMAGE mimo-launch hydra.run.dir=/out $* (output in $out)" >&2
start=$SECONDS
rc=0
# --network none: the ranks talk over the container's own loopback only.
"${PODMAN[@]}" run --rm \
    "${PODMAN_RUN_LIMITS[@]}" \
    --network none \
    -v "$out:/out" \
    "$IMAGE" \
    mimo-launch hydra.run.dir=/out "$@" || rc=$?
echo "smoke.sh: mimo-launch exited $rc after $((SECONDS - start))s" >&2

report=$out/report.json
if [[ ! -f $report ]]; then
    echo "smoke.sh: FAIL: no report.json in $out" >&2
    exit 1
fi
passed=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("passed") is True)' "$report")
if [[ $rc -ne 0 || $passed != True ]]; then
    echo "smoke.sh: FAIL: exit status $rc, report passed=$passed ($report)" >&2
    exit 1
fi
echo "smoke.sh: PASS ($report)" >&2
echo "$report"
