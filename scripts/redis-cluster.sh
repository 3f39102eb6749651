#!/usr/bin/env bash
# A real Redis Cluster of three masters on 127.0.0.1, for tests and local use.
#
#   REDIS_CLUSTER_PASSWORD=... scripts/redis-cluster.sh start [FIRST_PORT] [DIR]
#       starts masters on FIRST_PORT..FIRST_PORT+2 (default 7101; cluster bus on port + 10000), creates the
#       cluster, waits until it serves, and prints the line to eval:
#       export REDIS_CLUSTER_NODES=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
#   scripts/redis-cluster.sh stop [FIRST_PORT] [DIR]
#
# The password comes from the environment only (Feast splits its connection string on commas and
# JSON-decodes values: use no comma and not only digits).
set -euo pipefail
cmd=${1:?usage: redis-cluster.sh start|stop [FIRST_PORT] [DIR]}
first=${2:-7101}
dir=${3:-/tmp/lst-embeddings-redis-cluster-$first}
ports=("$first" "$((first + 1))" "$((first + 2))")

case "$cmd" in
start)
  : "${REDIS_CLUSTER_PASSWORD:?set REDIS_CLUSTER_PASSWORD}"
  mkdir -p "$dir"
  for p in "${ports[@]}"; do
    rm -f "$dir/nodes-$p.conf"
    redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file "$dir/nodes-$p.conf" \
      --requirepass "$REDIS_CLUSTER_PASSWORD" --masterauth "$REDIS_CLUSTER_PASSWORD" --save "" --appendonly no \
      --dir "$dir" --daemonize yes --pidfile "$dir/redis-$p.pid" --logfile "$dir/redis-$p.log"
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 100); do
      REDISCLI_AUTH="$REDIS_CLUSTER_PASSWORD" redis-cli -p "$p" ping >/dev/null 2>&1 && break
      sleep 0.1
    done
  done
  REDISCLI_AUTH="$REDIS_CLUSTER_PASSWORD" redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" \
    --cluster-replicas 0 --cluster-yes >"$dir/create.log"
  for _ in $(seq 100); do
    REDISCLI_AUTH="$REDIS_CLUSTER_PASSWORD" redis-cli -p "$first" cluster info | grep -q "cluster_state:ok" && break
    sleep 0.1
  done
  nodes=$(printf "127.0.0.1:%s," "${ports[@]}")
  echo "export REDIS_CLUSTER_NODES=${nodes%,}"
  ;;
stop)
  for p in "${ports[@]}"; do
    [ -f "$dir/redis-$p.pid" ] && kill "$(cat "$dir/redis-$p.pid")" 2>/dev/null || true
  done
  ;;
*)
  echo "usage: redis-cluster.sh start|stop [FIRST_PORT] [DIR]" >&2
  exit 2
  ;;
esac
