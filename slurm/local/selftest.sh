#!/usr/bin/env bash
# shellcheck disable=SC2016
# Quick end-to-end check of a running local cluster (start.sh first):
# 2x4 and 4x4 task layouts, and the COMPLETED / FAILED / CANCELLED states in
# sacct. Exits non-zero on the first failed check. Takes ~15 s.
set -euo pipefail

OUT=$(mktemp -d /tmp/mimo-slurm-selftest.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
fail() {
    echo "selftest: FAIL: $*" >&2
    exit 1
}

# sacct_state JOBID: the job's state word (e.g. "CANCELLED by 0" -> CANCELLED).
sacct_state() { sacct -X -n -P -j "$1" -o State 2>/dev/null | head -n 1 | awk '{print $1}'; }

# wait_state JOBID STATE [SECONDS]
wait_state() {
    local s=""
    for _ in $(seq 1 $((${3:-60} * 5))); do
        s=$(sacct_state "$1")
        [ "$s" = "$2" ] && return 0
        case "$s" in COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY) break ;; esac
        sleep 0.2
    done
    fail "job $1: expected $2, got '${s}'"
}

# 1. 2 nodes x 4 tasks.
j=$(sbatch --parsable -N2 --ntasks-per-node=4 -o "$OUT/%j.out" \
    --wrap 'srun bash -c "echo \$SLURM_PROCID \$SLURMD_NODENAME \$SLURM_LOCALID"')
wait_state "$j" COMPLETED
[ "$(wc -l <"$OUT/$j.out")" -eq 8 ] || fail "job $j: expected 8 lines: $(cat "$OUT/$j.out")"
[ "$(awk '{print $2}' "$OUT/$j.out" | sort -u | wc -l)" -eq 2 ] || fail "job $j: expected 2 nodes"
echo "selftest: ok 2x4 tasks (job $j): $(awk '{print $2}' "$OUT/$j.out" | sort | uniq -c | tr -s ' ' | tr '\n' ';')"

# 2. 4 nodes x 4 tasks.
j=$(sbatch --parsable -N4 --ntasks-per-node=4 -o "$OUT/%j.out" \
    --wrap 'srun bash -c "echo \$SLURM_PROCID \$SLURMD_NODENAME"')
wait_state "$j" COMPLETED
[ "$(wc -l <"$OUT/$j.out")" -eq 16 ] || fail "job $j: expected 16 lines"
[ "$(awk '{print $2}' "$OUT/$j.out" | sort -u | wc -l)" -eq 4 ] || fail "job $j: expected 4 nodes"
echo "selftest: ok 4x4 tasks (job $j)"

# 3. exit 3 -> FAILED.
j=$(sbatch --parsable -o "$OUT/%j.out" --wrap 'exit 3')
wait_state "$j" FAILED
echo "selftest: ok FAILED (job $j, exit code $(sacct -X -n -P -j "$j" -o ExitCode))"

# 4. scancel -> CANCELLED.
j=$(sbatch --parsable -o "$OUT/%j.out" --wrap 'sleep 300')
for _ in $(seq 1 50); do
    [ "$(squeue -h -j "$j" -o %T 2>/dev/null)" = RUNNING ] && break
    sleep 0.2
done
scancel "$j"
wait_state "$j" CANCELLED
echo "selftest: ok CANCELLED (job $j)"

echo "selftest: all checks passed"
