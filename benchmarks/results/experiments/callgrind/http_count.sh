#!/bin/bash
# Instructions per request of the whole gateway process over HTTP (its server included), under
# callgrind: `kvgate run` on the zero upstream, requests sent serially over one keep-alive
# connection; counters zeroed before and dumped after each phase of N requests, so start-up
# and warm-up are left out. usage: http_count.sh [PYTHONPATH] [N]   ("" = the installed tree)
set -e
TREE=${1:-}; N=${2:-200}
DIR=$(cd "$(dirname "$0")" && pwd)
OUT=$(mktemp -d)
PY=$(python3 -c "import sys; print(sys.executable)")
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
UP=$(free_port); GW=$(free_port)
python3 -m kvgate.bench.zero_upstream --port "$UP" > /dev/null 2>&1 &
UPPID=$!
sed "s/19101/$UP/" "$DIR/../stream_ab/overhead.yaml" > "$OUT/gw.yaml"
(cd "$OUT" && PYTHONPATH=$TREE PYTHONHASHSEED=0 valgrind --tool=callgrind \
  --callgrind-out-file="$OUT/cg.%p" "$PY" -m kvgate run -c "$OUT/gw.yaml" --host 127.0.0.1 \
  --port "$GW" --workers 1 > "$OUT/gw.log" 2>&1) &
trap 'kill $UPPID 2>/dev/null; pkill -f "valgrind.*$OUT/gw.yaml" 2>/dev/null; rm -rf "$OUT"' EXIT
for _ in $(seq 120); do python3 "$DIR/http_client.py" "$GW" blocking 1 2>/dev/null && break; sleep 1; done
python3 "$DIR/http_client.py" "$GW" blocking 50  # warm
VPID=$(pgrep -f "valgrind.*$OUT/gw.yaml" | head -1)
line="${TREE:-installed}:"
for mode in blocking stream blocking stream; do
  callgrind_control -z "$VPID" > /dev/null
  python3 "$DIR/http_client.py" "$GW" "$mode" "$N"
  callgrind_control -d "$mode" "$VPID" > /dev/null
  last=$(ls -t "$OUT"/cg.*.* | head -1)
  line="$line $mode $(grep -m1 '^summary:' "$last" | awk -v n="$N" '{print int($2 / n)}')"
done
echo "$line (instructions per request, whole process over HTTP)"
