#!/usr/bin/env bash
# Issue 23's miniature, one training: MODE SEED [,optim.initial_state_std=S].
#   MODE: zeros | passed | noise | fitted_noise (recipes/sweeps/initial_state_cpu.yaml, one segment)
#         truncated (recipes/sweeps/bptt_truncated_cpu.yaml: 8 segments, TBPTT), evaluated the same way
# Both rising N64 cells, one after the other; /usr/bin/time's line goes to logs/times.log.
# The runs of docs/results.md, "Initial states", from the repository's root, one or two at a time:
#   for job in "zeros 0" "fitted_noise 0" "passed 0" "truncated 0" "zeros 1" "fitted_noise 1" "passed 1" \
#       "truncated 1" "noise 0 ,optim.initial_state_std=0.1" "noise 1 ,optim.initial_state_std=0.1"; do
#     bash docs/results/initial_state_cpu/run.sh $job; done
set -u
mode=$1 seed=$2
shift 2
export OMP_NUM_THREADS=1
if [ "$mode" = truncated ]; then
  recipe=recipes/sweeps/bptt_truncated_cpu.yaml
  extra=("extra_overrides=[run.seed=$seed]" eval.effrem.enabled=true "eval.effrem.multiples=[1,8,64]"
         eval.effrem.samples=16 eval.effrem.min_doc_tokens=1024 eval.effrem.prefill_chunk=2048)
else
  recipe=recipes/sweeps/initial_state_cpu.yaml
  extra=("extra_overrides=[optim.initial_state=$mode,run.seed=$seed${1:-}]")
fi
out=runs/sweeps/initial_state/${mode}_seed$seed
mkdir -p logs
/usr/bin/time -f "$mode seed$seed wall %e s cpu %U+%S s maxrss %M KB" -a -o logs/times.log \
  stuffed-mamba analyze sweep "$recipe" "${extra[@]}" "out_dir=$out" --cell N64_T64,N64_T128 --no-analyze \
  > "logs/${mode}_seed$seed.log" 2>&1
