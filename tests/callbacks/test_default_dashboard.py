"""The default run's dashboard as a user opens it (issue 22's acceptance 1-3): the first section of
the "forgetting" layout, its tags, the figures over training, and a real TensorBoard in headless
Chromium at laptop sizes, opened with the README's URL."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBES = ("passkey", "retention", "states", "position_loss", "memory_lengths")

pytestmark = pytest.mark.slow


def _events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _layout(acc):
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.util import tensor_util

    # the last one written is the one TensorBoard shows
    (last,) = acc.Tensors("custom_scalars__config__")[-1:]
    return layout_pb2.Layout.FromString(tensor_util.make_ndarray(last.tensor_proto).item())


def _probe_steps(run_dir: Path, probe: str) -> list[int]:
    return sorted(json.loads(f.read_text())["step"] for f in (run_dir / "probes" / probe).glob("step_*.json"))


def test_first_section_is_at_most_8_charts_of_tags_the_default_run_writes(default_run):
    acc = _events(default_run)
    scalars = acc.Tags()["scalars"]
    first, *details = _layout(acc).category
    assert first.title == "forgetting" and not first.closed
    assert 1 <= len(first.chart) <= 8
    assert details and all(c.closed for c in details)
    steps = _probe_steps(default_run, "position_loss")
    assert len(steps) == 10  # every 60 of 600 optimiser steps
    for chart in first.chart:
        for rx in chart.multiline.tag:
            hits = [t for t in scalars if re.match(rx, t)]  # TensorBoard's matching (custom_scalars_plugin)
            assert len(hits) == 1, (chart.title, rx, hits)
            assert [e.step for e in acc.Scalars(hits[0])] == steps, hits[0]
    # the charts docs/probes.md explains, title for title
    doc = (ROOT / "docs" / "probes.md").read_text()
    for chart in first.chart:
        assert chart.title in doc, chart.title


def test_figures_over_training_one_per_probe_step(default_run):
    acc = _events(default_run)
    for probe in PROBES:
        steps = _probe_steps(default_run, probe)
        assert len(steps) == 10, probe
        assert [i.step for i in acc.Images(f"probes/{probe}/over_training")] == steps, probe
        pngs = sorted((default_run / "probes" / probe).glob("over_training_step_*.png"))
        assert [int(p.stem.rsplit("_", 1)[1]) for p in pngs] == steps, probe
        assert all(p.stat().st_size > 10_000 for p in pngs), probe


def _script():
    spec = importlib.util.spec_from_file_location(
        "screenshot_tensorboard", ROOT / "scripts" / "screenshot_tensorboard.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_first_screen_shows_the_first_section(default_run, tmp_path):
    """At 1440 x 900 (a laptop's browser viewport) every chart card of the first section, footer
    included, lies within the window; the detail categories are closed."""
    size = "1440,900"
    shot = _script()
    chromium = shot.find_chromium()
    if chromium is None:
        pytest.skip("chromium not installed: `scripts/install.sh dev` (as root) or `apt-get install chromium`")
    readme = (ROOT / "README.md").read_text()
    assert f"http://localhost:6006/{shot.DASHBOARD_HASH}" in readme  # the URL the README gives
    first = _layout(_events(default_run)).category[0]
    with shot.tensorboard(default_run / "tensorboard") as base:
        page = shot.Page(chromium, base)
        try:
            page.open(f"{base}/{shot.DASHBOARD_HASH}", size, 5000)
            seen = page.wait_for_charts()
            page.screenshot(tmp_path / "first_screen.png")
        finally:
            page.close()
    width, height = (int(v) for v in size.split(","))
    assert seen["viewport"] == {"width": width, "height": height}
    assert seen["smoothing"] == 0 and seen["ignore_outliers"] is False  # the URL's and the README's click
    cats = {c["title"]: c["opened"] for c in seen["categories"]}
    assert cats.pop("forgetting") is True and cats and not any(cats.values()), seen["categories"]
    drawn = {c["title"]: c for c in seen["charts"] if c["bottom"] > c["top"]}
    assert set(drawn) == {c.title for c in first.chart}, sorted(drawn)  # the closed categories draw nothing
    for title, box in drawn.items():
        assert box["top"] >= 0 and box["left"] >= 0, (title, box)
        assert box["bottom"] <= height and box["right"] <= width, (title, box)
    assert (tmp_path / "first_screen.png").stat().st_size > 20_000
