"""Through the real `fit` on the sample corpus: probes on vs off give bit-identical training, and
TensorBoard's own reader finds the probes' scalars, images and the "forgetting" layout."""

import json
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _fit(run_dir: Path, probes: bool):
    from stuffed_mamba.training.config import load_recipe
    from stuffed_mamba.training.fit import fit

    overrides = [
        "model.d_model=32",
        "model.n_layer=2",
        "model.d_state=8",
        "model.headdim=8",
        "model.chunk_size=16",
        f"data.source={ROOT / 'data' / 'sample'}",
        "data.tokenizer=bytes",
        "data.train_length=48",
        "data.segments=2",
        "data.min_doc_tokens=256",
        "optim.total_steps=20",
        "optim.warmup_steps=1",
        "trainer.max_steps=4",
        "trainer.enable_progress_bar=false",
        f"run.dir={run_dir}",
        "run.checkpoint_every_n_steps=4",
        f"probes.enabled={str(probes).lower()}",
        "probes.passkey.every_n_steps=2",
        "probes.passkey.lengths=[300,600]",
        "probes.passkey.samples=2",
        "probes.passkey.last_r=[400]",
        "probes.passkey.max_new_tokens=3",
        "probes.retention.every_n_steps=2",
        "probes.retention.length=192",
        "probes.retention.min_doc_tokens=1024",
        "probes.states.every_n_steps=2",
        "probes.states.length=192",
        "probes.states.n_points=6",
        "probes.position_loss.every_n_steps=2",
        "probes.position_loss.length=192",
        "probes.position_loss.samples=1",
        "probes.position_loss.min_doc_tokens=1024",
        "probes.position_loss.buckets=6",
        "probes.memory_lengths.every_n_steps=2",
        "probes.memory_lengths.length=300",
    ]
    result = fit(load_recipe(None, overrides), log=lambda s: None)
    return result, torch.load(result.checkpoint, map_location="cpu", weights_only=False)


