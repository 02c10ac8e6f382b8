"""Session-scoped private Slurm cluster (see cluster.py); tests that use it are marked `slurm`."""

import os
import sys

import pytest

from tests.slurm.cluster import SlurmCluster, SlurmUnavailable, ensure_installed


def _cluster_or_skip(tmp_path_factory, name: str, **kw) -> SlurmCluster:
    if not sys.platform.startswith("linux"):
        pytest.skip("the private Slurm cluster needs Linux")
    if os.geteuid() != 0:
        pytest.skip("the private Slurm cluster needs root (slurmd runs jobs as their submitting user)")
    try:
        ensure_installed()
    except SlurmUnavailable as e:
        pytest.skip(str(e))
    # a failure to start from here on is a real failure, not a skip
    return SlurmCluster(tmp_path_factory.mktemp(name), **kw).start()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """Two fake nodes n1, n2 of this host's size, 8 fake GPUs each, partition `debug`."""
    cluster = _cluster_or_skip(tmp_path_factory, "slurm")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def gpu_cluster_shape(tmp_path_factory):
    """Four nodes declared like the GPU nodes the scripts are written for (8 GPUs, 128 CPUs,
    1 TB each), on this one host: for `sbatch --test-only` of the unmodified scripts only."""
    cluster = _cluster_or_skip(
        tmp_path_factory,
        "slurm_gpu",
        nodes=("g1", "g2", "g3", "g4"),
        node_size="CPUs=128 Boards=1 SocketsPerBoard=2 CoresPerSocket=64 ThreadsPerCore=1 RealMemory=1000000",
        partition="gpu",
    )
    yield cluster
    cluster.stop()
