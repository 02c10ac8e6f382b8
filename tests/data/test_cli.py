"""Acceptance 5 and the CLI: `stuffed-mamba data inspect` / `data prepare`."""

import json
import subprocess
import sys

from stuffed_mamba.cli import main

from .conftest import FLAKY, HTTP_LISTING, NOT_FOUND, STALLS
from .mirror import MIN_TOKENS


def test_inspect_sample_json_works_offline_from_any_directory(tmp_path):
    env_cmd = [sys.executable, "-m", "stuffed_mamba", "data", "inspect", "data/sample", "--json"]
    r = subprocess.run(env_cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)})  # fmt: skip
    assert r.returncode == 0, r.stderr
    counts = json.loads(r.stdout)
    for k in ("read", "kept", "dropped_duplicate", "dropped_short", "bad", "tokens"):
        assert isinstance(counts[k], int), k
    # the sample's planted duplicates: 12 listed, plus unlisted copies only the stream dedup sees
    assert counts["dropped_duplicate_listed"] == 12 and counts["dropped_duplicate_stream"] >= 1
    assert counts["kept"] > 50 and counts["tokens"] > 10**6 and counts["bad"] == 0
    assert counts["read"] == counts["kept"] + counts["dropped_duplicate"] + counts["dropped_short"]


def test_inspect_emit_ids_prints_kept_ids_in_stream_order(mirror, capsys):
    rc = main(["data", "inspect", str(mirror.root), "--listing", mirror.listing, "--tokenizer", "bytes",
               "--min-doc-tokens", str(MIN_TOKENS), "--emit-ids", "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0
    # the 20000-byte limit of the mirror is not the CLI's default: its over-long document is kept here
    ids = out.split()
    assert [i for i in ids if not i.endswith("en_head.json.gz/9")] == mirror.kept_ids
    assert json.loads(err.strip().splitlines()[-1])["kept"] == len(ids)


def test_inspect_bad_source_is_one_line_error(capsys, tmp_path):
    assert main(["data", "inspect", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere" in err


def test_prepare_mirrors_an_http_source(http_mirror, mirror, tmp_path, capsys):
    out = tmp_path / "mirror"
    args = ["data", "prepare", http_mirror["url"], str(out), "--listing", HTTP_LISTING, "--timeout", "0.5",
            "--retries", "1"]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    failed = {line.split(":")[0] for line in report["failed"]}
    assert failed == {NOT_FOUND, STALLS, "2023-06/0002/en_head"}
    assert report["truncated"] == ["2023-06/0000/en_middle"]
    ids = []
    from stuffed_mamba.data.inspect import inspect_source

    inspect_source(str(out), listing=HTTP_LISTING, tokenizer="bytes", min_doc_tokens=MIN_TOKENS,
                   max_doc_bytes=20_000, on_kept=ids.append)  # fmt: skip
    assert ids == mirror.kept_ids + [f"{FLAKY}.json.gz/{j}" for j in range(3)]
    assert main(args) == 0  # a second run finds everything in place and downloads nothing
    assert json.loads(capsys.readouterr().out)["bytes"] == 0


def test_progress_line_reports_documents_tokens_and_rate():
    import io

    from stuffed_mamba.data.progress import Progress

    buf = io.StringIO()
    p = Progress("inspect", every_s=0.0, stream=buf)
    p.update(documents=1200, kept=30, tokens=150_000)
    line = buf.getvalue()
    assert line.startswith("inspect: documents 1,200, kept 30, tokens 150,000, ") and "tokens/s" in line
