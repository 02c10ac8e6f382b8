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
# INSTALL_DRY_RUN=1 prints the install commands instead of running them (tests/test_install_script.py)
run() { if [ -n "${INSTALL_DRY_RUN:-}" ]; then echo "+ $*"; else "$@"; fi; }
case "${1:-base}" in base | dev | cuda) ;; *) echo "install.sh: unknown mode '$1': base (default), dev or cuda" >&2; exit 2 ;; esac

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
  run $PY -m pip install -q "torch==2.13.0" "${LOCK[@]}"
  run $PY -c "import torch; assert torch.version.cuda, 'this torch is a CPU build: install a CUDA build of torch 2.13.0 first'"
  run $PY -m pip install -q -e . "${LOCK[@]}"
  run $PY -m pip install -q packaging ninja wheel "setuptools>=61" "${LOCK[@]}"
  if ! command -v nvcc >/dev/null; then
    echo "install.sh cuda: no nvcc on PATH; unless a prebuilt wheel matches this torch/CUDA/Python, the" \
         "builds below need the CUDA toolkit of torch's CUDA $($PY -c 'import torch; print(torch.version.cuda)')" \
         "(e.g. module load cuda)" >&2
  fi
  # causal-conv1d before mamba-ssm (mamba-ssm's optional conv); MAX_JOBS bounds nvcc's memory.
  run env MAX_JOBS=${MAX_JOBS:-4} $PY -m pip install -q --no-build-isolation "causal-conv1d==1.7.0" "${LOCK[@]}"
  run env MAX_JOBS=${MAX_JOBS:-4} $PY -m pip install -q --no-build-isolation "mamba-ssm==2.3.2.post1" "${LOCK[@]}"
  run $PY -c "from stuffed_mamba.ops import get_backend; get_backend('mamba_ssm'); print('mamba_ssm backend: kernels import')"
  exit 0
fi

# torch first: anything that asks for a bare "torch" later then finds it satisfied. The build follows
# the machine: the CPU build where no NVIDIA GPU is visible (PyPI's torch 2.13.0 is the multi-GB CUDA
# build on Linux x86-64), the CUDA build where one is. TORCH_BUILD=cpu|cuda overrides the detection;
# TORCH_INDEX_URL=URL takes torch from that index whatever the build.
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
build=${TORCH_BUILD:-}
if [ -z "$build" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then build=cuda; else build=cpu; fi
fi
case "$build" in cpu | cuda) ;; *) echo "install.sh: TORCH_BUILD=$build: use cpu or cuda" >&2; exit 2 ;; esac
index=${TORCH_INDEX_URL:-}
if [ -z "$index" ] && [ "$build" = cpu ]; then
  if $PY -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/torch/', timeout=5)" \
    "$TORCH_CPU_INDEX" >/dev/null 2>&1; then
    index=$TORCH_CPU_INDEX
  else
    echo "install.sh: PyTorch's CPU index ($TORCH_CPU_INDEX) cannot be reached; torch 2.13.0 comes from PyPI" \
      "(a CPU wheel where pip's configuration provides one, else PyPI's build)" >&2
  fi
fi
echo "install.sh: torch 2.13.0, $build build${index:+, from $index}"
run $PY -m pip install -q "torch==2.13.0" "${LOCK[@]}" ${index:+--index-url "$index"}
# jemalloc: `stuffed-mamba` runs under it when present (src/stuffed_mamba/allocator.py); without it
# long segments page-fault through glibc's malloc. Optional: the install goes on without it.
if [ -z "${INSTALL_DRY_RUN:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! ldconfig -p 2>/dev/null | grep -q libjemalloc.so.2; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libjemalloc2 >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libjemalloc2 >/dev/null 2>&1; } \
    || echo "install.sh: libjemalloc2 not installed; stuffed-mamba will use the C library's malloc" >&2
fi
if [ "${1:-}" != "dev" ]; then
  run $PY -m pip install -q -e . "${LOCK[@]}"
else
  run $PY -m pip install -q -e ".[dev]" "${LOCK[@]}"
  # mamba-ssm's CUDA extension cannot build here; its Python package (Triton kernels) can,
  # and the tests run those kernels on the CPU under TRITON_INTERPRET=1.
  MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
    run $PY -m pip install -q --no-build-isolation "mamba-ssm==2.3.2.post1" "${LOCK[@]}"
  if [ -z "${INSTALL_DRY_RUN:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v chromium >/dev/null; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge chromium >/dev/null
    fi
  fi
fi
