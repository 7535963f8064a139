#!/usr/bin/env bash
# Bring up a real single-machine Slurm cluster for tests (no systemd needed):
# munged, MariaDB, slurmdbd, slurmctld and four slurmd's (fake nodes n1..n4,
# all on this machine, via slurmd -N). Idempotent: returns quickly if the
# cluster is already up and healthy; otherwise stops leftovers and starts
# fresh (job ids restart at 1, accounting is reset).
#
# State lives under $MIMO_SLURM_DIR (default /tmp/mimo-slurm); the generated
# slurm.conf and slurmdbd.conf are also installed into /etc/slurm so the
# plain client commands work from any shell.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

WAIT_S=${MIMO_SLURM_WAIT_S:-60}
T0=$(date +%s.%N)

if [ "$(id -u)" -ne 0 ]; then
    log "start.sh must run as root"
    exit 1
fi

take_lock # (the daemons below are started with fd 9 closed so they do not hold it)
bash "$HERE/install.sh"

elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

HOST=$(hostname -s)

# ---------------------------------------------------------------- configs
# write_configs DIR: write slurm.conf and slurmdbd.conf into DIR.
write_configs() {
    local out=$1 i nodelist
    # slurmdbd.conf holds the DB password: never world-readable, even briefly.
    (umask 077 && cat >"$out/slurmdbd.conf") <<EOF
$CONF_MARKER (state: $D)
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$RUN_DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF

    {
        echo "$CONF_MARKER (state: $D)"
        cat <<EOF
ClusterName=$CLUSTER_NAME
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$SPOOL_DIR/ctld
SlurmdSpoolDir=$SPOOL_DIR/slurmd-%n
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
LaunchType=launch/slurm
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
# Fast failure handling for tests: a task exiting non-zero ends the step,
# cancelled/timed-out jobs get SIGKILL 5 s after SIGTERM.
KillOnBadExit=1
KillWait=5
InactiveLimit=0
MinJobAge=300
SlurmctldTimeout=60
SlurmdTimeout=60
MessageTimeout=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# munge socket used for connections to slurmdbd (AuthInfo is not used there)
AccountingStoragePass=$MUNGE_SOCKET
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
EOF
        for i in "${!NODES[@]}"; do
            echo "NodeName=${NODES[$i]} NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((SLURMD_PORT0 + i + 1)) CPUs=$CPUS_PER_NODE RealMemory=$REAL_MEMORY_MB State=UNKNOWN"
        done
        nodelist=$(
            IFS=,
            echo "${NODES[*]}"
        )
        echo "PartitionName=$PARTITION Nodes=$nodelist Default=YES MaxTime=INFINITE DefaultTime=60 State=UP OverSubscribe=NO"
    } >"$out/slurm.conf"
    chmod 644 "$out/slurm.conf"
    chown root:root "$out/slurmdbd.conf"
    chmod 600 "$out/slurmdbd.conf"
}

# ---------------------------------------------------------------- health check
# Healthy = every daemon alive, the installed config is ours, the controller
# answers and no node is down/drained/not responding.
healthy() {
    local line pidfile states
    while read -r line; do
        # shellcheck disable=SC2086
        set -- $line
        pidfile=$2
        shift 2
        pid_alive "$pidfile" "$@" >/dev/null || return 1
    done < <(daemon_table)
    # The installed configs must be exactly what this script would write now
    # (so a changed script, port or state dir forces a restart).
    local want same=0
    want=$(mktemp -d)
    write_configs "$want"
    cmp -s "$want/slurm.conf" "$SYS_SLURM_DIR/slurm.conf" || same=1
    cmp -s "$want/slurmdbd.conf" "$SYS_SLURM_DIR/slurmdbd.conf" || same=1
    rm -rf "$want"
    [ "$same" = 0 ] || return 1
    timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP' || return 1
    states=$(timeout 10 sinfo -h -N -p "$PARTITION" -o '%N %T' 2>/dev/null) || return 1
    [ "$(echo "$states" | awk 'NF' | sort -u | wc -l)" -eq "${#NODES[@]}" ] || return 1
    # idle / allocated / mixed / completing are fine; anything else is not
    # (down, drain, unknown, not_responding shown as a trailing '*', ...).
    if echo "$states" | awk '{print $2}' | grep -vqE '^(idle|allocated|mixed|completing)$'; then
        return 1
    fi
    return 0
}

if healthy; then
    echo "mimo-slurm: cluster '$CLUSTER_NAME' already up: $(sinfo -h -o '%D nodes %N %T' | tr '\n' ' ')(state+logs in $D) [$(elapsed)s]"
    exit 0
fi

