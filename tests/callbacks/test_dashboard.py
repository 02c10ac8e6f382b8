"""The "forgetting" layout split into one chart per series, matched as TensorBoard matches."""

from __future__ import annotations

import re

from stuffed_mamba.callbacks.dashboard import one_chart_per_series


def test_one_chart_per_series_when_one_tag_prefixes_another():
    # the position-loss buckets of the default run: t=1 is a prefix of t=13 and t=135
    tags = [f"probes/position_loss/bucket/t={t}" for t in (1, 3, 13, 135)] + ["probes/passkey/T_recall"]
    layout = {
        "forgetting": {
            "loss by position": ["Multiline", [r"probes/position_loss/bucket/.*"]],
            "T_recall": ["Multiline", [r"probes/passkey/T_recall"]],
        }
    }
    charts = one_chart_per_series(layout, tags)["forgetting"]
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
