#!/usr/bin/env bash
# Tests alexring.sbatch on a real Slurm: installs Debian's Slurm (slurmctld,
# slurmd, slurm-client: the slurm-wlm set) and munge when missing, starts a
# one-node cluster on loopback in a temporary folder (munged, slurmctld and
# slurmd on free ports, the node "localhost" with 2 CPUs), submits a CPU job of
# 2 workers on the tiny config with `sbatch --wait`, and checks that it exits
# 0, that both workers trained and that predict loads best.safetensors. The
# job runs with a gossip key and mTLS (not needed on loopback) so that the
# script's security flags are exercised. Every daemon and file it starts is
# gone when it ends, even on failure; it is bounded by SLURM_TEST_TIMEOUT
# seconds (default 600) in all.
#
# usage: bash deploy/slurm/test.sh   (as root: it installs packages and runs
#        slurmd, which starts jobs)
# Environment: ALEXRING_BIN (prebuilt coordinator, worker, predict and synth;
# default: built into the temporary folder), KEEP=1 (keep the folder, for a
# look at the daemons' logs).
set -euo pipefail

# One bound for the whole test. timeout sends TERM to this script alone
# (--foreground), whose trap then stops the job and the daemons in order: a
# signal to the whole process group would kill slurmctld before scancel
# could reach it, and leave the job's processes behind.
if [ -z "${ALEXRING_SLURM_TEST_BOUNDED:-}" ]; then
  export ALEXRING_SLURM_TEST_BOUNDED=1
  exec timeout --foreground --kill-after=60 "${SLURM_TEST_TIMEOUT:-600}" bash "$0" "$@"