# ------------------------------------------------------------- fresh (re)start
# A cluster of ours started with another MIMO_SLURM_DIR holds the ports and
# /etc/slurm: stop it first (found through the marker in the installed config).
other=$(sed -n "s|^$CONF_MARKER (state: \(.*\))\$|\1|p" "$SYS_SLURM_DIR/slurm.conf" 2>/dev/null | head -n 1 || true)
if [ -n "$other" ] && [ "$other" != "$D" ] && [ -d "$other/run" ]; then
    log "stopping the cluster previously started with MIMO_SLURM_DIR=$other"
    MIMO_SLURM_DIR=$other bash "$HERE/stop.sh" --quiet
fi
bash "$HERE/stop.sh" --quiet

# Reset state but keep the munge key (and nothing else).
rm -rf "$ETC_DIR" "$RUN_DIR" "$LOG_DIR" "$SPOOL_DIR" "$DB_DIR"
mkdir -p "$D" "$ETC_DIR" "$RUN_DIR" "$LOG_DIR" "$SPOOL_DIR/ctld" "$DB_DIR" "$MUNGE_DIR"
chmod 755 "$D" "$ETC_DIR" "$RUN_DIR" "$LOG_DIR" "$SPOOL_DIR"
chmod 700 "$MUNGE_DIR"
for n in "${NODES[@]}"; do
    mkdir -p "$SPOOL_DIR/slurmd-$n"
done

# Node names must resolve (slurmd -N n1 looks itself up; srun/sbatch too).
need_hosts=0
for n in "${NODES[@]}"; do
    case "$(getent ahostsv4 "$n" 2>/dev/null | awk 'NR == 1 {print $1}')" in
        127.*) ;;
        *) need_hosts=1 ;;
    esac
done
# (add a newline first if /etc/hosts does not end with one)
add_hosts_line() {
    if [ -s /etc/hosts ] && [ "$(tail -c 1 /etc/hosts | od -An -c | tr -d ' ')" != '\n' ]; then
        echo >>/etc/hosts
    fi
    echo "$1" >>/etc/hosts
}
if [ "$need_hosts" = 1 ]; then
    add_hosts_line "127.0.0.1 ${NODES[*]} # mimo-slurm fake nodes"
fi
if ! getent hosts "$HOST" >/dev/null 2>&1; then
    add_hosts_line "127.0.0.1 $HOST # mimo-slurm controller host"
fi

# wait_for SECONDS WHAT LOGFILE CMD...: poll CMD until it succeeds.
wait_for() {
    local secs=$1 what=$2 logf=$3
    shift 3
    local end=$(($(date +%s) + secs))
    while ! "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$end" ]; then
            log "ERROR: $what not ready after ${secs}s; see $logf"
            [ -r "$logf" ] && tail -n 20 "$logf" >&2
            exit 1
        fi
        sleep 0.2
    done
}

# ---------------------------------------------------------------------- munge
if [ ! -s "$MUNGE_KEY" ]; then
    dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
fi
chown root:root "$MUNGE_KEY"
chmod 600 "$MUNGE_KEY"
munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" \
    --pid-file="$RUN_DIR/munged.pid" --log-file="$LOG_DIR/munged.log" \
    --seed-file="$MUNGE_DIR/munged.seed" --num-threads=4 \
    </dev/null >>"$LOG_DIR/munged.log" 2>&1 9>&- ||
    {
        log "ERROR: munged failed to start; see $LOG_DIR/munged.log"
        tail -n 20 "$LOG_DIR/munged.log" >&2
        exit 1
    }
munge_ok() { munge -S "$MUNGE_SOCKET" -n </dev/null | unmunge -S "$MUNGE_SOCKET"; }
wait_for 10 munged "$LOG_DIR/munged.log" munge_ok

# -------------------------------------------------------------------- MariaDB
mkdir -p "$DB_DATA" "$DB_DIR/tmp"
if ! mariadb-install-db --no-defaults --datadir="$DB_DATA" --user=root \
    --auth-root-authentication-method=socket --skip-test-db \
    >"$LOG_DIR/mariadb-install-db.log" 2>&1; then
    log "ERROR: mariadb-install-db failed; see $LOG_DIR/mariadb-install-db.log"
    tail -n 20 "$LOG_DIR/mariadb-install-db.log" >&2
    exit 1
fi
setsid mariadbd --no-defaults --user=root --datadir="$DB_DATA" \
    --tmpdir="$DB_DIR/tmp" --bind-address=127.0.0.1 --port="$DB_PORT" \
    --socket="$DB_SOCKET" --pid-file="$RUN_DIR/mariadb.pid" \
    --log-error="$LOG_DIR/mariadb.log" --skip-name-resolve --skip-log-bin \
    --innodb-buffer-pool-size=128M --innodb-log-file-size=64M \
    --innodb-lock-wait-timeout=900 --max-connections=200 \
    </dev/null >>"$LOG_DIR/mariadb.log" 2>&1 9>&- &
