"""Every script in slurm/: parses (`bash -n`), is accepted by Slurm (`sbatch --test-only`),
and keeps the contract of DESIGN section 8 (resources + environment + one srun line)."""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((REPO / "slurm").glob("*.sh"))
TRAIN_SCRIPTS = [s for s in SCRIPTS if s.name.startswith("train_")]
SRUN = re.compile(r'^srun( --[\w-]+=\S+)* stuffed-mamba fit "\$\{RECIPE:-(recipes/[\w.]+\.yaml)\}" "\$@"$')


def sbatch_options(script: Path) -> dict[str, str]:
    opts = {}
    for line in script.read_text().splitlines():
        m = re.match(r"#SBATCH\s+--([\w-]+)(?:=(\S+))?\s*$", line)
        if m:
            opts[m.group(1)] = m.group(2) or ""
    return opts


def test_there_are_scripts():
    assert {s.name for s in TRAIN_SCRIPTS} >= {"train_130m_256k.sh", "train_370m_256k.sh", "train_780m_256k.sh"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.name)
def test_bash_n(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.slurm
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.name)
def test_sbatch_test_only(script, gpu_cluster_shape, tmp_path):
    """Unmodified, on four nodes shaped like the GPU nodes the scripts are written for."""
    r = gpu_cluster_shape._run(["sbatch", "--test-only", str(script)], check=False, cwd=tmp_path)
    assert r.returncode == 0 and "to start at" in r.stderr, r.stderr


@pytest.mark.parametrize("script", TRAIN_SCRIPTS, ids=lambda s: s.name)
def test_train_script_contract(script):
    opts = sbatch_options(script)
    assert opts.get("signal") == "USR1@90"
    assert "requeue" in opts and opts.get("open-mode") == "append"
    assert opts["ntasks-per-node"] == opts["gpus-per-node"], "one task per GPU: Lightning takes ranks from Slurm"
    lines = [ln.strip() for ln in script.read_text().splitlines()]
    sruns = [ln for ln in lines if ln.startswith("srun")]
    assert len(sruns) == 1 and SRUN.match(sruns[0]), sruns
    default_recipe = SRUN.match(sruns[0]).group(2)
    assert default_recipe == f"recipes/mamba2_{script.stem.removeprefix('train_')}.yaml"
    # the environment logic is the package's (training/slurm_env.py, tested in Python): the script
    # holds resources, the project's environment, the USR1 trap and the srun line
    assert "MASTER_ADDR" not in script.read_text()
    code = [ln for ln in lines if ln and not ln.startswith("#")]
    assert len(code) <= 5, code


@pytest.mark.parametrize("script", TRAIN_SCRIPTS, ids=lambda s: s.name)
def test_train_script_resources_match_its_recipe(script):
    """Lightning refuses a run whose Slurm tasks differ from trainer.num_nodes x trainer.devices."""
    from stuffed_mamba.training.config import load_recipe

    srun = next(ln for ln in script.read_text().splitlines() if ln.startswith("srun"))
    recipe = REPO / SRUN.match(srun).group(2)
    assert recipe.exists(), f"{script.name} defaults to {recipe.relative_to(REPO)}, which does not exist"
    trainer = load_recipe(recipe).trainer
    opts = sbatch_options(script)
    assert trainer.num_nodes == int(opts["nodes"])
    # "auto" takes every GPU Slurm shows the task's node: --gpus-per-node, equal to --ntasks-per-node
    assert trainer.devices in (int(opts["ntasks-per-node"]), "auto")
