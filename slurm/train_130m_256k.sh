#!/bin/bash
# Continue pre-training Mamba-2 130M to 256K-token contexts: recipes/mamba2_130m_256k.yaml.
#
#   sbatch slurm/train_130m_256k.sh [key=value ...]             from the repository root
#   RECIPE=recipes/my.yaml sbatch slurm/train_130m_256k.sh      another recipe, same resources
#   sbatch --nodes=2 slurm/train_130m_256k.sh trainer.num_nodes=2   two nodes: twice the tokens per step
#
# Resources and environment only: every hyper-parameter lives in the recipe. --nodes and
# --ntasks-per-node must equal the recipe's trainer.num_nodes and trainer.devices (Lightning
# refuses otherwise): change both together. The recipe's 1 node x 8 GPUs make its ~0.5M
# tokens per optimiser step (GPUs x data.batch_size x data.train_length).
# 90-120 s before the time limit (or on `scancel --signal=USR1`) the ranks save
# {run.dir}/checkpoints/last.ckpt at an episode boundary and requeue the job, which resumes
# from it (run.resume=auto). See docs/slurm.md.
#
#SBATCH --job-name=mamba2-130m-256k
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@90
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -euo pipefail

# sbatch passes on the submitter's environment. The project's environment is the one whose
# bin/ holds `stuffed-mamba`; its shebang names that environment's python, so whatever
# `python` comes first on PATH does not matter. STUFFED_MAMBA_ENV (a venv or conda prefix)
# picks the environment explicitly.
if [ -n "${STUFFED_MAMBA_ENV:-}" ]; then export PATH="$STUFFED_MAMBA_ENV/bin:$PATH"; fi
if ! command -v stuffed-mamba >/dev/null; then
  echo "stuffed-mamba is not on PATH: activate the project's environment before sbatch, or set STUFFED_MAMBA_ENV" >&2
  exit 2
fi

# Lightning would rendezvous at the first node's *name*, which need not resolve on the
# compute nodes (DDP then retries for 30 minutes): take its address from Slurm instead.
# The port follows the job id, so a requeued job keeps it and a neighbour's differs.
first_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_ADDR=$(scontrol show node "$first_node" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')
export MASTER_ADDR
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
# srun of Slurm 22.05-23.02 does not inherit --cpus-per-task from sbatch
export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}
# a rank that dies or hangs in a collective takes the job down instead of idling it
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}

# USR1 is for the srun tasks (they checkpoint and requeue); `scancel --full` also sends it
# here, and an untrapped USR1 would kill this shell and with it the job.
trap 'echo "batch shell: got USR1, the training ranks checkpoint and requeue"' USR1
echo "$(date -Is) job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST}, rendezvous ${MASTER_ADDR}:${MASTER_PORT}"

srun --kill-on-bad-exit=1 stuffed-mamba fit "${RECIPE:-recipes/mamba2_130m_256k.yaml}" "$@"
