#!/bin/bash
# Continue pre-training Mamba-2 130M to 256K-token contexts: recipes/mamba2_130m_256k.yaml.
#
#   sbatch slurm/train_130m_256k.sh [key=value ...]             from the repository root or anywhere
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
# sbatch passes on the submitter's environment: STUFFED_MAMBA_ENV (a venv or conda prefix) picks the project's.
if [ -n "${STUFFED_MAMBA_ENV:-}" ]; then export PATH="$STUFFED_MAMBA_ENV/bin:$PATH"; fi
command -v stuffed-mamba >/dev/null || { echo "stuffed-mamba is not on PATH: activate the project's environment before sbatch, or set STUFFED_MAMBA_ENV" >&2; exit 2; }
# USR1 is for the training ranks (checkpoint, requeue); `scancel --full` also sends it to this shell
trap 'echo "batch shell: got USR1, the training ranks checkpoint and requeue"' USR1
# each rank derives its rendezvous address, port, threads and NCCL settings (training/slurm_env.py)
srun --kill-on-bad-exit=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" stuffed-mamba fit "${RECIPE:-recipes/mamba2_130m_256k.yaml}" "$@"
