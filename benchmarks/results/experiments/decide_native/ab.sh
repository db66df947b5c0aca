#!/bin/bash
# The A/B loop of this folder: the tree before in a worktree at /tmp/wt (f9cbd02), the change
# at /tmp/wt3 (b345841), each with its extensions built in place (python setup.py build_ext
# --inplace); run from the repository root.
cd /work/main
run() { # arm what i
  if [ $1 = before ]; then export PYTHONPATH=/tmp/wt/src; else export PYTHONPATH=/tmp/wt3/src; fi
  echo "$1 $3 $2 $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"
  kvgate bench scenario $2 --quiet --out benchmarks/results/experiments/decide_native/$2_$1_$3.json > /dev/null 2>&1
}
for i in 1 2; do run before scale $i; run after scale $i; done
for i in 1 2; do run before overhead $i; run after overhead $i; done
echo "done $(date -u +%H:%M:%S)"
