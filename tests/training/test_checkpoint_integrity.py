"""Checkpoints prove they are whole (issue 19, section 1 and acceptance 1).

A tiny run of `fit` is written once per session; its `last.ckpt` is damaged in copies (zeroed,
bit-flipped, cut and removed regions at the start, middle and end), checked directly with
`verify_checkpoint` for the whole grid and through the CLI (`fit run.resume=`, `eval`, `export`) for
a representative subset: one line, no traceback, exit 2, nothing written. `run.resume=auto` falls
back to the newest intact checkpoint, says so, and refuses when none is intact. Checkpoint folders
(DeepSpeed's layout) lose, cut or swap a file; the real DeepSpeed folders of ZeRO stages 1, 2 and 3
are in the slow part at the end. References are independent: Python's `zipfile` reads the
manifest, `xxhash` recomputes the digest, `torch.load` shows what an unverified read would do.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import xxhash

from stuffed_mamba.cli import main
from stuffed_mamba.model.integrity import CheckpointDamaged, has_manifest, manifest_step, seal_folder, verify_checkpoint
from stuffed_mamba.training import checkpoint as ck
from stuffed_mamba.training.config import ConfigError
from stuffed_mamba.training.fit import fit
from tests.conftest import EXTENDED
from tests.training.common import TINY_MODEL, load_ckpt, tiny_recipe
from tests.training.fakes import FakeEpisodeLoader

S = 3
STEPS = 4 * S


def fake(rank, world_size):
    return FakeEpisodeLoader(batch_size=2, segments=S, train_length=16, rank=rank, world_size=world_size)


def run(run_dir, *overrides, log=lambda s: None):
    every = [f"run.checkpoint_every_n_steps={S}", f"run.keep_every_n_steps={S}"]
    return fit(tiny_recipe(run_dir, *every, *overrides), loader_factory=fake, log=log)


@pytest.fixture(scope="session")
def sealed_run(tmp_path_factory) -> Path:
    """A run of STEPS optimiser steps: last.ckpt and step-{3,6,9,12}.ckpt."""
    run_dir = tmp_path_factory.mktemp("sealed_run")
    run(run_dir, f"trainer.max_steps={STEPS}")
    return run_dir


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def tree_hash(root: Path) -> str:
    """Every path, size and byte under root (what 'nothing written' compares)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------------------ the writer


def test_every_checkpoint_written_carries_a_manifest_that_matches_its_bytes(sealed_run):
    ckpts = sealed_run / "checkpoints"
    names = sorted(os.listdir(ckpts))
    assert names == [ck.LAST] + [f"step-{s:07d}.ckpt" for s in range(S, STEPS + 1, S)]
    for name in names:
        p = ckpts / name
        raw = p.read_bytes()
        comment = zipfile.ZipFile(p).comment  # Python's own zip reader finds the manifest
        manifest = json.loads(comment)
        covered = len(raw) - len(comment) - 2  # everything before the comment's length field
        assert manifest["bytes"] == covered
        assert manifest["digest"] == "xxh3_128:" + xxhash.xxh3_128(raw[:covered]).hexdigest()
        assert manifest["step"] == load_ckpt(p)["global_step"] == manifest_step(p)
        assert zipfile.ZipFile(p).testzip() is None
        verify_checkpoint(p)
    assert manifest_step(ckpts / ck.LAST) == STEPS


# ------------------------------------------------------------------------------ the damage grid

WHERE = ("start", "middle", "end")