def same(a, b) -> bool:
    """Exact equality of nested checkpoint contents (dicts, lists, tensors, arrays, scalars)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if hasattr(a, "shape") and hasattr(a, "dtype"):  # numpy
        import numpy as np

        return np.array_equal(a, b)
    return a == b


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("fit")
    on = _fit(base / "on", True)
    off = _fit(base / "off", False)
    return base, on, off


def test_probes_leave_training_bit_identical(runs):
    _, (res_on, ck_on), (res_off, ck_off) = runs
    assert res_on.global_step == res_off.global_step == 4
    assert ck_on["state_dict"].keys() == ck_off["state_dict"].keys()
    for k, v in ck_on["state_dict"].items():
        assert torch.equal(v, ck_off["state_dict"][k]), k
    opt_on, opt_off = ck_on["optimizer_states"][0]["state"], ck_off["optimizer_states"][0]["state"]
    assert opt_on.keys() == opt_off.keys()
    for i in opt_on:
        for k in opt_on[i]:
            assert torch.equal(torch.as_tensor(opt_on[i][k]), torch.as_tensor(opt_off[i][k])), (i, k)
    assert same(ck_on["data_state_per_rank"], ck_off["data_state_per_rank"])  # same data position
    assert same(ck_on["rng_per_rank"], ck_off["rng_per_rank"])  # the run's RNG stream where it was
    assert res_on.final_loss == res_off.final_loss


def test_fit_writes_its_result_beside_last_ckpt(runs):
    """What the sweep reads instead of parsing log text: the FitResult as JSON in run.dir."""
    from stuffed_mamba.training.fit import read_result

    base, (res_on, _), _ = runs
    written = read_result(base / "on")
    assert written == res_on and written.global_step == 4 and written.final_loss is not None


def test_tensorboard_has_probe_scalars_images_and_layout(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.util import tensor_util

    base, (res_on, _), _ = runs
    acc = EventAccumulator(res_on.tensorboard_dir, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = [t for t in tags["scalars"] if t.startswith("probes/")]
    for tag in (
        "probes/passkey/acc/T=300",
        "probes/passkey/acc/T=600",
        "probes/passkey/T_recall",
        "probes/passkey/acc_last_r/r=400",
        "probes/retention/max_alpha/t=48",
        "probes/states/var_growth_max",
        "probes/position_loss/learned_to_forget",
        "probes/position_loss/max_beyond",
        "probes/memory_lengths/tau_max",
        "probes/memory_lengths/heads_beyond_train_length",
    ):
        assert tag in scalars, tag
        assert [e.step for e in acc.Scalars(tag)] == [2, 4]
    probes = ("passkey", "retention", "states", "position_loss", "memory_lengths")
    assert set(tags["images"]) == {
        "probes/passkey/heatmap",
        "probes/passkey/last_r",
        "probes/retention/curves",
        "probes/states/curves",
        "probes/position_loss/curve",
        "probes/memory_lengths/heads",
        *(f"probes/{p}/over_training" for p in probes),
    }
    img = acc.Images("probes/passkey/heatmap")[-1]
    assert img.width > 100 and img.height > 100 and img.step == 4
    for p in probes:  # the figure over training: one per probe step, in TensorBoard and beside the JSON
        assert [i.step for i in acc.Images(f"probes/{p}/over_training")] == [2, 4], p
        pngs = sorted(f.name for f in (base / "on" / "probes" / p).glob("over_training_step_*.png"))
        assert pngs == ["over_training_step_00000002.png", "over_training_step_00000004.png"], p

    layouts = [
        layout_pb2.Layout.FromString(tensor_util.make_ndarray(t.tensor_proto).item())
        for t in acc.Tensors("custom_scalars__config__")
    ]
    first, *details = layouts[0].category
    assert first.title == "forgetting" and not first.closed and 1 <= len(first.chart) <= 8
    assert details and all(c.closed for c in details)  # the detail is collapsed: the first screen is the answer
    for chart in first.chart:  # every series of the first section was written, each by one tag
        for rx in chart.multiline.tag:
            hits = [t for t in tags["scalars"] if re.match(rx, t)]
            assert len(hits) == 1, (chart.title, rx, hits)
            assert [e.step for e in acc.Scalars(hits[0])] == [2, 4], hits[0]
    # the dashboard's derived series, against the probes' own JSON summaries
    assert [e.value for e in acc.Scalars("dashboard/learned_to_forget_limit_2x")] == [2.0, 2.0]
    assert [e.value for e in acc.Scalars("dashboard/T_train_is_1")] == [1.0, 1.0]
    memory = json.loads((base / "on" / "probes" / "memory_lengths" / "step_00000004.json").read_text())
    got = acc.Scalars("dashboard/median_memory_over_T_train")[-1].value
    assert got == pytest.approx(memory["tau_median"] / 48, rel=1e-6)
    for category in details:  # every chart of the dashboard shows something that was logged
        for chart in category.chart:
            assert any(re.fullmatch(rx, t) for rx in chart.multiline.tag for t in scalars), chart.title
    # once every probe has run, the layout is written again with one chart per series in the detail:
    # TensorBoard draws one run's series in one colour, so a chart of several could not be read
    split_first, *split_details = layouts[-1].category
    assert split_first == first and all(c.closed for c in split_details)
    charts = [chart for category in split_details for chart in category.chart]
    assert len(charts) > sum(len(c.chart) for c in details)
    for chart in charts:
        hits = {t for rx in chart.multiline.tag for t in scalars if re.match(rx, t)}  # TensorBoard's matching
        assert len(hits) == 1, (chart.title, hits)
    assert "passkey accuracy per length: T=300" in {c.title for c in charts}
    # the probes' JSON summaries sit beside the logs
    assert (base / "on" / "probes" / "passkey" / "step_00000004.json").is_file()
    assert not (base / "off" / "probes").exists()


@pytest.mark.parametrize(
    "argv,files",
    [
        (
            ["passkey", "--lengths", "300,600", "--samples", "2", "--max-new-tokens", "3", "--last-r", "400"],
            ["passkey.json", "passkey.txt", "passkey_heatmap.png", "passkey_last_r.png"],
        ),
        (["retention", "--length", "192"], ["retention.json", "retention.txt", "retention_curves.png"]),
        (["states", "--length", "192", "--points", "6"], ["states.json", "states.txt", "states_curves.png"]),
        (
            [
                "loss",
                "--length",
                "150",
                "--samples",
                "1",
                "--min-doc-tokens",
                "1024",
                "--buckets",
                "6",
                "--intervention",
                "none",
                "--intervention",
                "longmamba:0.5",
            ],
            ["loss.json", "loss.txt", "loss_curve_none.png", "loss_curve_longmamba0.5.png"],
        ),
    ],
)
def test_eval_cli_on_the_runs_lightning_checkpoint(runs, tmp_path, capsys, argv, files):
    """Acceptance 7: the eval CLI on a real tiny Lightning checkpoint writes table, JSON and PNGs;
    the tokenizer, T_train and evaluation text come from the run's recipe.yaml."""
    import json

    from stuffed_mamba.cli import main

    _, (res_on, _), _ = runs
    out = tmp_path / "eval"
    rc = main(["eval", *argv, "--checkpoint", res_on.checkpoint, "--out", str(out), "--no-progress"])
    assert rc == 0
    for f in files:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    printed = capsys.readouterr().out
    table = (out / files[1]).read_text()
    assert table.strip() in printed  # the printed table is the saved one
    js = json.loads((out / files[0]).read_text())
    assert js["checkpoint"] == res_on.checkpoint and js["step"] == 4 and js["train_length"] == 48
    if argv[0] == "passkey":
        assert set(js["accuracy"]) == {"300", "600"} and "T_recall" in js and len(js["trials"]) == 4
        assert "T_recall" in table
    if argv[0] == "loss":
        assert set(js["interventions"]) == {"none", "longmamba:0.5"}
        assert isinstance(js["learned_to_forget"], bool) and "learned to forget" in table
