#!/usr/bin/env bash
# Bring up a single-node Slurm on this machine for the Slurm executor's tests (run as root).
#
#   scripts/slurm-up.sh        install Debian's slurmctld/slurmd/munge if missing, write a
#                              configuration with two fake GPUs (gres), start the daemons and
#                              wait until the node is idle; a no-op when it is already up
#   scripts/slurm-up.sh down   stop the daemons this script started
#
# Facts and traps: ../shared/SLURM.md (when present) and docs/cluster.md. The cluster keeps its
# state in its own directory (/var/spool/ropelens-slurm) so that an earlier cluster's name never
# blocks slurmctld ("CLUSTER NAME MISMATCH"). Exit status 0: Slurm is up; 2: it cannot be
# installed or started here (the message says why; the tests that need it then skip).
#
# MinJobAge is 10 s (the purge runs about every 60 s), so that a finished job leaves squeue and
# scontrol within about 70 s and the executor's `sacct -c` fallback can be tested. A cluster
# already up with another configuration is given this one (`scontrol reconfigure`, which keeps
# running jobs).
#
# Two partitions over the one node: `debug` (the default) and `urgent`, of a higher priority tier,
# whose jobs preempt those of `debug` (PreemptType=preempt/partition_prio, PreemptMode=CANCEL:
# the preempted job ends PREEMPTED, as scontrol, squeue and the jobcomp file report it).
set -uo pipefail

STATE=/var/spool/ropelens-slurm
CONF_DIR=/etc/slurm

stop() {
    for pid_file in /run/slurmd.pid /run/slurmctld.pid; do
        [ -f "$pid_file" ] && kill "$(cat "$pid_file")" 2>/dev/null
    done
    [ -f /run/munge/munged.pid ] && kill "$(cat /run/munge/munged.pid)" 2>/dev/null
    rm -f /run/slurmd.pid /run/slurmctld.pid
    return 0
}

if [ "${1:-}" = down ]; then
    stop
    exit 0
fi

unavailable() {
    echo "slurm-up: $*" >&2
    exit 2
}

node_up() {
    timeout 5 sinfo -h -o '%T %G' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)[*~]? .*gpu:2'
}

MIN_JOB_AGE=10
PREEMPT_TYPE=preempt/partition_prio
# A second partition over the same node whose jobs preempt (cancel) those of `debug`, so that a
# test can make Slurm end a job PREEMPTED.
URGENT=urgent

config_value() {
    timeout 5 scontrol show config 2>/dev/null | awk -v k="$1" '$1 == k { print $3 }'
}

# Whether the running cluster has this script's configuration (an older one lacks some of it).
configured() {
    [ "$(config_value MinJobAge)" = "$MIN_JOB_AGE" ] &&
        [ "$(config_value PreemptType)" = "$PREEMPT_TYPE" ] &&
        timeout 5 sinfo -h -p "$URGENT" -o %P 2>/dev/null | grep -q "^$URGENT"
}

# The configuration, written from the running slurmd's view of this machine.
write_conf() {
    local host node_line
    host=$(hostname -s)
    node_line=$(slurmd -C 2>/dev/null | head -1)
    [ -n "$node_line" ] || unavailable "slurmd -C printed nothing"
    # `NodeName=x CPUs=2 Boards=... RealMemory=...` plus where to reach it and the fake GPUs.
    node_line="$node_line Gres=gpu:2 NodeAddr=127.0.0.1 State=UNKNOWN"
    mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" /var/log/slurm
    cat >"$CONF_DIR/slurm.conf" <<CONF
# Written by ropelens scripts/slurm-up.sh: a single-node test cluster with two fake GPUs.
ClusterName=ropelens
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
ReturnToService=2
MinJobAge=$MIN_JOB_AGE
KillWait=2
OverTimeLimit=0
EnforcePartLimits=ALL
DependencyParameters=kill_invalid_depend
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
GresTypes=gpu
PreemptType=$PREEMPT_TYPE
PreemptMode=CANCEL
$node_line
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=$URGENT Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=2
CONF
    cat >"$CONF_DIR/gres.conf" <<CONF
AutoDetect=off
NodeName=$host Name=gpu File=/dev/fakegpu[0-1]
CONF
}

if node_up; then
    if ! configured; then
        [ "$(id -u)" = 0 ] || unavailable "needs root to reconfigure Slurm (MinJobAge $(config_value MinJobAge), PreemptType $(config_value PreemptType))"
        write_conf
        scontrol reconfigure || unavailable "scontrol reconfigure failed"
        for _ in $(seq 1 20); do
            configured && break
            sleep 0.5
        done
        configured || unavailable "the configuration did not take after reconfigure (MinJobAge $(config_value MinJobAge), PreemptType $(config_value PreemptType))"
        echo "slurm-up: reconfigured (MinJobAge $MIN_JOB_AGE, partition $URGENT preempting debug)"
    fi
    echo "slurm-up: already up ($(sinfo -h -o '%P %N %T %G' | tr '\n' ' '))"
    exit 0
fi
[ "$(id -u)" = 0 ] || unavailable "needs root to install and start Slurm"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || unavailable "no apt-get to install slurmctld, slurmd and munge"
    echo "slurm-up: installing slurmctld slurmd slurm-client munge"
    apt-get update -qq >/dev/null 2>&1 || unavailable "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null 2>&1 ||
        unavailable "apt-get install slurmctld slurmd slurm-client munge failed"
fi

stop
sleep 0.5
for n in 0 1; do
    [ -e /dev/fakegpu$n ] || mknod -m 666 /dev/fakegpu$n c 1 3
done
write_conf

install -d -o munge -g munge -m 755 /run/munge
[ -f /etc/munge/munge.key ] || unavailable "no /etc/munge/munge.key (the munge package makes it)"
runuser -u munge -- /usr/sbin/munged || unavailable "munged did not start"
slurmctld || unavailable "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
slurmd || unavailable "slurmd did not start (see /var/log/slurm/slurmd.log)"
for _ in $(seq 1 60); do
    if node_up; then
        echo "slurm-up: up ($(sinfo -h -o '%N %T %G'))"
        exit 0
    fi
    sleep 0.5
done
unavailable "the node did not become idle within 30 s: $(sinfo -h -o '%N %T %E' 2>&1)"