fi
cd "$(dirname "$0")/../.."
repo=$PWD
start=$(date +%s)
say() { echo "slurm test [$(($(date +%s) - start))s]: $*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "slurm test: run as root (it installs Slurm and runs slurmd)" >&2
  exit 2
fi

# A Slurm job's variables around us (a CI runner that is itself a Slurm job)
# would change what sbatch asks for.
while read -r v; do unset "$v"; done < <(compgen -e | grep -E '^(SLURM|SBATCH|SRUN|SALLOC)_' || true)

need=()
for c in munged:munge slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client openssl:openssl; do
  command -v "${c%%:*}" >/dev/null 2>&1 || need+=("${c#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  # Another apt run (a parallel install) holds the lock for a while: wait for it.
  apt=(apt-get -o DPkg::Lock::Timeout=120 -qq)
  "${apt[@]}" update
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${need[@]}" >/dev/null
fi

tmp=$(mktemp -d /tmp/alexring-slurm.XXXXXX)
# munged refuses a socket in a folder that others cannot traverse.
chmod 755 "$tmp"
pids=()
waiting=
cleanup() {
  rc=$?
  set +e
  [ -n "$waiting" ] && kill "$waiting" 2>/dev/null
  if [ -n "${SLURM_CONF:-}" ] && [ -f "$SLURM_CONF" ]; then
    # Jobs first (their processes belong to slurmd's slurmstepd, not to
    # us), then the daemons, newest first. KillWait bounds how long a job's
    # processes may ignore scancel's TERM.
    scancel --quiet --full --user=root 2>/dev/null
    for _ in $(seq 20); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 1; done
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null; done
  for p in "${pids[@]}"; do
    for _ in $(seq 10); do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  if [ "$rc" -ne 0 ]; then
    echo "slurm test: FAILED (exit $rc); the daemons' logs:" >&2
    tail -n 20 "$tmp"/log/*.log >&2 2>/dev/null
  fi
  if [ "${KEEP:-}" = 1 ]; then echo "slurm test: kept $tmp" >&2; else rm -rf "$tmp"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# free_port prints a TCP port on 127.0.0.1 that nothing listens on, away from
# the project's defaults (7946...) and Slurm's (6817, 6818), and not one it
# printed before.
taken=" "
free_port() {
  local p
  for _ in $(seq 100); do
    p=$((30000 + RANDOM % 20000))
    [[ $taken == *" $p "* || $taken == *" $((p + 1)) "* ]] && continue
    if ! (: </dev/tcp/127.0.0.1/"$p") 2>/dev/null && ! (: </dev/tcp/127.0.0.1/"$((p + 1))") 2>/dev/null; then
      taken+="$p $((p + 1)) "
      echo "$p"
      return
    fi
  done
  echo "slurm test: no free port found" >&2
  return 1
}

bin=${ALEXRING_BIN:-}
if [ -z "$bin" ]; then
  say "building the commands"
  bin=$tmp/bin
  go build -o "$bin/" ./cmd/coordinator ./cmd/worker ./cmd/predict ./cmd/synth
fi

mkdir -p "$tmp"/{munge,state,spool,log}
head -c 1024 /dev/urandom >"$tmp/munge/munge.key"
chmod 600 "$tmp/munge/munge.key"
munged --foreground --socket="$tmp/munge/munge.socket" --key-file="$tmp/munge/munge.key" \
  --pid-file="$tmp/munge/munged.pid" --seed-file="$tmp/munge/munged.seed" --log-file="$tmp/log/munged.log" \
  >"$tmp/log/munged.out" 2>&1 &
pids+=($!)

ctld_port=$(free_port)
slurmd_port=$(free_port)
gossip_port=$(free_port)
# The smallest slurm.conf that runs jobs in a container: no cgroups (none may
# be writable here), so processes are tracked by process group and tasks are
# not bound; no accounting database; config_overrides so that the node is
# the 2 CPUs declared here whatever the machine has (a 1-CPU runner would
# otherwise drain it).
export SLURM_CONF=$tmp/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=alexringtest
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$tmp/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/log/slurmctld.log
SlurmdLogFile=$tmp/log/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
MailProg=/bin/true
KillWait=5
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
for _ in $(seq 20); do [ -S "$tmp/munge/munge.socket" ] && break; sleep 0.25; done
say "starting slurmctld (port $ctld_port) and slurmd (port $slurmd_port)"
slurmctld -D -c -f "$SLURM_CONF" >"$tmp/log/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" -N localhost >"$tmp/log/slurmd.out" 2>&1 &
pids+=($!)
state=
for _ in $(seq 60); do
  state=$(sinfo -h -n localhost -o %t 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 0.5
done
if [ "$state" != idle ]; then
  echo "slurm test: the node is '${state:-not there}', not idle, after 30s" >&2
  exit 1
fi

# The job's data, a shared folder in a real cluster; and its security files.
"$bin/synth" --out "$tmp/data" --train 24 --val 6 --size 64 >/dev/null
"$bin/synth" --out "$tmp/sample" --train 1 --val 1 --size 64 --seed 7 >/dev/null
(
  cd "$tmp"
  umask 077
  head -c 32 /dev/urandom | base64 -w0 >cluster.key
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj "/CN=test CA" -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=alexring" \
    -keyout tls.key -out tls.csr 2>/dev/null
  printf 'extendedKeyUsage=serverAuth,clientAuth\n' >ext.cnf
  openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
    -extfile ext.cnf -out tls.crt 2>/dev/null
)

say "submitting 2 CPU workers on the tiny config"
rc=0
ALEXRING_BIN=$bin DEVICE=cpu GOSSIP_PORT=$gossip_port \
  ALEXRING_CLUSTER_KEY_FILE=$tmp/cluster.key ALEXRING_TLS_CERT=$tmp/tls.crt \
  ALEXRING_TLS_KEY=$tmp/tls.key ALEXRING_TLS_CA=$tmp/ca.crt \
  timeout 240 sbatch --wait --nodes=1 --ntasks=2 --cpus-per-task=1 --time=5 \
  --chdir="$tmp" --output="$tmp/job.out" \
  "$repo/deploy/slurm/alexring.sbatch" --config tiny --data "$tmp/data" --out "$tmp/out" \
  --wait-timeout 1m >"$tmp/sbatch.out" 2>&1 &
# In the background, so that a TERM (the bound above) is trapped at once
# rather than after sbatch returns.
waiting=$!
wait "$waiting" || rc=$?
waiting=
cat "$tmp/sbatch.out"
echo "--- the job's output (its first line and its tail) ---"
grep "^alexring.sbatch:" "$tmp/job.out" || true
tail -n 15 "$tmp/job.out" || true
echo "---"
if [ "$rc" -ne 0 ]; then
  echo "slurm test: sbatch --wait exited $rc" >&2
  exit 1
fi
for w in worker-0000 worker-0001; do
  grep -q "$w" "$tmp/job.out" || { echo "slurm test: no $w in the job's output" >&2; exit 1; }
done
grep -q "Epoch 2/2" "$tmp/job.out" || { echo "slurm test: no 'Epoch 2/2' line" >&2; exit 1; }
grep -q "security: --cluster-key-file .* --tls-ca" "$tmp/job.out" || { echo "slurm test: the job did not pass the security flags" >&2; exit 1; }
"$bin/predict" --model "$tmp/out/best.safetensors" --class-indices "$tmp/out/class_indices.json" \
  "$tmp/sample/val/triangle/triangle_0000.png"
say "PASS"