sql() { mariadb --no-defaults -S "$DB_SOCKET" -u root "$@"; }
db_ok() { pid_alive "$RUN_DIR/mariadb.pid" mariadbd mysqld && sql -e 'SELECT 1'; }
wait_for 30 MariaDB "$LOG_DIR/mariadb.log" db_ok
sql <<EOF
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON \`$DB_NAME\`.* TO '$DB_USER'@'localhost';
GRANT ALL PRIVILEGES ON \`$DB_NAME\`.* TO '$DB_USER'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF

write_configs "$ETC_DIR"

# Install into /etc/slurm; keep a one-time backup of any foreign config.
mkdir -p "$SYS_SLURM_DIR"
for f in slurm.conf slurmdbd.conf; do
    if [ -e "$SYS_SLURM_DIR/$f" ] && ! grep -qF "$CONF_MARKER" "$SYS_SLURM_DIR/$f" 2>/dev/null &&
        [ ! -e "$SYS_SLURM_DIR/$f.mimo-backup" ]; then
        cp -p "$SYS_SLURM_DIR/$f" "$SYS_SLURM_DIR/$f.mimo-backup"
    fi
done
install -o root -g root -m 644 "$ETC_DIR/slurm.conf" "$SYS_SLURM_DIR/slurm.conf"
install -o root -g root -m 600 "$ETC_DIR/slurmdbd.conf" "$SYS_SLURM_DIR/slurmdbd.conf"
unset SLURM_CONF

# ------------------------------------------------------------------- slurmdbd
slurmdbd </dev/null >>"$LOG_DIR/slurmdbd.log" 2>&1 9>&- || {
    log "ERROR: slurmdbd failed to start; see $LOG_DIR/slurmdbd.log"
    tail -n 20 "$LOG_DIR/slurmdbd.log" >&2
    exit 1
}
dbd_ok() {
    pid_alive "$RUN_DIR/slurmdbd.pid" slurmdbd &&
        timeout 5 sacctmgr -n -P list cluster format=cluster
}
wait_for 30 slurmdbd "$LOG_DIR/slurmdbd.log" dbd_ok

# Register the cluster, an account and root in accounting.
sacctmgr -i -Q add cluster "$CLUSTER_NAME" >/dev/null
sacctmgr -i -Q add account "$CLUSTER_NAME" Cluster="$CLUSTER_NAME" \
    Description="mimo test account" Organization=mimo >/dev/null
sacctmgr -i -Q add user root Account="$CLUSTER_NAME" Cluster="$CLUSTER_NAME" >/dev/null
sacctmgr -i -Q modify user root set DefaultAccount="$CLUSTER_NAME" >/dev/null
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
    sacctmgr -i -Q add user "$SUDO_USER" Account="$CLUSTER_NAME" Cluster="$CLUSTER_NAME" >/dev/null || true
fi

# ------------------------------------------------------------------ slurmctld
slurmctld -i </dev/null >>"$LOG_DIR/slurmctld.log" 2>&1 9>&- || {
    log "ERROR: slurmctld failed to start; see $LOG_DIR/slurmctld.log"
    tail -n 20 "$LOG_DIR/slurmctld.log" >&2
    exit 1
}
ctld_ok() { timeout 5 scontrol ping | grep -q 'is UP'; }
wait_for 30 slurmctld "$LOG_DIR/slurmctld.log" ctld_ok

# ------------------------------------------------------------------ slurmd x4
for n in "${NODES[@]}"; do
    slurmd -N "$n" </dev/null >>"$LOG_DIR/slurmd-$n.log" 2>&1 9>&- || {
        log "ERROR: slurmd -N $n failed to start; see $LOG_DIR/slurmd-$n.log"
        tail -n 20 "$LOG_DIR/slurmd-$n.log" >&2
        exit 1
    }
done

# ------------------------------------------------------------ wait for nodes
end=$(($(date +%s) + WAIT_S))
while :; do
    states=$(timeout 5 sinfo -h -N -p "$PARTITION" -o '%N %T' 2>/dev/null || true)
    nidle=$(echo "$states" | awk '$2 == "idle"' | sort -u | wc -l)
    [ "$nidle" -eq "${#NODES[@]}" ] && break
    if [ "$(date +%s)" -ge "$end" ]; then
        log "ERROR: nodes not all idle after ${WAIT_S}s:"
        echo "$states" >&2
        log "logs: $LOG_DIR/slurmctld.log $LOG_DIR/slurmd-<node>.log $LOG_DIR/slurmdbd.log"
        exit 1
    fi
    sleep 0.3
done

echo "mimo-slurm: cluster '$CLUSTER_NAME' up: ${#NODES[@]} nodes (${NODES[*]}) idle, partition '$PARTITION', ${CPUS_PER_NODE} CPUs/node; state+logs in $D [$(elapsed)s]"
