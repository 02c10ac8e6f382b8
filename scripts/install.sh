#!/usr/bin/env bash
# Installs stuffed-mamba on a fresh machine of this kind (Debian, Python 3.11, no GPU).
#   bash scripts/install.sh        the package (enough to train, evaluate and use the data pipeline)
#   bash scripts/install.sh dev    plus the test references (transformers), mamba-ssm's Triton kernels
#                                  for the CPU interpreter, and Debian's Slurm + munge for the Slurm tests
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# CPU torch first: anything that asks for a bare "torch" later then finds it satisfied
# instead of pulling a multi-GB CUDA build.
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu: the CPU build where PyPI's is the CUDA one.
$PY -m pip install -q "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
# jemalloc: `stuffed-mamba` runs under it when present (src/stuffed_mamba/allocator.py); without it
# long segments page-fault through glibc's malloc. Optional: the install goes on without it.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! ldconfig -p 2>/dev/null | grep -q libjemalloc.so.2; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libjemalloc2 >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libjemalloc2 >/dev/null 2>&1; } \
    || echo "install.sh: libjemalloc2 not installed; stuffed-mamba will use the C library's malloc" >&2
fi
if [ "${1:-}" != "dev" ]; then
  $PY -m pip install -q -e .
else
  $PY -m pip install -q -e ".[dev]"
  # mamba-ssm's CUDA extension cannot build here; its Python package (Triton kernels) can,
  # and the tests run those kernels on the CPU under TRITON_INTERPRET=1.
  MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
    $PY -m pip install -q --no-build-isolation "mamba-ssm==2.3.2.post1"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
    fi
  fi
fi
