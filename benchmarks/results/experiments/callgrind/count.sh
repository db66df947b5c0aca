#!/bin/bash
# Instructions per request of one in-process gateway arm, under callgrind (see README.md).
# usage: count.sh ARM [PYTHONPATH] [N_LOW] [N_HIGH]
# ARM: blocking | stream | round_robin | prefix_kv_aware; PYTHONPATH: the tree to run ("" = installed)
set -e
ARM=$1; TREE=${2:-}; LOW=${3:-0}; HIGH=${4:-1000}
DIR=$(cd "$(dirname "$0")" && pwd)
PY=$(python3 -c "import sys; print(sys.executable)")  # the interpreter itself, not a shim
PORT=""
if [ "$ARM" = blocking ] || [ "$ARM" = stream ]; then
  PORT=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
  PYTHONPATH=$TREE python3 -m kvgate.bench.zero_upstream --port "$PORT" > /dev/null 2>&1 &
  UP=$!
  trap 'kill $UP' EXIT
  sleep 1.5
fi
total() {
  out=$(mktemp)
  PYTHONHASHSEED=0 PYTHONPATH=$TREE valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$PY" "$DIR/loop.py" "$ARM" "$1" $PORT > /dev/null 2>&1
  grep -m1 "^summary:" "$out" | awk '{print $2}'
  rm -f "$out"
}
a=$(total "$LOW"); b=$(total "$HIGH")
echo "$ARM ${TREE:-installed}: $(( (b - a) / (HIGH - LOW) )) instructions per request"
