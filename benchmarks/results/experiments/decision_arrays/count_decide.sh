#!/bin/bash
# usage: count_decide.sh TREE_SRC N_REPLICAS  -> instructions per decision (N 0 vs 1000)
TREE=$1; N=${2:-256}
PY=$(python3 -c "import sys; print(sys.executable)")
total() { out=$(mktemp); PYTHONHASHSEED=0 PYTHONPATH=$TREE valgrind --tool=callgrind --callgrind-out-file="$out" "$PY" "$(dirname "$0")/decide_loop.py" $N $1 >/dev/null 2>&1; grep -m1 "^summary:" "$out" | awk '{print $2}'; rm -f "$out"; }
a=$(total 0); b=$(total 1000)
echo "$TREE $N: $(( (b - a) / 1000 )) instructions per decision"