def damage(raw: bytes, kind: str, where: str) -> bytes:
    n = len(raw)
    at = {"start": 0, "middle": n // 2, "end": n - 5000}[where]
    if kind == "zeroed":  # 5,000 bytes, as in the issue
        return raw[:at] + bytes(5000) + raw[at + 5000 :]
    if kind == "flipped":  # one bit
        at = {"start": 100, "middle": n // 2, "end": n - 1}[where]
        return raw[:at] + bytes([raw[at] ^ 0x10]) + raw[at + 1 :]
    if kind == "cut":  # the file ends early
        return raw[: {"start": 1000, "middle": n // 2, "end": n - 1}[where]]
    if kind == "removed":  # 5,000 bytes taken out
        return raw[:at] + raw[at + 5000 :]
    raise ValueError(kind)


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("kind", ["zeroed", "flipped", "cut", "removed"])
def test_a_damaged_file_is_one_line_naming_it(sealed_run, tmp_path, kind, where):
    raw = (sealed_run / "checkpoints" / ck.LAST).read_bytes()
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(damage(raw, kind, where))
    assert bad.read_bytes() != raw
    with pytest.raises(CheckpointDamaged) as e:
        verify_checkpoint(bad)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: damaged checkpoint (") and "\n" not in msg


def test_zeros_in_a_tensor_load_silently_without_the_check(sealed_run, tmp_path):
    """The issue's case: torch.load takes the damaged file; the verification does not."""
    raw = (sealed_run / "checkpoints" / ck.LAST).read_bytes()
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(damage(raw, "zeroed", "middle"))
    torch.load(bad, map_location="cpu", weights_only=False)  # no error: the zeros would be trained on
    with pytest.raises(CheckpointDamaged, match=r"fails its CRC check"):
        verify_checkpoint(bad)


def strip_manifest(sealed: bytes) -> bytes:
    """The same checkpoint as an earlier version wrote it: no zip comment."""
    n = len(zipfile.ZipFile(io.BytesIO(sealed)).comment)
    return sealed[: len(sealed) - n - 2] + b"\0\0"


def test_a_checkpoint_of_an_earlier_version_loads_with_its_crcs_checked(sealed_run, tmp_path):
    legacy = tmp_path / "legacy.ckpt"
    legacy.write_bytes(strip_manifest((sealed_run / "checkpoints" / ck.LAST).read_bytes()))
    assert zipfile.ZipFile(legacy).comment == b"" and not has_manifest(legacy)
    verify_checkpoint(legacy)
    assert load_ckpt(legacy)["global_step"] == STEPS
    assert ck.resolve_resume(str(legacy), tmp_path) == str(legacy)
    legacy.write_bytes(damage(legacy.read_bytes(), "zeroed", "middle"))
    with pytest.raises(CheckpointDamaged, match=r"legacy.ckpt: damaged checkpoint \(member .* fails its CRC check\)"):
        verify_checkpoint(legacy)


# ------------------------------------------------------------------------------ the CLI, nothing written

FIT = [
    "fit",
    "recipes/tiny_cpu.yaml",
    *(f"model.{k}={v}" for k, v in TINY_MODEL.items() if k != "vocab_size"),
    "data.tokenizer=bytes",
    "probes.enabled=false",
    "trainer.enable_progress_bar=false",
]


@pytest.mark.parametrize(("kind", "where"), [("zeroed", "middle"), ("flipped", "start"), ("cut", "end")])
def test_fit_eval_and_export_refuse_a_damaged_file_in_one_line_and_write_nothing(
    sealed_run, tmp_path, capsys, kind, where
):
    run_dir = copy_run(sealed_run, tmp_path / "run")
    bad = run_dir / "checkpoints" / ck.LAST
    bad.write_bytes(damage(bad.read_bytes(), kind, where))
    before = tree_hash(run_dir)
    out = tmp_path / "out"

    assert main([*FIT, f"run.dir={run_dir}", f"run.resume={bad}", "trainer.max_steps=24"]) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"stuffed-mamba fit: error: run.resume: {bad}: damaged checkpoint (")

    assert main(["eval", "states", "--checkpoint", str(bad), "--out", str(out), "--no-progress"]) == 2
    assert f"{bad}: damaged checkpoint (" in one_line_error(capsys)

    assert main(["export", str(bad), str(out)]) == 2
    assert f"{bad}: damaged checkpoint (" in one_line_error(capsys)

    assert tree_hash(run_dir) == before and not out.exists()


# ------------------------------------------------------------------------------ run.resume=auto


def test_resume_auto_falls_back_to_the_newest_intact_checkpoint_and_says_so(sealed_run, tmp_path):
    run_dir = copy_run(sealed_run, tmp_path / "run")
    ckpts = run_dir / "checkpoints"
    for name in (ck.LAST, f"step-{STEPS:07d}.ckpt"):  # the two copies of step 12
        (ckpts / name).write_bytes(damage((ckpts / name).read_bytes(), "zeroed", "middle"))
    lines: list[str] = []
    result = run(run_dir, "run.resume=auto", f"trainer.max_steps={STEPS + S}", log=lines.append)
    said = [line for line in lines if line.startswith("run.resume=auto:")]
    intact = ckpts / f"step-{STEPS - S:07d}.ckpt"
    assert said == [
        f"run.resume=auto: {ckpts / ck.LAST}: damaged checkpoint ("
        + said[0].split("damaged checkpoint (", 1)[1].split("; resuming")[0]
        + f"; resuming from {intact} at step {STEPS - S}: {S} optimiser step(s) lost"
    ]
    assert "and 1 more damaged: step-0000012.ckpt" in said[0]
    assert result.global_step == STEPS + S
    verify_checkpoint(ckpts / ck.LAST)  # the next save replaced the damaged one with a sealed one

    # the same end as a run never damaged: it continued from step 9 exactly
    ref = run(tmp_path / "ref", f"trainer.max_steps={STEPS + S}")
    a, b = load_ckpt(ckpts / ck.LAST), load_ckpt(Path(ref.checkpoint))
    assert a["global_step"] == b["global_step"]
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


def test_resume_auto_refuses_to_start_over_when_no_checkpoint_is_intact(sealed_run, tmp_path):
    run_dir = copy_run(sealed_run, tmp_path / "run")
    for p in (run_dir / "checkpoints").iterdir():
        p.write_bytes(damage(p.read_bytes(), "cut", "middle"))
    before = tree_hash(run_dir)
    with pytest.raises(ConfigError) as e:
        run(run_dir, "run.resume=auto", f"trainer.max_steps={STEPS + S}")
    msg = str(e.value)
    assert msg.startswith(f"run.resume=auto: no intact checkpoint in {run_dir / 'checkpoints'}: ") and "\n" not in msg
    assert "(and 4 more damaged" in msg and "run.resume=null run.overwrite=true" in msg
    assert tree_hash(run_dir) == before


def test_a_sealed_tmp_file_is_the_newest_complete_checkpoint(sealed_run, tmp_path):
    """Killed between the seal and the rename: `last.ckpt.tmp` is whole and newer than last.ckpt;
    an unsealed one (killed while Lightning wrote it) is not a checkpoint."""
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    last, tmp = ckpts / ck.LAST, ckpts / (ck.LAST + ".tmp")
    shutil.copy(sealed_run / "checkpoints" / f"step-{STEPS - S:07d}.ckpt", last)
    shutil.copy(sealed_run / "checkpoints" / ck.LAST, tmp)
    assert ck.resolve_resume("auto", tmp_path) == str(tmp)
    ck._settle(last)
    assert os.listdir(ckpts) == [ck.LAST] and manifest_step(last) == STEPS

    tmp.write_bytes(strip_manifest(last.read_bytes()))
    assert ck.resolve_resume("auto", tmp_path) == str(last)
    ck._settle(last)
    assert os.listdir(ckpts) == [ck.LAST]


# ------------------------------------------------------------------------------ folders


def make_folder(path: Path, step: int, seed: int = 0) -> Path:
    """A checkpoint folder in DeepSpeed's layout (torch files per rank, `latest`), sealed as
    `save_atomically` seals one."""
    g = torch.Generator().manual_seed(seed)
    (path / "checkpoint").mkdir(parents=True)
    torch.save(
        {"global_step": step, "w": torch.randn(64, 64, generator=g)}, path / "checkpoint/mp_rank_00_model_states.pt"
    )
    for r in range(2):
        torch.save(
            {"m": torch.randn(4096, generator=g)}, path / f"checkpoint/zero_pp_rank_{r}_mp_rank_00_optim_states.pt"
        )
    (path / "latest").write_text("checkpoint")
    seal_folder(path, step)
    return path


SHARD0 = "checkpoint/zero_pp_rank_0_mp_rank_00_optim_states.pt"


def folder_damages(folder: Path, other: Path) -> dict:
    def missing():
        (folder / SHARD0).unlink()

    def truncated():
        (folder / SHARD0).write_bytes((folder / SHARD0).read_bytes()[:-100])

    def foreign():  # the same file of another checkpoint: same name, same size
        shutil.copy(other / SHARD0, folder / SHARD0)

    def extra():
        shutil.copy(other / SHARD0, folder / "checkpoint/zero_pp_rank_2_mp_rank_00_optim_states.pt")

    def zeroed():
        raw = (folder / SHARD0).read_bytes()
        (folder / SHARD0).write_bytes(raw[:1000] + bytes(500) + raw[1500:])

    def manifest():
        (folder / ck.COMPLETE).write_text("{}")

    return dict(missing=missing, truncated=truncated, foreign=foreign, extra=extra, zeroed=zeroed, manifest=manifest)


FOLDER_MESSAGES = {
    "missing": f"{SHARD0}: damaged checkpoint (missing: the folder's manifest lists it)",
    "truncated": f"{SHARD0}: damaged checkpoint (truncated: ",
    "foreign": f"{SHARD0}: damaged checkpoint (its bytes differ from the digest in the folder's manifest",
    "extra": "checkpoint/zero_pp_rank_2_mp_rank_00_optim_states.pt: damaged checkpoint (not in the folder's manifest",
    "zeroed": f"{SHARD0}: damaged checkpoint (its bytes differ from the digest in the folder's manifest",
    "manifest": f"{ck.COMPLETE}: damaged checkpoint (the folder's manifest is unreadable)",
}


@pytest.mark.parametrize("how", list(FOLDER_MESSAGES))
def test_a_damaged_folder_is_one_line_naming_the_file(tmp_path, how):
    folder, other = make_folder(tmp_path / "a", 6), make_folder(tmp_path / "b", 6, seed=1)
    verify_checkpoint(folder)
    assert (folder / SHARD0).stat().st_size == (other / SHARD0).stat().st_size
    folder_damages(folder, other)[how]()
    with pytest.raises(CheckpointDamaged) as e:
        verify_checkpoint(folder)
    assert str(e.value).startswith(str(folder / FOLDER_MESSAGES[how]))
    assert "\n" not in str(e.value)


def test_a_folder_of_an_earlier_version_is_checked_by_crc(tmp_path):
    folder = make_folder(tmp_path / "a", 6)
    (folder / ck.COMPLETE).write_text("global_step 6\n")  # the marker earlier versions wrote
    verify_checkpoint(folder)
    (folder / SHARD0).write_bytes((folder / SHARD0).read_bytes()[:-100])
    with pytest.raises(CheckpointDamaged, match=r"optim_states.pt: damaged checkpoint \(not a readable zip archive"):
        verify_checkpoint(folder)


def test_resume_auto_over_folders_takes_the_newest_intact_one(tmp_path):
    ckpts = tmp_path / "checkpoints"
    last, old = make_folder(ckpts / ck.LAST, 9), make_folder(ckpts / (ck.LAST + ".old"), 6)
    make_folder(ckpts / "step-0000003.ckpt", 3)
    kept9 = make_folder(ckpts / "step-0000009.ckpt", 9)
    lines: list[str] = []
    assert ck.resolve_resume("auto", tmp_path, lines.append) == str(last) and lines == []

    (last / SHARD0).unlink()
    assert ck.resolve_resume("auto", tmp_path, lines.append) == str(kept9)  # step 9 ranks above .old (6)
    assert lines == [
        f"run.resume=auto: {last / SHARD0}: damaged checkpoint (missing: the folder's manifest lists it); "
        f"resuming from {kept9} at step 9: 0 optimiser step(s) lost"
    ]
    shutil.rmtree(kept9)
    assert ck.resolve_resume("auto", tmp_path, lines.append) == str(old)
    assert lines[-1].endswith(f"resuming from {old} at step 6: 3 optimiser step(s) lost")
    with pytest.raises(ConfigError, match=r"^run.resume: .*last.ckpt/checkpoint/zero_pp_rank_0.*: damaged checkpoint"):
        ck.resolve_resume(str(last), tmp_path)


# ------------------------------------------------------------------------------ real DeepSpeed folders (slow)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
DS_FIT = [
    "recipes/tiny_cpu.yaml",
    *(f"model.{k}={v}" for k, v in TINY_MODEL.items() if k != "vocab_size"),
    "data.train_length=32",
    f"data.segments={S}",
    "data.batch_size=2",
    "data.min_doc_tokens=1024",
    "trainer.strategy=deepspeed",
    "trainer.devices=2",
    "trainer.accelerator=cpu",
    "probes.enabled=false",
    "trainer.enable_progress_bar=false",
    f"run.checkpoint_every_n_steps={S}",
    f"run.keep_every_n_steps={S}",
]


def _python(*argv, env=ENV):
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, env=env, timeout=1200)


# ZeRO-2 and 3 in CI; ZeRO-1's folder (the layout of ZeRO-2's, bf16 shard names) with STUFFED_MAMBA_EXTENDED=1
BUILT_STAGES = (1, 2, 3) if EXTENDED else (2, 3)


@pytest.fixture(scope="session")
def engine_folders(tmp_path_factory) -> Path:
    """`OUT/zero{1,2,3}/`: folders the real engine wrote (2 ranks), sealed as `save_atomically` seals
    them (tests/training/deepspeed_folders.py)."""
    out = tmp_path_factory.mktemp("ds_stages")
    r = _python("tests.training.deepspeed_folders", str(out), env={**ENV, "STAGES": ",".join(map(str, BUILT_STAGES))})
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in BUILT_STAGES:
        seal_folder(out / f"zero{stage}", 2)
    return out


def ds_shard(folder: Path) -> str:
    """Rank 0's optimizer shard (`bf16_zero_pp_rank_0_...` under ZeRO-1 with bf16)."""
    (name,) = [p.name for p in (folder / "checkpoint").glob("*zero_pp_rank_0_*optim_states.pt")]
    return f"checkpoint/{name}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage", [pytest.param(1, marks=pytest.mark.extended("ZeRO-2's folder has ZeRO-1's layout")), 2, 3]
)
@pytest.mark.parametrize("how", ["missing", "truncated", "foreign"])
def test_a_damaged_deepspeed_folder_is_one_line_from_resume_eval_and_export(
    engine_folders, tmp_path, capsys, stage, how
):
    folder = shutil.copytree(engine_folders / f"zero{stage}", tmp_path / "run" / "checkpoints" / ck.LAST)
    verify_checkpoint(folder)
    shard = ds_shard(folder)
    if how == "missing":
        (folder / shard).unlink()
    elif how == "truncated":
        (folder / shard).write_bytes((folder / shard).read_bytes()[:-4096])
    else:  # the file of the same name from another stage's checkpoint
        other = engine_folders / f"zero{BUILT_STAGES[(BUILT_STAGES.index(stage) + 1) % len(BUILT_STAGES)]}"
        shutil.copy(other / ds_shard(other), folder / shard)
    with pytest.raises(CheckpointDamaged) as e:
        verify_checkpoint(folder)
    expected = {"missing": "missing: ", "truncated": "truncated: ", "foreign": ""}[how]
    assert str(e.value).startswith(f"{folder / shard}: damaged checkpoint ({expected}")
    if how == "foreign" and (folder / shard).stat().st_size != (engine_folders / f"zero{stage}" / shard).stat().st_size:
        assert "bytes, the folder's manifest says" in str(e.value)

    run_dir, out = tmp_path / "run", tmp_path / "out"
    before = tree_hash(run_dir)
    assert main([*FIT, "trainer.strategy=deepspeed", f"run.dir={run_dir}", f"run.resume={folder}"]) == 2
    assert f"error: run.resume: {folder / shard}: damaged checkpoint (" in one_line_error(capsys)
    assert main(["eval", "states", "--checkpoint", str(folder), "--out", str(out), "--no-progress"]) == 2
    assert f"{folder / shard}: damaged checkpoint (" in one_line_error(capsys)
    assert main(["export", str(folder), str(out)]) == 2
    assert f"{folder / shard}: damaged checkpoint (" in one_line_error(capsys)
    assert tree_hash(run_dir) == before and not out.exists()


@pytest.mark.slow
def test_fit_under_deepspeed_seals_its_folders_and_resume_auto_falls_back_past_a_damaged_one(tmp_path):
    r = _python("tests.deepspeed_cpu", "fit", *DS_FIT, f"run.dir={tmp_path}", f"trainer.max_steps={3 * S}")
    assert r.returncode == 0, r.stderr[-3000:]
    ckpts = tmp_path / "checkpoints"
    assert sorted(os.listdir(ckpts)) == [ck.LAST] + [f"step-{s:07d}.ckpt" for s in (S, 2 * S, 3 * S)]
    for p in ckpts.iterdir():
        manifest = json.loads((p / ck.COMPLETE).read_text())
        files = sorted(q.relative_to(p).as_posix() for q in p.rglob("*") if q.is_file() and q.name != ck.COMPLETE)
        assert sorted(manifest["files"]) == files and len(files) >= 4  # latest, model states, 2 optimizer shards
        for name in files:
            want = manifest["files"][name]
            assert want["bytes"] == (p / name).stat().st_size
            assert want["digest"] == "xxh3_128:" + xxhash.xxh3_128((p / name).read_bytes()).hexdigest()
        verify_checkpoint(p)
    assert manifest_step(ckpts / ck.LAST) == 3 * S

    # last.ckpt and its step-9 copy lose a shard: auto continues from step 6, says so, ends sealed
    for name in (ck.LAST, f"step-{3 * S:07d}.ckpt"):
        (ckpts / name / ds_shard(ckpts / name)).unlink()
    r = _python(
        "tests.deepspeed_cpu", "fit", *DS_FIT, f"run.dir={tmp_path}", "run.resume=auto", f"trainer.max_steps={4 * S}"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    said = [line for line in r.stdout.splitlines() if line.startswith("run.resume=auto:")]
    assert len(said) == 1 and said[0].startswith(f"run.resume=auto: {ckpts / ck.LAST / ds_shard(ckpts / ck.LAST)}:")
    assert said[0].endswith(
        f"resuming from {ckpts / f'step-{2 * S:07d}.ckpt'} at step {2 * S}: {S} optimiser step(s) lost"
    )
    verify_checkpoint(ckpts / ck.LAST)
    assert manifest_step(ckpts / ck.LAST) == 4 * S
