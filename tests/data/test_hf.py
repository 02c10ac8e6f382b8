"""hf:// sources (datasets streaming) on local parquet and JSON files: exactly the right documents in
stream order with every counter, for `data inspect` and the training stream; disjoint sharding over
(rank, worker); bit-exact resume across a pass boundary; one-line errors. No network."""

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from stuffed_mamba.data import DataConfig, build_dataloader
from stuffed_mamba.data.inspect import inspect_source

from stuffed_mamba.cli import main

from .hf_corpus import _write_jsonl, _write_parquet, build_json, build_parquet, write_hf_corpus
from .loaders import rows, same_episodes, stop_and_resume
from .mirror import MAX_DOC_BYTES, MIN_TOKENS, text


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    return build_parquet(tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory):
    return build_json(tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="module")
def hf_corpus(tmp_path_factory):
    """8 clean parquet files of 6 short documents each (for sharding and resume)."""
    return write_hf_corpus(tmp_path_factory.mktemp("hf_corpus"))


def _source(corpus):
    return "hf://parquet" if corpus.glob.endswith(".parquet") else "hf://json"


def _stream_tokens(texts):
    """The reference token stream: UTF-8 bytes of each kept document, then EOS (256)."""
    return np.concatenate([np.append(np.frombuffer(t.encode(), np.uint8).astype(np.int64), 256) for t in texts])


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_inspect_keeps_exactly_the_right_documents_in_order(kind, request):
    corpus = request.getfixturevalue(kind)
    ids = []
    counts = inspect_source(
        _source(corpus), hf_data_files=corpus.glob, tokenizer="bytes", min_doc_tokens=MIN_TOKENS,
        max_doc_bytes=MAX_DOC_BYTES, on_kept=ids.append,
    )  # fmt: skip
    assert ids == corpus.kept_ids
    assert counts == corpus.counters
    dropped = sum(counts[k] for k in counts if k.startswith(("dropped_", "bad_")) and k != "dropped_duplicate")
    assert counts["read"] == counts["kept"] + dropped  # every row read has exactly one outcome


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_loader_packs_the_kept_documents_into_one_continuous_stream(kind, request):
    corpus = request.getfixturevalue(kind)
    T, S = 1000, 3
    cfg = DataConfig(
        source=_source(corpus), hf_data_files=corpus.glob, tokenizer="bytes", min_doc_tokens=MIN_TOKENS,
        max_doc_bytes=MAX_DOC_BYTES, train_length=T, segments=S, batch_size=1, shuffle_shards=False, epochs=1,
    )  # fmt: skip
    loader = build_dataloader(cfg)
    eps = list(loader)
    ref = _stream_tokens(corpus.kept_texts)
    assert len(eps) == (len(ref) - 1) // (S * T) and len(eps) >= 3
    for e, ep in enumerate(eps):
        for s in range(S):
            start = e * S * T + s * T
            np.testing.assert_array_equal(ep[0, s].numpy(), ref[start : start + T + 1])
    assert loader.counters() == corpus.counters


