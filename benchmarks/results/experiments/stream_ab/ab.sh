#!/bin/bash
# A/B: gateway CPU per request under wrk -c32, blocking and streamed; $1 = PYTHONPATH for the gateway ("" = main)
DIR=$(cd "$(dirname "$0")" && pwd)
cd "$DIR/../../../.."
UP=19201; GW=19202
taskset -c 0 python -m kvgate.bench.zero_upstream --port $UP > /dev/null 2>&1 &
UPPID=$!
sed "s/19101/$UP/" $DIR/overhead.yaml > $DIR/overhead_ab.yaml
PYTHONPATH=$1 taskset -c 1 python -m kvgate run -c $DIR/overhead_ab.yaml --host 127.0.0.1 --port $GW --workers 1 > /dev/null 2>&1 &
GWPID=$!
sleep 4
out=""
for mode in blocking stream; do
  taskset -c 0 wrk -t1 -c32 -d2s -s $DIR/$mode.lua http://127.0.0.1:$GW/v1/chat/completions > /dev/null
  C0=$(awk '{print $14+$15}' /proc/$GWPID/stat)
  taskset -c 0 wrk -t1 -c32 -d6s -s $DIR/$mode.lua http://127.0.0.1:$GW/v1/chat/completions > $DIR/wrk_ab_$mode.txt
  C1=$(awk '{print $14+$15}' /proc/$GWPID/stat)
  N=$(grep "requests in" $DIR/wrk_ab_$mode.txt | awk '{print $1}')
  RPS=$(grep Requests/sec $DIR/wrk_ab_$mode.txt | awk '{print $2}')
  NON=$(grep -c "Non-2xx" $DIR/wrk_ab_$mode.txt)
  out="$out $mode: $(python3 -c "print(round(($C1-$C0)*10000/$N,1))")us/req ${RPS}rps non2xx=$NON"
done
echo "${1:-main}:$out"
kill $GWPID $UPPID; wait 2>/dev/null
