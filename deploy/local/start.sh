#!/usr/bin/env bash
# Starts a coordinator and N workers on this machine as separate processes, as a
# cluster runs them, for users without Kubernetes (coordinator --local does the
# same from one command). The coordinator's output and logs come to this
# terminal; worker K logs to $LOG_DIR/worker-K.log. Ctrl-C stops them all.
#
# usage: bash deploy/local/start.sh N [coordinator flags...]
#   e.g. bash deploy/local/start.sh 2 --data ../shared/datasets/flowers --out out
# Settings that both commands take (the cluster key, TLS files, --insecure) go
# in ALEXRING_* environment variables, which every command reads.
# Environment: ALEXRING_BIN (prebuilt binaries; default: build into ./bin),
# GOSSIP (default 127.0.0.1:7946), LOG_DIR (default ./alexring-logs),
# WORKER_FLAGS (extra worker flags, e.g. "--timeline rank.json"), GOMAXPROCS
# (each worker's; default: the cores divided among the workers).
set -euo pipefail
n=${1:?usage: bash deploy/local/start.sh N [coordinator flags...]}
shift
case $n in '' | *[!0-9]* | 0) echo "start.sh: N must be a positive number of workers, not '$n'" >&2; exit 2 ;; esac
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=${ALEXRING_BIN:-}
if [ -z "$bin" ]; then
  bash "$repo/deploy/local/install-deps.sh"
  (cd "$repo" && go build -o bin/ ./cmd/...)
  bin=$repo/bin
fi
gossip=${GOSSIP:-127.0.0.1:7946}
logs=${LOG_DIR:-alexring-logs}
mkdir -p "$logs"

# The workers share the cores: a Go process per worker, each with every core,
# spends CPU waking idle threads of its own (coordinator --local does the same).
cores=$(nproc)
worker_procs=${GOMAXPROCS:-$((cores / n > 0 ? cores / n : 1))}

pids=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_all EXIT
trap 'exit 130' INT TERM

"$bin/coordinator" --workers "$n" --bind "$gossip" "$@" &
coordinator=$!
pids+=("$coordinator")
for ((k = 0; k < n; k++)); do
  # shellcheck disable=SC2086 # WORKER_FLAGS is a list of flags
  GOMAXPROCS=$worker_procs "$bin/worker" --join "$gossip" --name "worker-$k" --log-format json ${WORKER_FLAGS:-} >"$logs/worker-$k.log" 2>&1 &
  pids+=("$!")
done

set +e
wait "$coordinator"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  echo "start.sh: the coordinator failed (exit $rc); worker logs are in $logs/" >&2
  exit "$rc"
fi
# The job is done: the workers leave on their own after the final barrier.
failed=0
for ((k = 0; k < n; k++)); do
  if ! wait "${pids[k + 1]}"; then
    echo "start.sh: worker-$k failed; see $logs/worker-$k.log" >&2
    failed=1
  fi
done
exit "$failed"
