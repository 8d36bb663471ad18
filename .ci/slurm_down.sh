#!/usr/bin/env bash
# Stop the single-node SLURM cluster that .ci/slurm_up.sh started: cancel its jobs, stop
# slurmctld and slurmd, stop munged. Packages and slurm.conf stay, so slurm_up.sh restarts
# it quickly. Safe to run when nothing is running; never touches a cluster it did not set up.
set -uo pipefail

MARKER="# written by coar .ci/slurm_up.sh"
log() { echo "slurm_down: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        exec sudo -n bash "$0" "$@"
    fi
    log "needs root or passwordless sudo"
    exit 1
fi
if ! grep -qsF "$MARKER" /etc/slurm/slurm.conf; then
    log "/etc/slurm/slurm.conf was not written by .ci/slurm_up.sh; leaving SLURM alone"
    exit 0
fi

stop() {  # stop the daemon whose pid file is $1, waiting up to 10 s
    local pidfile=$1 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$pidfile"
}

timeout 10 squeue -h -o %i 2>/dev/null | xargs -r timeout 10 scancel >/dev/null 2>&1
stop /run/slurmd.pid
stop /run/slurmctld.pid
stop /run/munge/munged.pid
log "stopped"
