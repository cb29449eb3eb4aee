#!/usr/bin/env bash
# Bring up a single-node Slurm cluster on localhost, with accounting (slurmdbd +
# MariaDB) so that `sacct` works, for trajhpc's integration tests and CI.
#
# Debian 12, as root, without systemd or cgroups. Idempotent: when the cluster is
# already up this is a no-op; when a daemon is missing only that one is started.
#
#   sudo scripts/slurm-ci-up.sh          # state under /tmp/slurm-ci
#   SLURM_CI_DIR=/scratch/sci sudo -E scripts/slurm-ci-up.sh
#
# Environment:
#   SLURM_CI_DIR       folder for all state, logs, pid files and the database (default /tmp/slurm-ci)
#   SLURM_CI_CLUSTER   Slurm cluster name (default localci)
#   SLURM_CI_TIMEOUT   seconds to wait for each daemon (default 60)
#
# Configuration is written to /etc/slurm/slurm.conf and /etc/slurm/slurmdbd.conf
# (the clients read /etc/slurm); files there not written by this script are never
# overwritten. Stop with scripts/slurm-ci-down.sh. See docs/SLURM-CI.md.
set -euo pipefail

DIR="${SLURM_CI_DIR:-/tmp/slurm-ci}"
CLUSTER="${SLURM_CI_CLUSTER:-localci}"
TIMEOUT="${SLURM_CI_TIMEOUT:-60}"
CONF_DIR=/etc/slurm
MARKER="# managed by trajhpc scripts/slurm-ci-up.sh"
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=slurmci           # loopback only: MariaDB runs with --skip-networking
PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)
# The daemons log "error: ..." lines that are harmless here (docs/SLURM-CI.md).

START_NS=$(date +%s%N)

log() { printf 'slurm-ci: %s\n' "$*"; }
die() { printf 'slurm-ci: error: %s\n' "$*" >&2; exit 1; }
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"
elapsed() { awk -v a="$START_NS" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }

# pid_alive PIDFILE NAME: the pid file names a live process called NAME (guards
# against a stale pid file whose number was reused).
pid_alive() {
    local pid
    [[ -s "$1" ]] || return 1
    pid=$(<"$1")
    [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]]
}

# wait_for DESCRIPTION COMMAND...: retry COMMAND every 0.1 s until it succeeds or TIMEOUT.
wait_for() {
    local what=$1 deadline=$((SECONDS + TIMEOUT))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${TIMEOUT}s waiting for $what"
        sleep 0.1
    done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
munge_ok() { munge -n </dev/null | unmunge >/dev/null; }
db_ok() { mariadb-admin --no-defaults --socket=/run/mysqld/mysqld.sock ping; }
node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1; }
node_listed() { [[ -n "$(node_state)" ]]; }
node_idle() { [[ "$(node_state)" == idle ]]; }
node_usable() { [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]]; }
sacct_ok() { sacct -n -X -S now -o JobID >/dev/null 2>&1; }

cluster_up() {
    ! grep -qs squeue /usr/local/bin/sacct && pid_alive "$DIR/run/slurmctld.pid" slurmctld && pid_alive "$DIR/run/slurmd.pid" slurmd &&
        pid_alive "$DIR/run/slurmdbd.pid" slurmdbd && munge_ok && node_usable && sacct_ok
}

NODE=$(hostname -s)
if cluster_up 2>/dev/null; then
    log "already up (node $NODE $(node_state), state in $DIR); $(elapsed) s"
    exit 0
fi
# Where no cluster can be provided, say so and succeed: the tests marked `slurm`
# skip themselves, and the README's set-up command goes on to run the others.
if [[ $EUID -ne 0 ]]; then
    log "not root: no test cluster started (run: sudo $0); the slurm tests will be skipped"
    exit 0
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-query >/dev/null; then
    log "no apt-get (not Debian/Ubuntu): no test cluster started; the slurm tests will be skipped"
    exit 0
fi

# One bring-up at a time (CI and a developer, or two helpers, may race).
mkdir -p "$(dirname "$DIR")"
# Daemons are started with fd 9 closed, else they would hold the lock forever.
exec 9>"${DIR%/}.lock"
flock 9

