#!/bin/bash
# The state-size sweep of section 5 as a Slurm job array: one array task per grid cell
# (model size x training length) of a sweep recipe; each task trains the cell with
# `stuffed-mamba fit`, evaluates position loss (learned_to_forget) and passkey (T_recall),
# and appends one row to {out_dir}/results.jsonl (under a file lock: tasks share it).
#
#   n=$(stuffed-mamba analyze sweep recipes/sweeps/forget_threshold_cpu.yaml --count)
#   sbatch --array=0-$((n-1)) slurm/sweep_forget_threshold.sh [key=value ...]
#   RECIPE=recipes/sweeps/my_sweep.yaml sbatch --array=0-$((n-1)) slurm/sweep_forget_threshold.sh
#   # when all tasks are done (or: sbatch --dependency=afterany:<array job id> --wrap "...")
#   stuffed-mamba analyze scaling runs/sweeps/forget_threshold_cpu
#
# The key=value arguments override the sweep recipe (e.g. out_dir=..., tokens_per_run=...).
# A task whose cell already has a result.json does nothing, so resubmitting the array
# reruns only the cells that failed or never ran. See docs/results.md.
#
#SBATCH --job-name=forget-threshold
#SBATCH --array=0-14
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --time=02:00:00
#SBATCH --open-mode=append
#SBATCH --output=%x-%A_%a.out
set -euo pipefail

# sbatch passes on the submitter's environment; STUFFED_MAMBA_ENV (a venv or conda prefix)
# picks the project's environment explicitly (as in the training scripts).
if [ -n "${STUFFED_MAMBA_ENV:-}" ]; then export PATH="$STUFFED_MAMBA_ENV/bin:$PATH"; fi
if ! command -v stuffed-mamba >/dev/null; then
  echo "stuffed-mamba is not on PATH: activate the project's environment before sbatch, or set STUFFED_MAMBA_ENV" >&2
  exit 2
fi
if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
  echo "not an array task: submit with sbatch --array=0-<cells-1> (see the header)" >&2
  exit 2
fi
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}

echo "$(date -Is) array job ${SLURM_ARRAY_JOB_ID:-?} task ${SLURM_ARRAY_TASK_ID} on $(hostname)"
srun --kill-on-bad-exit=1 stuffed-mamba analyze sweep "${RECIPE:-recipes/sweeps/forget_threshold_cpu.yaml}" \
  --cell "${SLURM_ARRAY_TASK_ID}" "$@"
