#!/bin/bash
# usage: pairs.sh PAIRS DURATION_S OUT.txt [CONFIG] [short|long]: 1 worker (pinned to CPU 1,
# wrk on CPU 0) and 2 workers (unpinned, wrk on CPU 0) back to back, PAIRS times, order
# alternating; wrk -t1 -c32 against the gateway's in-process zero-latency mock (CONFIG, default
# mock.yaml). Body: "short" = the overhead scenario's "hi"; "long" = its long-prompt case
# (~8k tokens: a 28 KB system prompt and a user turn numbered per request). Prints req/s per
# run and the gateway's CPU (all its processes) per request.
set -e
PAIRS=${1:-6}; DUR=${2:-10}; OUT=${3:?an output file}
DIR=$(cd "$(dirname "$0")" && pwd)
CONFIG=${4:-$DIR/mock.yaml}; KIND=${5:-short}
LUA=$(mktemp --suffix .lua)
python3 "$DIR/wrk_lua.py" "$KIND" "$LUA"
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
cpu_seconds() {  # user + system CPU of the gateway's process tree so far (the benchmark's own)
  python3 -c "from kvgate.bench.rawhttp import cpu_s; print(cpu_s($1))"
}
run() {  # run WORKERS
  local workers=$1 port pid pin=""
  port=$(free_port)
  [ "$workers" = 1 ] && pin="taskset -c 1"
  $pin python3 -m kvgate run -c "$CONFIG" --host 127.0.0.1 --port "$port" --workers "$workers" > /dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/health" && break; sleep 0.2; done
  taskset -c 0 wrk -t1 -c32 -d2s -s "$LUA" "http://127.0.0.1:$port/v1/chat/completions" > /dev/null  # warm
  local before after rps out bad
  before=$(cpu_seconds $pid)
  out=$(taskset -c 0 wrk -t1 -c32 -d"${DUR}s" -s "$LUA" "http://127.0.0.1:$port/v1/chat/completions")
  after=$(cpu_seconds $pid)
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  bad=$(echo "$out" | awk '/Non-2xx/ {n=$NF} /Socket errors/ {n="socket:" $0} END {print n+0 == n ? n+0 : n}')
  kill $pid; wait $pid 2>/dev/null || true
  python3 -c "r=$rps; c=$after-$before; print(f'workers=$workers req_s={r:.0f} gateway_cores={c/$DUR:.2f} cpu_us_per_req={c/(r*$DUR)*1e6:.1f} errors=$bad')"
}
{
  echo "# $(date -u +%FT%TZ) $(git -C "$DIR" rev-parse --short HEAD) pairs=$PAIRS duration_s=$DUR config=$(basename "$CONFIG") body=$KIND"
  for i in $(seq "$PAIRS"); do
    if [ $((i % 2)) = 1 ]; then run 1; run 2; else run 2; run 1; fi
  done
} | tee "$OUT" >/dev/null; cat "$OUT"
rm -f "$LUA"