# --- packages ----------------------------------------------------------------
# Recommends would pull ~35 more packages (HDF5, ROCm, InfluxDB plugins...); the daemons
# are started by hand below, not by the packages' postinst scripts.
apt_ensure "${DIR%/}.apt.log" "${PACKAGES[@]}"

# A sacct shim from an accounting-less setup would shadow the real sacct.
if [[ -f /usr/local/bin/sacct ]] && grep -qs squeue /usr/local/bin/sacct; then
    log "removing the stale sacct shim /usr/local/bin/sacct"
    rm -f /usr/local/bin/sacct
fi
if cluster_up 2>/dev/null; then  # brought up while we waited for the lock
    log "already up (node $NODE $(node_state), state in $DIR); $(elapsed) s"
    exit 0
fi

for f in "$CONF_DIR/slurm.conf" "$CONF_DIR/slurmdbd.conf"; do
    if [[ -e "$f" ]] && ! grep -qxF "$MARKER" "$f"; then
        die "$f exists and was not written by this script; move it away first"
    fi
done

mkdir -p "$DIR"  # not `install -d -m`: that would chmod an existing folder (think /tmp)
install -d -m 0755 "$DIR/run" "$DIR/log" "$DIR/state" "$DIR/spool"
install -d -o mysql -g mysql -m 0750 "$DIR/mysql"

stop_pidfile() {  # stop_pidfile PIDFILE NAME: TERM, wait for the pid to go, then KILL
    local pid deadline=$((SECONDS + 30))
    pid_alive "$1" "$2" || return 0
    pid=$(<"$1")
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then kill -KILL "$pid" 2>/dev/null || true; fi
        sleep 0.1
    done
    rm -f "$1"
}

stop_slurm() {
    stop_pidfile "$DIR/run/slurmd.pid" slurmd
    stop_pidfile "$DIR/run/slurmctld.pid" slurmctld
    stop_pidfile "$DIR/run/slurmdbd.pid" slurmdbd
}

# --- configuration -----------------------------------------------------------
# Node line from the hardware slurmd sees: copying Boards/Sockets/Cores/Threads
# avoids "Node reconfigured socket/core boundaries"; RealMemory a bit below the
# real one, else the node goes INVAL ("Low RealMemory").
hw=$(slurmd -C | head -n1)
[[ "$hw" == NodeName=* ]] || die "unexpected 'slurmd -C' output: $hw"
[[ "$hw" =~ RealMemory=([0-9]+) ]] || die "no RealMemory in 'slurmd -C' output: $hw"
mem=${BASH_REMATCH[1]}
real_mem=$((mem > 4096 ? mem - 2048 : mem / 2))
node_line="${hw/RealMemory=$mem/RealMemory=$real_mem} NodeAddr=127.0.0.1 State=UNKNOWN"

slurm_conf="$MARKER
# Single-node test cluster: no systemd, no cgroups (proctrack/linuxproc, task/none),
# so --mem and --cpus-per-task are bookkeeping only.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default a job that asks for no memory takes the whole node.
DefMemPerCPU=1000
# Slurm waits 3 s between array task starts by default.
SchedulerParameters=batch_sched_delay=0
SchedulerType=sched/backfill
# Keep finished jobs visible to squeue for an hour.
MinJobAge=3600
# submitit's job wrapper ignores SIGTERM: do not hold the CPU 30 s after scancel.
KillWait=5
ReturnToService=2
# No MTA: an unset MailProg logs 'Configured MailProg is invalid'.
MailProg=/bin/true
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
$node_line
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"

slurmdbd_conf="$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME"

# write_conf FILE CONTENT MODE: replace FILE only when its content changes.
write_conf() {
    if [[ -f "$1" ]] && [[ "$(<"$1")" == "$2" ]]; then
        chmod "$3" "$1"
        return 1
    fi
    install -d -m 0755 "$(dirname "$1")"
    printf '%s\n' "$2" >"$1.tmp"
    chmod "$3" "$1.tmp"
    mv -f "$1.tmp" "$1"
}
changed=0
write_conf "$CONF_DIR/slurm.conf" "$slurm_conf" 0644 && changed=1
# slurmdbd refuses a config readable by group or others.
write_conf "$CONF_DIR/slurmdbd.conf" "$slurmdbd_conf" 0600 && changed=1

