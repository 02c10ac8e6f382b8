#!/usr/bin/env bash
# Installs stuffed-mamba on a fresh machine of this kind (Debian, Python 3.11, no GPU).
#   bash scripts/install.sh        the package (enough to train, evaluate and use the data pipeline)
#   bash scripts/install.sh dev    plus the test references (transformers), mamba-ssm's Triton kernels
#                                  for the CPU interpreter, and Debian's Slurm + munge for the Slurm tests
#   bash scripts/install.sh cuda   on a CUDA machine (a GPU node, or a login node with the same CUDA
#                                  toolkit): torch's CUDA build, the package, then causal-conv1d and
#                                  mamba-ssm built against that torch (what `model.backend: mamba_ssm` needs)
#   Every mode installs the tested versions in constraints.txt (the lock; scripts/lock.sh refreshes it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOCK=(-c constraints.txt)

if [ "${1:-}" = "cuda" ]; then
  # Order matters: mamba-ssm and causal-conv1d compile CUDA code against the installed torch, so
  # torch comes first and they are built with --no-build-isolation (an isolated build has no
  # torch: what `pip install mamba-ssm` alone, or an extra of this package, runs into).
  # torch 2.13.0 from PyPI is its CUDA build on Linux x86_64; for another CUDA version point pip at
  # that build's index (PIP_INDEX_URL) before running this.
  # The CUDA build brings its own nvidia-*, cuda-* and triton releases, matched to its CUDA version:
  # those lines of the lock (taken on a CPU machine) are left to it.
  grep -v -E '^(nvidia-|cuda-|triton==)' constraints.txt >"${TMPDIR:-/tmp}/stuffed-mamba-cuda-constraints.txt"
  LOCK=(-c "${TMPDIR:-/tmp}/stuffed-mamba-cuda-constraints.txt")
  $PY -m pip install -q "torch==2.13.0" "${LOCK[@]}"
  $PY -c "import torch; assert torch.version.cuda, 'this torch is a CPU build: install a CUDA build of torch 2.13.0 first'"
  $PY -m pip install -q -e . "${LOCK[@]}"
  $PY -m pip install -q packaging ninja wheel "setuptools>=61" "${LOCK[@]}"
  if ! command -v nvcc >/dev/null; then
    echo "install.sh cuda: no nvcc on PATH; unless a prebuilt wheel matches this torch/CUDA/Python, the" \
         "builds below need the CUDA toolkit of torch's CUDA $($PY -c 'import torch; print(torch.version.cuda)')" \
         "(e.g. module load cuda)" >&2
  fi
  # causal-conv1d before mamba-ssm (mamba-ssm's optional conv); MAX_JOBS bounds nvcc's memory.
  MAX_JOBS=${MAX_JOBS:-4} $PY -m pip install -q --no-build-isolation "causal-conv1d==1.7.0" "${LOCK[@]}"
  MAX_JOBS=${MAX_JOBS:-4} $PY -m pip install -q --no-build-isolation "mamba-ssm==2.3.2.post1" "${LOCK[@]}"
  $PY -c "from stuffed_mamba.ops import get_backend; get_backend('mamba_ssm'); print('mamba_ssm backend: kernels import')"
  exit 0
fi

# CPU torch first: anything that asks for a bare "torch" later then finds it satisfied
# instead of pulling a multi-GB CUDA build.
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu: the CPU build where PyPI's is the CUDA one.
$PY -m pip install -q "torch==2.13.0" "${LOCK[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
# jemalloc: `stuffed-mamba` runs under it when present (src/stuffed_mamba/allocator.py); without it
# long segments page-fault through glibc's malloc. Optional: the install goes on without it.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! ldconfig -p 2>/dev/null | grep -q libjemalloc.so.2; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libjemalloc2 >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libjemalloc2 >/dev/null 2>&1; } \
    || echo "install.sh: libjemalloc2 not installed; stuffed-mamba will use the C library's malloc" >&2
fi
if [ "${1:-}" != "dev" ]; then
  $PY -m pip install -q -e . "${LOCK[@]}"
else
  $PY -m pip install -q -e ".[dev]" "${LOCK[@]}"
  # mamba-ssm's CUDA extension cannot build here; its Python package (Triton kernels) can,
  # and the tests run those kernels on the CPU under TRITON_INTERPRET=1.
  MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
    $PY -m pip install -q --no-build-isolation "mamba-ssm==2.3.2.post1" "${LOCK[@]}"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
    fi
  fi
fi
