#!/usr/bin/env bash
# Stop the test cluster started by scripts/slurm-ci-up.sh: cancel every job, stop
# slurmd, slurmctld, slurmdbd, MariaDB and (if the up script started it) munged,
# waiting for each process to exit. Only processes named by pid files under
# $SLURM_CI_DIR are stopped.
#
#   sudo scripts/slurm-ci-down.sh          # keep state: the next up restarts fast
#   sudo scripts/slurm-ci-down.sh --wipe   # also delete $SLURM_CI_DIR (job ids restart at 1)
set -euo pipefail

DIR="${SLURM_CI_DIR:-/tmp/slurm-ci}"
WIPE=0
case "${1:-}" in
    "") ;;
    --wipe) WIPE=1 ;;
    *) printf 'usage: %s [--wipe]\n' "$0" >&2; exit 2 ;;
esac

log() { printf 'slurm-ci: %s\n' "$*"; }
START_NS=$(date +%s%N)
elapsed() { awk -v a="$START_NS" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }

pid_alive() {  # pid_alive PIDFILE NAME (see slurm-ci-up.sh)
    local pid
    [[ -s "$1" ]] || return 1
    pid=$(<"$1")
    [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]]
}

# stop PIDFILE NAME [PIDFILE NAME ...]: SIGTERM to each live one at once (each
# takes 2-3 s to exit), wait for every pid to go, SIGKILL after 30 s.
stop() {
    local pids=() pid deadline=$((SECONDS + 30))
    while (($#)); do
        if pid_alive "$1" "$2"; then
            pid=$(<"$1")
            log "stopping $2 ($pid)"
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
        rm -f "$1"
        shift 2
    done
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                log "pid $pid ignored SIGTERM for 30 s: SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            sleep 0.1
        done
    done
}

# Batch steps run under slurmstepd processes that outlive slurmd: cancel the jobs
# first and let them end (KillWait=5 s) while slurmctld can still see them.
if pid_alive "$DIR/run/slurmctld.pid" slurmctld; then
    jobs=$(squeue -h -o %A 2>/dev/null || true)
    if [[ -n "$jobs" ]]; then
        log "cancelling $(wc -w <<<"$jobs") job(s)"
        # shellcheck disable=SC2086  # one job id per word
        scancel $jobs 2>/dev/null || true
        deadline=$((SECONDS + 20))
        while [[ -n "$(squeue -h -t PENDING,RUNNING,COMPLETING -o %A 2>/dev/null)" ]] && ((SECONDS < deadline)); do
            sleep 0.2
        done
    fi
fi

# slurmctld sends its last accounting records to slurmdbd (authenticated by
# munge) as it exits, and slurmdbd writes them to MariaDB: stop in that order.
stop "$DIR/run/slurmd.pid" slurmd "$DIR/run/slurmctld.pid" slurmctld
stop "$DIR/run/slurmdbd.pid" slurmdbd
stop "$DIR/mysql/mariadbd.pid" mariadbd "$DIR/run/munged.pid" munged

if ((WIPE)); then
    log "removing $DIR"
    rm -rf "$DIR"
fi
log "down in $(elapsed) s"
