#!/usr/bin/env bash
# A real Redis Cluster on 127.0.0.1: three masters, each with one replica, append-only files on, for tests and
# local use. A master that dies is replaced by its replica within about CLUSTER_NODE_TIMEOUT_MS (default 3000).
#
#   REDIS_CLUSTER_PASSWORD=... scripts/redis-cluster.sh start [FIRST_PORT] [DIR]
#       starts six nodes on FIRST_PORT..FIRST_PORT+5 (default 7101; cluster bus on port + 10000): masters on the
#       first three, replicas on the next three. Creates the cluster, waits until it serves, and prints the lines
#       to eval:
#         export REDIS_CLUSTER_NODES=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
#         export REDIS_CLUSTER_DIR=...
#       DIR (data, logs, pid files) must be new or empty; without it a fresh private folder comes from mktemp.
#   scripts/redis-cluster.sh restart-node PORT [DIR]      a node that died rejoins (as a replica if it was replaced)
#   scripts/redis-cluster.sh stop [FIRST_PORT] [DIR]      (DIR defaults to $REDIS_CLUSTER_DIR)
#
# The password comes from the environment only (Feast splits its connection string on commas and
# JSON-decodes values: use no comma and not only digits).
set -euo pipefail
cmd=${1:?usage: redis-cluster.sh start|stop [FIRST_PORT] [DIR] | restart-node PORT [DIR]}
first=${2:-7101}
ports=()
for i in 0 1 2 3 4 5; do ports+=("$((first + i))"); done

start_node() {  # port, folder: one node, with its cluster config and append-only file in the folder
  redis-server --port "$1" --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file "nodes-$1.conf" \
    --cluster-node-timeout "${CLUSTER_NODE_TIMEOUT_MS:-3000}" --requirepass "$REDIS_CLUSTER_PASSWORD" \
    --masterauth "$REDIS_CLUSTER_PASSWORD" --save "" --appendonly yes --appendfilename "appendonly-$1.aof" \
    --appenddirname "aof-$1" --repl-diskless-sync-delay 0 --dir "$2" --daemonize yes --pidfile "$2/redis-$1.pid" \
    --logfile "$2/redis-$1.log"
}

case "$cmd" in
start)
  : "${REDIS_CLUSTER_PASSWORD:?set REDIS_CLUSTER_PASSWORD}"
  if [ -n "${3:-}" ]; then
    dir=$3
    mkdir -p -m 700 "$dir"
    if [ -n "$(ls -A "$dir")" ]; then
      echo "redis-cluster.sh: $dir is not empty; give a new folder (or none: one is made with mktemp)" >&2
      exit 2
    fi
  else
    dir=$(mktemp -d -t lst-embeddings-redis-cluster.XXXXXX)
  fi
  for p in "${ports[@]}"; do
    start_node "$p" "$dir"
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 100); do
      REDISCLI_AUTH="$REDIS_CLUSTER_PASSWORD" redis-cli -p "$p" ping >/dev/null 2>&1 && break
      sleep 0.1
    done
  done
  # masters are the first three nodes given; each of the other three becomes a replica
  if ! created=$(REDISCLI_AUTH="$REDIS_CLUSTER_PASSWORD" redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" \
    --cluster-replicas 1 --cluster-yes 2>&1); then
    echo "$created" >&2
    exit 1
  fi
  for p in "${ports[@]}"; do  # every node serves and knows the three replicas; replicas hold their master's data
    for _ in $(seq 300); do
      if REDISCLI_AUTH="$REDIS_CLUSTER_PASSWORD" redis-cli -p "$p" cluster info | grep -q "cluster_state:ok" &&
        [ "$(REDISCLI_AUTH="$REDIS_CLUSTER_PASSWORD" redis-cli -p "$p" cluster nodes | grep -c slave)" = 3 ] &&
        ! REDISCLI_AUTH="$REDIS_CLUSTER_PASSWORD" redis-cli -p "$p" info replication | grep -q "master_link_status:down"
      then
        break
      fi
      sleep 0.1
    done
  done
  nodes=$(printf "127.0.0.1:%s," "${ports[@]:0:3}")
  echo "export REDIS_CLUSTER_NODES=${nodes%,}"
  echo "export REDIS_CLUSTER_DIR=$dir"
  ;;
restart-node)  # a node that died rejoins: its cluster config and data are in DIR; it comes back as a replica
  : "${REDIS_CLUSTER_PASSWORD:?set REDIS_CLUSTER_PASSWORD}"
  start_node "$first" "${3:-${REDIS_CLUSTER_DIR:?give the cluster folder or set REDIS_CLUSTER_DIR}}"
  ;;
stop)
  dir=${3:-${REDIS_CLUSTER_DIR:?give the cluster folder or set REDIS_CLUSTER_DIR}}
  for p in "${ports[@]}"; do
    [ -f "$dir/redis-$p.pid" ] && kill "$(cat "$dir/redis-$p.pid")" 2>/dev/null || true
  done
  ;;
*)
  echo "usage: redis-cluster.sh start|stop [FIRST_PORT] [DIR] | restart-node PORT [DIR]" >&2
  exit 2
  ;;
esac
