#!/usr/bin/env bash
# Bring up a single-node SLURM cluster on this machine, for tests/test_slurm.py.
#
#   bash .ci/slurm_up.sh      # as root (or with passwordless sudo); safe to run again
#   bash .ci/slurm_down.sh    # stop it
#
# Installs Debian's slurmctld, slurmd, slurm-client and munge, writes a one-node slurm.conf
# (CPUs and memory from `slurmd -C`, no accounting storage, finished jobs kept visible to
# squeue for an hour so the executor plugin's `--slurm-status-command squeue` works), starts
# munged, slurmctld and slurmd, and waits for the node to be idle. It also installs the
# Snakemake SLURM executor plugin into the Python that runs the tests.
#
# It never fails the caller: when SLURM cannot be started it says why and exits 0, and
# tests/test_slurm.py then skips with the reason "no SLURM controller answers sinfo".
set -uo pipefail

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
MARKER="# written by coar .ci/slurm_up.sh"
PLUGIN="snakemake-executor-plugin-slurm>=2.8"

log() { echo "slurm_up: $*" >&2; }
give_up() {
    log "SLURM not started: $*"
    log "tests/test_slurm.py will skip"
    exit 0
}
controller_answers() { timeout 10 sinfo -h -o %T >/dev/null 2>&1; }
node_state() { timeout 10 sinfo -h -N -o %T 2>/dev/null | head -n 1; }

# The plugin goes into the Python that runs the tests, as the user who runs them (not again
# after re-running this script under sudo).
if [ -z "${COAR_SLURM_UP_AS_ROOT:-}" ]; then
    python -c "import snakemake_executor_plugin_slurm" 2>/dev/null \
        || python -m pip install -q "$PLUGIN" \
        || log "could not install $PLUGIN (SLURM tests will skip)"
fi

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        exec sudo -n COAR_SLURM_UP_AS_ROOT=1 bash "$0" "$@"
    fi
    give_up "needs root or passwordless sudo to install and start the daemons"
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sinfo >/dev/null \
    || ! command -v munged >/dev/null; then
    log "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || give_up "apt-get update failed"
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
        || give_up "apt-get install slurmctld slurmd slurm-client munge failed"
fi

if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    controller_answers && { log "a SLURM cluster configured elsewhere answers already"; exit 0; }
    give_up "$CONF was not written by this script; not overwriting it"
fi

# munge: the key, its run directory, the daemon (as the munge user, like Debian's service).
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile /etc/munge/munge.key || give_up "mungekey --create failed"
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged || give_up "munged did not start (see /var/log/munge/munged.log)"
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n | unmunge >/dev/null 2>&1 || give_up "munge credentials do not round-trip"
fi

# slurm.conf: one node, this machine, at 127.0.0.1 so no name resolution is needed.
node_line=$(slurmd -C 2>/dev/null | head -n 1)
case "$node_line" in NodeName=*) ;; *) give_up "slurmd -C printed no node line" ;; esac
node=$(sed -E 's/^NodeName=([^ ]+).*/\1/' <<<"$node_line")
install -d -m 755 "$CONF_DIR" /var/log/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd
new_conf=$(cat <<EOF
$MARKER
ClusterName=coar-ci
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# squeue shows finished jobs for MinJobAge seconds; the plugin's squeue status needs them.
MinJobAge=3600
ReturnToService=2
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ "$(cat "$CONF" 2>/dev/null)" != "$new_conf" ]; then
    printf '%s\n' "$new_conf" >"$CONF"
    if running /run/slurmctld.pid || running /run/slurmd.pid; then  # an older configuration: restart
        scontrol shutdown >/dev/null 2>&1
        for _ in $(seq 20); do
            running /run/slurmctld.pid || running /run/slurmd.pid || break
            sleep 0.5
        done
    fi
fi

running /run/slurmctld.pid || slurmctld || give_up "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
running /run/slurmd.pid || slurmd || give_up "slurmd did not start (see /var/log/slurm/slurmd.log)"

for _ in $(seq 60); do
    state=$(node_state)
    case "$state" in
        idle*|mix*|alloc*) log "node $node is $state; sinfo:"; sinfo >&2; exit 0 ;;
        down*|drain*) scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 ;;
    esac
    sleep 1
done
give_up "node $node not idle after 60 s (state '${state:-none}'; see /var/log/slurm/)"
