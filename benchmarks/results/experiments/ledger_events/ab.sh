#!/bin/bash
# The A/B loop of this folder: the tree before in a worktree at /tmp/wt_base (38cda56), the
# change at /tmp/wt_new, each with its extensions built in place (python setup.py build_ext
# --inplace); run from the repository root. Usage: ab.sh SCENARIO LAST [FIRST]: pairs FIRST..LAST
cd /work/main
out=benchmarks/results/experiments/ledger_events
run() { # arm scenario i
  export PYTHONPATH=/tmp/wt_$1/src
  echo "$1 $2 $3 $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
  kvgate bench scenario $2 --quiet --out $out/$2_$1_$3.json > /dev/null 2>&1
}
for i in $(seq ${3:-1} $2); do run base $1 $i; run new $1 $i; done
echo "done $(date -u +%H:%M:%S)"
