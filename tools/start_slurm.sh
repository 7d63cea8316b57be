#!/usr/bin/env bash
# Starts a single-node Slurm cluster on this machine, as root, for the `--backend slurm` tests (CI) or
# to try the backend on a workstation:
#
#   sudo bash tools/start_slurm.sh        # then: sbatch --wrap hostname; squeue; sinfo
#
# 1. installs Debian's `slurm-wlm` and `munge` (apt-get; skipped when the commands are there);
# 2. starts `munged --force` (the package's key, /etc/munge/munge.key; one is made when missing);
# 3. writes a one-node /etc/slurm/slurm.conf for this host (its real name, CPUs, sockets, cores and
#    memory as `slurmd -C` reports them; proctrack/linuxproc and task/none, so no cgroups are needed;
#    select/cons_tres; one partition `debug`), starts `slurmctld` and `slurmd`;
# 4. waits until the node is idle and a test job (`sbatch --wrap true`) has completed.
# Idempotent: a cluster that already answers (`scontrol ping`, node up) is left as it is. A
# slurm.conf this script did not write is never overwritten: the script stops and names it.
# Daemon logs: /var/log/slurm/{slurmctld,slurmd}.log, /var/log/munge/munged.log.
set -euo pipefail

conf=/etc/slurm/slurm.conf
marker="# written by serkit tools/start_slurm.sh"
logdir=/var/log/slurm

say() { printf '%s (start_slurm) %s\n' "$(date '+%H:%M:%S')" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts munged, slurmctld and slurmd)"

cluster_up() {
  scontrol ping 2> /dev/null | grep -q 'is UP' || return 1
  # the node answers and takes jobs (idle, mixed or allocated; not down, drained or not responding)
  sinfo -h -N -o '%t' 2> /dev/null | grep -Eq '^(idle|mix|alloc)$'
}

############################################################################### 1. packages
if command -v sbatch > /dev/null && command -v slurmctld > /dev/null && command -v slurmd > /dev/null \
  && command -v munged > /dev/null; then
  say "slurm-wlm and munge are installed: $(slurmd -V)"
else
  say "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge > /dev/null
fi

if cluster_up; then
  say "a Slurm cluster already answers here: $(sinfo -h -N -o '%N %t %c CPUs' | paste -sd, -)"
  exit 0
fi

############################################################################### 2. munge
if ! munge -n < /dev/null 2> /dev/null | unmunge > /dev/null 2>&1; then
  if [ ! -s /etc/munge/munge.key ]; then
    say "no /etc/munge/munge.key: creating one"
    if command -v mungekey > /dev/null; then mungekey --create --keyfile /etc/munge/munge.key
    else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; fi
    chown munge:munge /etc/munge/munge.key 2> /dev/null || true
    chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  say "starting munged"
  # --force: run as root although the package's directories belong to the munge user
  munged --force 2> /dev/null || munged --force
  for _ in $(seq 50); do munge -n < /dev/null 2> /dev/null | unmunge > /dev/null 2>&1 && break; sleep 0.1; done
  munge -n < /dev/null | unmunge > /dev/null || die "munged does not answer (log: /var/log/munge/munged.log)"
fi

############################################################################### 3. slurm.conf
if [ -e "$conf" ] && ! grep -qxF "$marker" "$conf"; then
  die "$conf exists and was not written by this script; it is left as it is. Start that cluster's daemons yourself, or move the file away and re-run."
fi
host=$(hostname -s)
node=$(slurmd -C | head -n 1)  # NodeName=<host> CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=.. RealMemory=..
[[ "$node" == "NodeName=$host "* ]] || die "slurmd -C reports '$node', not this host ($host)"
addr=$(getent hosts "$host" | awk '{print $1; exit}')
[ -n "$addr" ] || addr=127.0.0.1
mkdir -p "$(dirname "$conf")" /var/spool/slurmctld /var/spool/slurmd "$logdir" /run/slurm
cat > "$conf.tmp" <<EOF
$marker
# a one-node cluster for tests; re-running the script rewrites this file
ClusterName=serkit
SlurmctldHost=$host($addr)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=$logdir/slurmctld.log
SlurmdLogFile=$logdir/slurmd.log
# finished jobs stay visible to scontrol for 10 minutes (there is no accounting database)
MinJobAge=600
$node NodeAddr=$addr State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
mv "$conf.tmp" "$conf"
say "wrote $conf: $node"

############################################################################### 4. daemons
# Daemons left by an earlier start of this script (their pid files are ours) are restarted with the
# new configuration.
for d in slurmd slurmctld; do
  pidfile=/run/slurm/$d.pid
  if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2> /dev/null; then
    say "stopping the earlier $d (pid $(cat "$pidfile"))"
    kill "$(cat "$pidfile")"
    for _ in $(seq 50); do kill -0 "$(cat "$pidfile")" 2> /dev/null || break; sleep 0.1; done
  fi
done
say "starting slurmctld and slurmd"
slurmctld
slurmd
for _ in $(seq 150); do cluster_up && break; sleep 0.2; done
cluster_up || die "the node did not come up within 30 s: $(sinfo -h -N -o '%N %t %E' 2>&1) (logs: $logdir/slurmctld.log, $logdir/slurmd.log)"
t0=$(date +%s.%N)
job=$(sbatch --parsable --output=/dev/null --job-name=start_slurm_check --wrap true) \
  || die "sbatch refused a test job (logs: $logdir/)"
for _ in $(seq 300); do
  state=$(scontrol show job "$job" 2> /dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
  case $state in PENDING|CONFIGURING|RUNNING|COMPLETING|"") sleep 0.2 ;; *) break ;; esac
done
[ "$state" = COMPLETED ] || die "the test job $job (sbatch --wrap true) is $state after 60 s (logs: $logdir/)"
say "Slurm is up: $(sinfo -h -N -o '%N %t %c CPUs' | paste -sd, -); a test job ran in $(printf '%.1f' "$(echo "$(date +%s.%N) - $t0" | bc)") s"
