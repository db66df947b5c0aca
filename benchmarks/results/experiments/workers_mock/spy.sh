# usage: spy.sh CONFIG OUTPREFIX : 2 workers, wrk long body for 14 s, py-spy both workers 8 s
set -e
CONFIG=$1; OUT=$2
port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
python3 -m kvgate run -c "$CONFIG" --host 127.0.0.1 --port $port --workers 2 > /dev/null 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/health" && break; sleep 0.2; done
LUA=/tmp/long.lua
python3 "$(dirname "$0")/wrk_lua.py" long "$LUA"
taskset -c 0 wrk -t1 -c32 -d16s -s $LUA "http://127.0.0.1:$port/v1/chat/completions" > /tmp/wrk_spy.txt &
sleep 4
kids=$(pgrep -P $pid | head -2)
for k in $kids; do py-spy record -p $k -d 8 -r 200 -f raw -o ${OUT}_$k.txt --nonblocking > /dev/null 2>&1 & done
wait %2 2>/dev/null || true
sleep 10
kill $pid; wait $pid 2>/dev/null || true
grep Requests /tmp/wrk_spy.txt
