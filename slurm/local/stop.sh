#!/usr/bin/env bash
# Stop the local test Slurm cluster started by start.sh.
# Only processes named by start.sh's pid files (and whose command name matches)
# are signalled. Idempotent: does nothing if nothing is running.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

take_lock

QUIET=0
[ "${1:-}" = "--quiet" ] && QUIET=1
say() { [ "$QUIET" = 1 ] || log "$@"; }

# 1. Cancel remaining jobs while the controller is still there, so that no
#    slurmstepd/job processes outlive the daemons.
if pid_alive "$RUN_DIR/slurmctld.pid" slurmctld slurmctld-wlm >/dev/null &&
    grep -qF "$CONF_MARKER" "$SYS_SLURM_DIR/slurm.conf" 2>/dev/null; then
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        say "cancelling jobs: $(echo "$jobs" | tr "\n" " ")"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        for _ in $(seq 1 40); do
            [ -z "$(timeout 5 squeue -h -o %A 2>/dev/null || true)" ] && break
            sleep 0.5
        done
    fi
fi

# running PID: alive and not a zombie (this sandbox's init reaps orphans slowly).
running() {
    kill -0 "$1" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# wait_gone TENTHS PID...: wait up to TENTHS x 0.1 s until none of the PIDs is running.
wait_gone() {
    local tries=$1 pid alive
    shift
    for _ in $(seq 1 "$tries"); do
        alive=0
        for pid in "$@"; do
            running "$pid" && alive=1
        done
        [ "$alive" = 0 ] && return 0
        sleep 0.1
    done
    return 0
}

# stop_group "name pidfile comm..." lines: TERM all, wait, KILL stragglers.
stop_group() {
    local line name pidfile pid
    local -a pids=() names=() files=()
    while read -r line; do
        [ -n "$line" ] || continue
        # shellcheck disable=SC2086
        set -- $line
        name=$1
        pidfile=$2
        shift 2
        if pid=$(pid_alive "$pidfile" "$@"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            names+=("$name")
        fi
        files+=("$pidfile")
    done
    local i
    if [ "${#pids[@]}" -gt 0 ]; then
        say "stopping ${names[*]}"
        wait_gone 300 "${pids[@]}" # up to 30 s
        for i in "${!pids[@]}"; do
            pid=${pids[$i]}
            if running "$pid"; then
                say "${names[$i]} (pid $pid) did not exit on SIGTERM; sending SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done
        wait_gone 50 "${pids[@]}"
    fi
    rm -f "${files[@]}"
}

table=$(daemon_table)
# slurmd's first (all four together), then the controller, the accounting
# daemon, the database and finally munge.
echo "$table" | grep '^slurmd-' | stop_group
for d in slurmctld slurmdbd mariadb munged; do
    echo "$table" | grep "^$d " | stop_group
done

say "stopped (state kept in $D)"
