#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to run launch/slurm.sbatch for real.
#
#   sudo bash launch/slurm_local_cluster.sh          # install if needed, configure, start
#   sudo bash launch/slurm_local_cluster.sh stop     # stop slurmd, slurmctld, munged
#
# Installs Debian's slurm-wlm and munge when `sbatch` is missing, writes a minimal
# /etc/slurm/slurm.conf (one node: this host, all its CPUs; no accounting, no cgroups so it
# also works in a container), starts munged, slurmctld and slurmd as root daemons and
# waits until `sinfo` shows the node idle. Re-running is safe: it restarts the daemons
# with a fresh config. Needs root. Then: pytest -m slurm tests/test_slurm.py
#
# Knobs: SLURM_LOCAL_CPUS (default: nproc), SLURM_LOCAL_STATE (default /var/spool/slurm-local).
set -euo pipefail

STATE=${SLURM_LOCAL_STATE:-/var/spool/slurm-local}
CONF=/etc/slurm/slurm.conf

stop() {
  # Only the daemons this script started, by the pid files it told them to write.
  for name in slurmd slurmctld; do
    if [[ -f "$STATE/$name.pid" ]]; then
      kill "$(cat "$STATE/$name.pid")" 2>/dev/null || true
      rm -f "$STATE/$name.pid"
    fi
  done
}

if [[ ${1:-} == stop ]]; then
  stop
  if [[ -f /run/munge/munged.pid ]]; then kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true; fi
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "slurm_local_cluster.sh: run as root (it installs packages and starts daemons)" >&2
  exit 1
fi

if ! command -v sbatch >/dev/null || ! command -v slurmctld >/dev/null \
   || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y slurm-wlm munge || { apt-get update && apt-get install -y slurm-wlm munge; }
fi

HOST=$(hostname -s)
CPUS=${SLURM_LOCAL_CPUS:-$(nproc)}
MEM_MB=$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.8 }' /proc/meminfo)
mkdir -p "$STATE/ctld" "$STATE/d" /var/log/slurm /etc/slurm

# munge: one key shared by every daemon and client on this host.
if [[ ! -s /etc/munge/munge.key ]]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  # --force: tolerate the container's permissive directories; runs as the munge user.
  runuser -u munge -- /usr/sbin/munged --force
  sleep 1
  munge -n | unmunge >/dev/null
fi

cat > "$CONF" <<EOF
# Written by launch/slurm_local_cluster.sh: one node, no accounting, no cgroups.
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
# Quick turnaround for tests: schedule every 2 s instead of every 30-60 s.
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=600
KillWait=30
InactiveLimit=0
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
# Debian's default cgroup.conf would make slurmd probe cgroups; nothing here uses them.
rm -f /etc/slurm/cgroup.conf

stop
sleep 1
/usr/sbin/slurmctld -c   # -c: clear old job state
/usr/sbin/slurmd
for _ in $(seq 60); do
  state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
  if [[ $state == idle ]]; then
    sinfo
    exit 0
  fi
  if [[ $state == down* || $state == drain* ]]; then
    scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true
  fi
  sleep 1
done
echo "slurm_local_cluster.sh: node $HOST is not idle after 60 s (state: ${state:-?})" >&2
tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2
exit 1
