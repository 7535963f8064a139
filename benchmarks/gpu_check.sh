#!/usr/bin/env bash
# On one GPU machine, within 8 minutes: the one-rank NCCL verification, then the health stage
# (check=health) on whatever GPUs there are. Never run by CI; nothing depends on it.
#
#   benchmarks/gpu_check.sh                 # results under ./gpu_check-<date>/
#   OUT=/some/dir benchmarks/gpu_check.sh   # results under $OUT
#
# Needs a Python with CUDA torch and megatron-core (PYTHON, default: .venv/bin/python if it
# exists, else python3); this checkout is put first on PYTHONPATH. Layout for the health stage:
# 8 or more GPUs: the default vlm_8 (vision TP2 DP2 on GPUs 0-3, language PP2 DP2 on 4-7);
# 2 to 7: one module, TP2 where the count is even (else TP1), DP the rest; 1: none (the stage
# needs two ranks). The stage runs with health.fail=false (report only): a slow GPU or link is
# named in the report, the script's exit code stays that of a run that worked.
# Exit: 0 every step ran, 2 no GPU or no usable Python, 3 a step failed or ran out of time.
# Rehearsal without a GPU: DEVICE=cpu GPUS=4 benchmarks/gpu_check.sh runs the same steps on
# gloo as if there were 4 GPUs (default sizes of the CPU then).
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/gpu_check-$(date +%Y%m%d-%H%M%S)}"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
DEVICE="${DEVICE:-cuda}"
STEP_LIMIT_S="${STEP_LIMIT_S:-210}"   # two steps (plus start-up) fit in 8 minutes
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"

say() { echo "gpu_check: $*" | tee -a "$SUMMARY"; }

COUNT="$("$PYTHON" -c 'import torch, megatron.core; print(torch.cuda.device_count())' 2>"$OUT/python.err")" || {
    say "error: $PYTHON cannot import torch and megatron-core (see $OUT/python.err)"; exit 2; }
if [[ "$DEVICE" == cuda ]]; then GPUS="$COUNT"; else GPUS="${GPUS:-4}"; fi
if [[ "${GPUS:-0}" -lt 1 ]]; then
    say "error: no GPU visible to torch (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset})"
    exit 2
fi
say "$GPUS GPU(s), device=$DEVICE; $("$PYTHON" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)')"
nvidia-smi --query-gpu=index,name,memory.total --format=csv > "$OUT/gpus.csv" 2>/dev/null || true

# run NAME OVERRIDES...: one mimo-launch run into $OUT/NAME, bounded by STEP_LIMIT_S
run() {
    local name="$1"; shift
    local start=$SECONDS code
    timeout --kill-after=10 "$STEP_LIMIT_S" "$PYTHON" -m mimo_launch.cli "device=$DEVICE" \
        "hydra.run.dir=$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
    code=$?
    say "$name: exit $code in $((SECONDS - start))s ($*); report: $OUT/$name/report.json"
    return $code
}

failed=0
# 1. The one-rank NCCL verification: one module, TP1 PP1 DP1 on GPU 0.
run verify_1rank mimo=single_8 mimo.world_size=1 mimo.modules.language.tp=1 \
    mimo.modules.language.pp=1 || failed=1

# 2. The health stage on every GPU (GPU sizes by default: 1 MiB, 16 MiB, 256 MiB).
if [[ "$GPUS" -ge 8 ]]; then
    run health_vlm8 check=health health.fail=false || failed=1
elif [[ "$GPUS" -ge 2 ]]; then
    tp=$(( GPUS % 2 == 0 ? 2 : 1 ))
    run "health_${GPUS}gpu" check=health health.fail=false mimo=single_8 \
        "mimo.world_size=$GPUS" "mimo.modules.language.tp=$tp" mimo.modules.language.pp=1 \
        || failed=1
else
    say "health: skipped, one GPU has no group of two ranks to time"
fi
for log in "$OUT"/health_*.log; do
    [[ -e "$log" ]] && sed -n '/health \(OK\|PROBLEM\)/,/^report:/p' "$log" | tee -a "$SUMMARY"
done
say "results in $OUT"
exit $(( failed ? 3 : 0 ))
