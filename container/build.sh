#!/usr/bin/env bash
# Build the top-level Dockerfile with buildah (no Docker engine needed).
#
#   container/build.sh              # FROM the Dockerfile's default (NGC) base
#   container/build.sh --standin    # FROM the local stand-in base (builds it if missing)
#   BASE_IMAGE=... container/build.sh
#
# Environment: IMAGE (default localhost/mimo-launch:<version>), BASE_IMAGE,
# HOST_CA_BUNDLE, BUILDAH_ISOLATION (default chroot). Extra arguments after the
# options go to `buildah bud` (e.g. --no-cache). Layers are cached (--layers):
# a change under mimo_launch/ or conf/ rebuilds only the last layers.
set -euo pipefail
# shellcheck source=container/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

standin=0
extra=()
for arg in "$@"; do
    case $arg in
        --standin) standin=1 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) extra+=("$arg") ;;
    esac
done

need_tools buildah

if [[ $standin == 1 ]]; then
    BASE_IMAGE=$(STANDIN_IMAGE=$STANDIN_IMAGE "$REPO_ROOT/container/build_standin_base.sh" | tail -n 1)
fi

revision=unknown
source_url=unknown
if git -C "$REPO_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    revision=$(git -C "$REPO_ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
    url=$(git -C "$REPO_ROOT" config --get remote.origin.url 2>/dev/null || true)
    # Never bake credentials (https://user:token@host/...) into a label.
    [[ -n $url ]] && source_url=$(sed -E 's#^([a-z+]+://)[^/@]*@#\1#' <<<"$url")
fi

build_args=(
    --build-arg "VERSION=$MIMO_VERSION"
    --build-arg "REVISION=$revision"
    --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    --build-arg "SOURCE=$source_url"
)
[[ -n ${BASE_IMAGE:-} ]] && build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")

volumes=()
[[ -f $HOST_CA_BUNDLE ]] && volumes+=(-v "$HOST_CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")

base_desc=${BASE_IMAGE:-"the default BASE_IMAGE of the Dockerfile"}
echo "build.sh: building $IMAGE from $base_desc" >&2
start=$SECONDS
buildah bud \
    --isolation "${BUILDAH_ISOLATION:-chroot}" \
    --layers \
    --format docker \
    -f "$REPO_ROOT/Dockerfile" \
    -t "$IMAGE" \
    "${build_args[@]}" \
    "${volumes[@]}" \
    "${extra[@]}" \
    "$REPO_ROOT"
echo "build.sh: built $IMAGE in $((SECONDS - start))s," \
    "$(podman image inspect --format '{{.Size}}' "$IMAGE" 2>/dev/null || echo '?') bytes" >&2