# Fresh controller state (first start, or state wiped) restarts job ids at 1: the
# accounting DB must start empty too, else `sacct -j 1` mixes old and new jobs.
fresh=0
[[ -e "$DIR/state/clustername" ]] || fresh=1
if ((changed || fresh)); then
    stop_slurm
fi

# --- munge -------------------------------------------------------------------
if ! munge_ok 2>/dev/null; then
    # systemd's RuntimeDirectory= normally creates /run/munge.
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        runuser -u munge -- mungekey --create
    fi
    # As root munged refuses its log file ("Logfile is insecure").
    runuser -u munge -- /usr/sbin/munged 9>&-
    wait_for munged munge_ok
    # Remember that this script started munged, so that slurm-ci-down.sh stops it.
    cp /run/munge/munged.pid "$DIR/run/munged.pid"
fi

# --- MariaDB (unix socket only) ---------------------------------------------
if ! db_ok >/dev/null 2>&1; then
    if [[ ! -d "$DIR/mysql/data/mysql" ]]; then
        log "initialising the accounting database in $DIR/mysql/data"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DIR/mysql/data" \
            --auth-root-authentication-method=socket --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed, see $DIR/log/mariadb-install.log"
    fi
    install -d -o mysql -g mysql -m 0755 /run/mysqld
    # mariadbd writes its log as user mysql: the file must exist and be theirs,
    # or nothing is logged.
    touch "$DIR/mysql/mariadbd.log"
    chown mysql:mysql "$DIR/mysql/mariadbd.log"
    setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DIR/mysql/data" \
        --socket=/run/mysqld/mysqld.sock --pid-file="$DIR/mysql/mariadbd.pid" \
        --log-error="$DIR/mysql/mariadbd.log" --skip-networking \
        --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 9>&- &
    wait_for "MariaDB (log: $DIR/mysql/mariadbd.log)" db_ok
fi
sql() { mariadb --no-defaults --socket=/run/mysqld/mysqld.sock -e "$1"; }
if ((fresh)); then
    sql "DROP DATABASE IF EXISTS $DB_NAME;"
fi
sql "CREATE DATABASE IF NOT EXISTS $DB_NAME;
     CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
     GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';"

# --- Slurm daemons -----------------------------------------------------------
# Order matters: slurmctld registers the cluster with slurmdbd when it starts.
# The daemons fork and return before writing their pid file: wait for it.
if ! pid_alive "$DIR/run/slurmdbd.pid" slurmdbd; then
    /usr/sbin/slurmdbd 9>&-
    wait_for "slurmdbd on :6819 (log: $DIR/log/slurmdbd.log)" port_open 6819
    wait_for "slurmdbd pid file" pid_alive "$DIR/run/slurmdbd.pid" slurmdbd
fi
if ! pid_alive "$DIR/run/slurmctld.pid" slurmctld; then
    /usr/sbin/slurmctld 9>&-
    wait_for "slurmctld pid file (log: $DIR/log/slurmctld.log)" pid_alive "$DIR/run/slurmctld.pid" slurmctld
fi
if ! pid_alive "$DIR/run/slurmd.pid" slurmd; then
    /usr/sbin/slurmd 9>&-
    wait_for "slurmd pid file (log: $DIR/log/slurmd.log)" pid_alive "$DIR/run/slurmd.pid" slurmd
fi

# A DRAIN (e.g. after a bad RealMemory) survives in the saved state even once the
# config is fixed; ReturnToService=2 does not clear it.
wait_for "sinfo to list node $NODE" node_listed
for _ in 1 2 3; do
    if [[ "$(node_state)" =~ (drain|down|fail|inval) ]]; then
        scontrol update NodeName="$NODE" State=RESUME || true
    fi
    node_usable && break
    sleep 1
done
wait_for "node $NODE idle (sinfo -R; $DIR/log/slurmd.log)" node_idle
wait_for "sacct to answer (log: $DIR/log/slurmdbd.log)" sacct_ok
log "up in $(elapsed) s: node $NODE $(node_state), cluster $CLUSTER, state in $DIR"