def test_cli_inspect_emit_ids_and_json(parquet, capsys):
    rc = main(["data", "inspect", "hf://parquet", "--data-files", parquet.glob, "--tokenizer", "bytes",
               "--min-doc-tokens", str(MIN_TOKENS), "--emit-ids", "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0
    # the CLI's default max_doc_bytes (32 MiB) keeps the test's over-long document (row 5)
    assert out.split() == parquet.kept_ids[:1] + ["part-00000.parquet/5"] + parquet.kept_ids[1:]
    counts = json.loads(err.strip().splitlines()[-1])
    assert counts["kept"] == 7 and counts["bad_too_large"] == 0 and counts["read"] == parquet.counters["read"]


def test_cli_inspect_text_field_and_split(tmp_path, capsys):
    _write_jsonl(tmp_path / "d.jsonl", [{"body": text(5000, 1)}, {"body": text(300, 2)}])
    args = ["data", "inspect", "hf://json", "--data-files", str(tmp_path / "*.jsonl"), "--tokenizer", "bytes",
            "--min-doc-tokens", "1000", "--json"]  # fmt: skip
    assert main(args + ["--text-field", "body"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert (counts["kept"], counts["dropped_short"], counts["tokens"]) == (1, 1, 5000)
    # a field no row has: one line, naming the columns there are
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'text'" in err and "body" in err
    assert main(args + ["--text-field", "body", "--split", "test"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    # hf:// flags on a RedPajama-V2 source, and a RedPajama-V2 listing on an hf:// source
    assert main(["data", "inspect", "data/sample", "--text-field", "body"]) == 2
    assert "--text-field: for hf:// sources only" in capsys.readouterr().err
    assert main(["data", "prepare", "hf://json", str(tmp_path / "out"), "--data-files", "x", "--listing", "l"]) == 2
    assert "--listing is for RedPajama-V2" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_undecodable_and_non_text_rows_are_counted(tmp_path):
    ok = text(3000, 7)
    _write_parquet(tmp_path / "bin" / "b.parquet", [ok.encode(), b"\xff\xfe not UTF-8 " * 300, None], binary=True)
    counts = inspect_source("hf://parquet", hf_data_files=str(tmp_path / "bin/*.parquet"), tokenizer="bytes",
                            min_doc_tokens=1000)  # fmt: skip
    assert (counts["kept"], counts["bad_utf8"], counts["bad_content"], counts["tokens"]) == (1, 1, 1, 3000)
    # JSON rows of mixed types: datasets hands over what each row holds; non-text is bad_content
    _write_jsonl(
        tmp_path / "mix" / "m.jsonl", [{"text": ok}, {"text": 12345}, {"text": ["a", "b"]}, {"text": {"x": 1}}]
    )
    counts = inspect_source("hf://json", hf_data_files=str(tmp_path / "mix/*.jsonl"), tokenizer="bytes",
                            min_doc_tokens=1000)  # fmt: skip
    assert (counts["read"], counts["kept"], counts["bad_content"]) == (4, 1, 3)


def test_text_builder_reads_a_file_as_one_document(tmp_path):
    for i in range(2):
        (tmp_path / f"book{i}.txt").write_text(text(3000, 40 + i).replace(" ", "\n", 50))
    ids = []
    counts = inspect_source("hf://text", hf_data_files=str(tmp_path / "*.txt"), tokenizer="bytes",
                            min_doc_tokens=1000, on_kept=ids.append)  # fmt: skip
    assert ids == ["book0.txt/0", "book1.txt/0"] and counts["tokens"] == 6000


@pytest.mark.parametrize("bad, message", [
    ({"hf_data_files": "/nowhere/*.parquet"}, "no file matches '/nowhere/\\*.parquet'"),
    ({"source": "hf://parquet"}, "reads data.hf_data_files"),
    ({"source": "hf://nosuchbuilder"}, "hf://OWNER/NAME"),
    ({"text_field": "body"}, "'body' is not a column .*columns: text, meta"),
    ({"hf_split": "validation"}, "validation"),
])  # fmt: skip
def test_bad_sources_are_one_line_errors(parquet, bad, message):
    kw = {"source": "hf://parquet", "hf_data_files": parquet.glob, **bad}
    if bad.get("source") == "hf://parquet":
        kw.pop("hf_data_files")
    with pytest.raises((ValueError, FileNotFoundError), match=message) as e:
        build_dataloader(DataConfig(tokenizer="bytes", **kw))
    assert len(str(e.value).splitlines()) == 1


def test_hf_keys_on_a_redpajama_source_are_errors():
    with pytest.raises(ValueError, match="data.hf_data_files applies to hf:// sources only"):
        DataConfig(hf_data_files="x/*.parquet")
    with pytest.raises(ValueError, match="data.listing is for RedPajama-V2"):
        DataConfig(source="hf://parquet", hf_data_files="x", listing="en.txt")


def test_fewer_shards_than_row_streams_is_one_line_and_reshard_helps(parquet):
    cfg = dict(source="hf://parquet", hf_data_files=parquet.glob, tokenizer="bytes", min_doc_tokens=MIN_TOKENS,
               max_doc_bytes=MAX_DOC_BYTES, train_length=100, segments=2, batch_size=4)  # fmt: skip
    with pytest.raises(ValueError, match=r"^data: 3 shard\(s\) cannot feed 4 row streams.*hf_reshard") as e:
        build_dataloader(DataConfig(**cfg))
    assert len(str(e.value).splitlines()) == 1
    ds = build_dataloader(DataConfig(**cfg, hf_reshard=True)).dataset
    # row groups of 2 rows: 4 + 2 + 1 shards, named by file and row group
    assert len(ds.tags) == 7 and "part-00000.parquet:rg3" in ds.tags and "sub/part-00002.parquet:rg0" in ds.tags
    # each name reads its own row group: in name order, the rows of the files in file order
    from stuffed_mamba.data.counters import new_counters

    rows = {name: [r[2] for r in ds.reader.open(name, 0, new_counters())] for name in ds.tags}
    assert len(rows["part-00000.parquet:rg3"]) == 1 and len(rows["sub/part-00002.parquet:rg0"]) == 2
    whole = build_dataloader(DataConfig(**{**cfg, "batch_size": 1})).dataset
    assert [t for name in ds.tags for t in rows[name]] == [
        r[2] for name in whole.tags for r in whole.reader.open(name, 0, new_counters())
    ]


def _cfg(glob, **kw):
    base = dict(source="hf://parquet", hf_data_files=glob, tokenizer="bytes", min_doc_tokens=300, train_length=64,
                segments=3, seed=7)  # fmt: skip
    return DataConfig(**{**base, **kw})


def test_two_ranks_two_workers_reproduce_the_single_process_rows(hf_corpus):
    K = 60  # more than one pass over every row stream's shards (cycling)
    single = build_dataloader(_cfg(hf_corpus, batch_size=4, num_workers=0))
    ref = list(itertools.islice(single, K))
    assert single.counters()["epochs"] >= 1
    split, shards = [], []
    for rank in range(2):
        loader = build_dataloader(_cfg(hf_corpus, batch_size=1, num_workers=2), rank=rank, world_size=2)
        split += list(itertools.islice(loader, 2 * K))
        shards += [t for w in range(2) for g in loader.dataset.lane_ids(w) for t in loader.dataset.lanes[g]]
    assert sorted(shards) == sorted(loader.dataset.tags) and len(shards) == 8  # each file read by one worker
    assert len(split) == 4 * K and all(ep.shape == (1, 3, 65) for ep in split)
    assert rows(split) == rows(ref)
    assert len(rows(ref)) > 0.9 * 4 * K  # rows are distinct text, so equality is not vacuous


@pytest.mark.parametrize("workers,k", [(0, 7), (2, 5)])
def test_resume_continues_exactly_across_a_pass(hf_corpus, workers, k):
    cfg = _cfg(hf_corpus, batch_size=2, seed=3, tokenize_batch_bytes=2000, num_workers=workers)
    r = stop_and_resume(cfg, n=170, k=k)  # 170: past an epoch boundary of both row streams (~130 rows per pass)
    assert same_episodes(r.episodes, r.reference)
    assert r.loader.counters() == r.reference_loader.counters()
    assert r.reference_loader.counters()["epochs"] >= 1


def test_redpajama_runs_and_help_do_not_import_datasets():
    code = ("import sys; from stuffed_mamba.cli import main; from stuffed_mamba.data import build_dataloader; "
            "import stuffed_mamba.data.inspect, stuffed_mamba.data.prepare; print('datasets' in sys.modules)")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_prepare_mirrors_an_hf_source_as_parquet(jsonl, tmp_path, capsys):
    out = tmp_path / "mirror"
    args = ["data", "prepare", "hf://json", str(out), "--data-files", jsonl.glob]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shards"] == 2 and report["rows"] == 9 and len(report["failed"]) == 1  # c.jsonl: unreadable
    assert report["failed"][0].startswith("c.jsonl: ")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"] == {"shard-00000-of-00003.parquet": "a.jsonl", "shard-00001-of-00003.parquet": "b.jsonl"}
    ids = []
    counts = inspect_source("hf://parquet", hf_data_files=report["data_files"], tokenizer="bytes",
                            min_doc_tokens=MIN_TOKENS, max_doc_bytes=MAX_DOC_BYTES, on_kept=ids.append)  # fmt: skip
    files = {v: k for k, v in manifest["files"].items()}
    assert ids == [files[i.split("/")[0]] + "/" + i.split("/")[1] for i in jsonl.kept_ids]  # same rows
    assert counts == {**jsonl.counters, "shards_failed": 0}

    # the mirror trains like the source: the same token stream
    def tokens(source, files):
        cfg = DataConfig(source=source, hf_data_files=files, tokenizer="bytes", min_doc_tokens=MIN_TOKENS,
                         max_doc_bytes=MAX_DOC_BYTES, train_length=500, segments=2, shuffle_shards=False, epochs=1)  # fmt: skip
        return torch.cat(list(build_dataloader(cfg)))

    assert torch.equal(tokens("hf://json", jsonl.glob), tokens("hf://parquet", report["data_files"]))
    assert main(args) == 0  # a second run finds the files in place
    assert json.loads(capsys.readouterr().out)["bytes"] == 0


def test_pg19_recipe_changes_only_the_data_source_of_its_base():
    from dataclasses import asdict

    from stuffed_mamba.training.config import load_recipe

    base, pg19 = load_recipe("recipes/mamba2_370m_256k.yaml"), load_recipe("recipes/mamba2_370m_256k_pg19.yaml")
    a, b = asdict(base), asdict(pg19)
    assert b["data"]["source"] == "hf://emozilla/pg19" and b["data"]["text_field"] == "text"
    assert b["run"].pop("dir") != a["run"].pop("dir")
    assert {k: v for k, v in a.items() if k != "data"} == {k: v for k, v in b.items() if k != "data"}
    same = ("tokenizer", "min_doc_tokens", "segments", "train_length", "batch_size")
    assert all(a["data"][k] == b["data"][k] for k in same)
    # row streams of the base's 8 GPUs fit the 23 train files of the hub dataset
    assert pg19.trainer.devices * pg19.trainer.num_nodes * pg19.data.num_workers * pg19.data.batch_size <= 23


class _Flaky:
    """A one-shard dataset whose first read breaks off after one batch with `error`."""

    def __init__(self, sub, error, calls):
        self.sub, self.error, self.calls = sub, error, calls

    def iter(self, batch_size):
        self.calls.append(batch_size)
        for i, batch in enumerate(self.sub.iter(batch_size=batch_size)):
            if len(self.calls) == 1 and i == 1:
                raise self.error
            yield batch


@pytest.mark.parametrize("error, retried", [(ConnectionError("reset by peer"), True), (ValueError("bad file"), False)])
def test_a_broken_connection_reopens_the_shard_and_skips_delivered_rows(parquet, monkeypatch, error, retried):
    from stuffed_mamba.data import hf
    from stuffed_mamba.data.counters import new_counters

    monkeypatch.setattr(hf, "_ROWS", 2)
    reader = hf.HFReader(DataConfig(source="hf://parquet", hf_data_files=parquet.glob, retry_backoff_s=0.0))
    clean = [r[:3] for r in reader.open("part-00000.parquet", 0, new_counters())]
    reader.remote = True  # as for a hub dataset or URLs
    real, calls = reader.ds.shard, []
    monkeypatch.setattr(reader.ds, "shard", lambda **kw: _Flaky(real(**kw), error, calls))
    c = new_counters()
    got = [r[:3] for r in reader.open("part-00000.parquet", 0, c)]
    if retried:  # every row exactly once, in order
        assert got == clean and len(calls) == 2 and (c["retries"], c["shards_read"]) == (1, 1)
    else:  # a data error is final: the rows before it, the shard counted as truncated
        assert got == clean[:2] and len(calls) == 1 and (c["retries"], c["shards_truncated"]) == (0, 1)
