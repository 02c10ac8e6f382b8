"""The "forgetting" layout split into one chart per series, matched as TensorBoard matches."""

from __future__ import annotations

import re
from pathlib import Path

from stuffed_mamba.callbacks.dashboard import one_chart_per_series

ROOT = Path(__file__).resolve().parents[2]
PROBES = ("passkey", "retention", "states", "position_loss", "memory_lengths")


def test_one_chart_per_series_when_one_tag_prefixes_another():
    # the position-loss buckets of the default run: t=1 is a prefix of t=13 and t=135
    tags = [f"probes/position_loss/bucket/t={t}" for t in (1, 3, 13, 135)] + ["probes/passkey/T_recall"]
    layout = {
        "position_loss: every series": {
            "loss by position": ["Multiline", [r"probes/position_loss/bucket/.*"]],
            "T_recall": ["Multiline", [r"probes/passkey/T_recall"]],
        }
    }
    charts = one_chart_per_series(layout, tags)["position_loss: every series"]
    assert list(charts) == [
        "loss by position: t=1",
        "loss by position: t=3",
        "loss by position: t=13",
        "loss by position: t=135",
        "T_recall",
    ]
    for title, (_, regexes) in charts.items():
        # custom_scalars_plugin.scalars_impl keeps the tags for which re.compile(regex).match(tag)
        drawn = [t for t in tags if any(re.match(rx, t) for rx in regexes)]
        assert len(drawn) == 1, (title, drawn)


def _tiny_cpu_callbacks():
    from stuffed_mamba.callbacks import build_callbacks
    from stuffed_mamba.data import load_tokenizer

    from stuffed_mamba.training.config import load_recipe

    recipe = load_recipe(str(ROOT / "recipes" / "tiny_cpu.yaml"), [f"data.source={ROOT / 'data' / 'sample'}"])
    tokenizer = load_tokenizer(str(ROOT / recipe.data.tokenizer))
    *probes, dashboard = build_callbacks(recipe.probes, tokenizer=tokenizer, data_cfg=recipe.data)
    return probes


def test_first_section_of_the_default_recipe():
    """At most 8 charts (4: one laptop screen), each of exact tags, the recipe's numbers in the
    titles; the detail follows, one category per probe."""
    from stuffed_mamba.callbacks.dashboard import LAYOUT_NAME, forgetting_layout, one_chart_per_series

    layout = forgetting_layout(_tiny_cpu_callbacks())
    first = layout[LAYOUT_NAME]
    assert list(layout)[0] == LAYOUT_NAME and 1 <= len(first) <= 8
    tags = [re.sub(r"\\(.)", r"\1", rx)[:-1] for _, regexes in first.values() for rx in regexes]
    assert all(rx.endswith("$") for _, regexes in first.values() for rx in regexes)
    # T_train = 128; the longest passkey length 1024; retention read at its length 512
    assert "probes/passkey/acc/T=1024" in tags and "probes/retention/max_alpha/t=512" in tags
    assert any("1K = 8x T_train" in title and "512 = 4x T_train" in title for title in first)
    assert {"dashboard/learned_to_forget_limit_2x", "dashboard/T_train_is_1"} <= set(tags)
    assert set(layout) - {LAYOUT_NAME} == {f"{p}: every series" for p in PROBES}
    # splitting the detail into one chart per series leaves the first section as chosen
    assert one_chart_per_series(layout, tags)[LAYOUT_NAME] == first


def test_write_layout_closes_every_category_after_the_first():
    from stuffed_mamba.callbacks.dashboard import write_layout
    from tensorboard.plugins.custom_scalar import layout_pb2

    class Writer:  # SummaryWriter's file writer, recording
        summaries: list = []

        def _get_file_writer(self):
            return self

        def add_summary(self, summary):
            self.summaries.append(summary)

        def flush(self):
            pass

    layout = {"forgetting": {"a": ["Multiline", ["x$"]]}, "p: every series": {"b": ["Multiline", ["y/.*"]]}}
    w = Writer()
    write_layout(w, layout)
    (summary,) = w.summaries
    (value,) = summary.value
    assert value.tag == "custom_scalars__config__" and value.metadata.plugin_data.plugin_name == "custom_scalars"
    proto = layout_pb2.Layout.FromString(value.tensor.string_val[0])
    assert [(c.title, c.closed) for c in proto.category] == [("forgetting", False), ("p: every series", True)]
    assert [list(c.chart[0].multiline.tag) for c in proto.category] == [["x$"], ["y/.*"]]
