"""Issue 19 section 3 (acceptance 3): data that is empty or oddly shaped fails in one line, before
anything is written, and says what to do; one parquet file of data trains, split by row ranges
(data.hf_rows_per_shard), exactly and resumably. Parquet files are built here with pyarrow."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import lightning  # noqa: F401  (its log handler bound to this process's stderr, as in a console run, not to a test's capture)
import numpy as np
import pytest
from stuffed_mamba.data import DataConfig, build_dataloader
from stuffed_mamba.data.counters import new_counters

from stuffed_mamba.cli import main

from .loaders import same_episodes, stop_and_resume
from .mirror import text

MIN = 300  # data.min_doc_tokens (bytes tokenizer: tokens = UTF-8 bytes)
TINY = "recipes/tiny_cpu.yaml"  # batch_size 4: the default 4 row streams
SMALL = [
    "model.d_model=32", "model.n_layer=2", "model.d_state=16", "model.headdim=16", "model.chunk_size=16",
    "data.tokenizer=bytes", f"data.min_doc_tokens={MIN}", "data.segments=3", "data.train_length=16",
    "optim.total_steps=60", "optim.warmup_steps=3", "probes.enabled=false", "trainer.enable_progress_bar=false",
]  # fmt: skip
DOCS = [text(600 + 10 * i, 700 + i) for i in range(20)]  # 20 long documents


def write_parquet(path: Path, texts: list, row_group_size: int | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": pa.array(texts, type=pa.string())}), path, row_group_size=row_group_size)
    return path


def snapshot(folder: Path) -> dict | None:
    """Every file under `folder` with its size, mtime and content hash (None: no folder)."""
    if not folder.exists():
        return None
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
    }


def error_line(err: str) -> str:
    """The one error line of a failed command; no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, err
    return lines[0]


def fit_fails(capfd, run_dir: Path, *overrides) -> str:
    """Run `fit` on a run.dir that holds an earlier file; assert rc 2 and run.dir unchanged."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "notes.txt").write_text("an earlier file\n")
    before = snapshot(run_dir)
    capfd.readouterr()
    rc = main(["fit", TINY, *SMALL, f"run.dir={run_dir}", *overrides])
    _, err = capfd.readouterr()
    assert rc == 2, err
    assert snapshot(run_dir) == before
    return error_line(err)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_data")
    return {
        "empty": write_parquet(root / "empty" / "e.parquet", []),
        "one": write_parquet(root / "one" / "books.parquet", DOCS),  # one row group of 20 rows
        "mixed": [
            write_parquet(root / "mixed" / "a.parquet", DOCS[:3]),
            write_parquet(root / "mixed" / "b.parquet", ["short"] * 3),
        ],  # fmt: skip
    }


def test_a_parquet_file_of_no_rows_is_one_line_and_writes_nothing(files, capfd, tmp_path):
    line = fit_fails(capfd, tmp_path / "run", "data.source=hf://parquet", f"data.hf_data_files={files['empty']}",
                     "data.batch_size=1")  # fmt: skip
    assert line == (
        "stuffed-mamba fit: error: data: hf://parquet yields no document: no document in its 1 shard(s); "
        "its files hold no rows: point data.hf_data_files at files that do"
    )
    # with the default 4 row streams, the same file says so before dealing shards
    line = fit_fails(capfd, tmp_path / "run", "data.source=hf://parquet", f"data.hf_data_files={files['empty']}")
    assert line == (
        "stuffed-mamba fit: error: data: hf://parquet holds no rows in its 1 file(s): "
        "point data.hf_data_files at files that do"
    )
    # a run.dir that does not exist yet is not created
    rc = main(["fit", TINY, *SMALL, f"run.dir={tmp_path / 'new'}", "data.source=hf://parquet",
               f"data.hf_data_files={files['empty']}", "data.batch_size=1"])  # fmt: skip
    assert rc == 2 and not (tmp_path / "new").exists()


def test_inspect_of_a_parquet_file_of_no_rows_prints_counts_then_a_verdict(files, capfd):
    rc = main(
        ["data", "inspect", "hf://parquet", "--data-files", str(files["empty"]), "--tokenizer", "bytes", "--json"]
    )
    out, err = capfd.readouterr()
    assert rc == 2
    import json

    counts = json.loads(out)
    assert counts["read"] == 0 and counts["kept"] == 0 and counts["shards_read"] == 1 and counts["shards_failed"] == 0
    assert error_line(err) == (
        "stuffed-mamba data: error: data: hf://parquet yields no document: no document in its 1 shard(s); "
        "its files hold no rows: point --data-files at files that do"
    )


def test_one_file_says_exactly_what_feeds_four_row_streams(files, capfd, tmp_path):
    source = ["data.source=hf://parquet", f"data.hf_data_files={files['one']}"]
    advice = (
        "stuffed-mamba fit: error: data: 1 shard(s) cannot feed 4 row streams (world_size 1 x workers 1 x "
        "batch_size 4); every row stream needs its own shards: data.hf_rows_per_shard=5 makes 4 shards of at "
        "most 5 rows, or at most 1 row stream(s) (data.batch_size=1)"
    )
    assert fit_fails(capfd, tmp_path / "run", *source) == advice
    # its one row group cannot be split further: hf_reshard=true gets the advice that works
    assert fit_fails(capfd, tmp_path / "run", *source, "data.hf_reshard=true") == advice
    # too large a split: the advice names the value that works
    assert fit_fails(capfd, tmp_path / "run", *source, "data.hf_rows_per_shard=8") == advice.replace(
        "1 shard(s)", "3 shard(s)"
    ).replace("at most 1 row stream(s) (data.batch_size=1)", "at most 3 row stream(s) (data.batch_size=3)")


def test_row_groups_are_advised_when_they_suffice(tmp_path, capfd):
    f = write_parquet(tmp_path / "rg" / "x.parquet", DOCS, row_group_size=5)
    line = fit_fails(capfd, tmp_path / "run", "data.source=hf://parquet", f"data.hf_data_files={f}")
    assert line.endswith(
        "every row stream needs its own shards: data.hf_reshard=true makes 4 shards (one per parquet row group), "
        "or at most 1 row stream(s) (data.batch_size=1)"
    )


def test_a_parquet_folder_as_source_points_to_hf_parquet(files, capfd, tmp_path):
    folder = files["one"].parent
    assert fit_fails(capfd, tmp_path / "run", f"data.source={folder}") == (
        f"stuffed-mamba fit: error: data: no listings/*.txt under {folder}; it holds .parquet files, which hf:// "
        f"reads: data.source=hf://parquet data.hf_data_files='{folder}/*.parquet'"
    )
    assert main(["data", "inspect", str(folder), "--tokenizer", "bytes"]) == 2
    assert error_line(capfd.readouterr().err) == (
        f"stuffed-mamba data: error: no listings/*.txt under {folder}; it holds .parquet files, which hf:// "
        f"reads: data inspect hf://parquet --data-files '{folder}/*.parquet'"
    )


def test_sources_that_keep_no_document_are_one_line(files, capfd, tmp_path):
    one = ["data.source=hf://parquet", f"data.hf_data_files={files['one']}", "data.batch_size=1"]
    assert fit_fails(capfd, tmp_path / "run", *one, "data.min_doc_tokens=5000") == (
        "stuffed-mamba fit: error: data: hf://parquet yields no document: read 20 document(s) of 1 shard(s): "
        "20 short, 0 duplicate, 0 empty, 0 bad; lower data.min_doc_tokens (now 5000)"
    )
    # one of two row streams gets only short documents: it would stop the run at its first episode
    mixed = ["data.source=hf://parquet", f"data.hf_data_files={files['mixed'][0].parent}/*.parquet",
             "data.batch_size=2", "data.shuffle_shards=false"]  # fmt: skip
    assert fit_fails(capfd, tmp_path / "run", *mixed) == (
        "stuffed-mamba fit: error: data: row stream 1 of 2 keeps no document: read 3 document(s) of 1 shard(s): "
        f"3 short, 0 duplicate, 0 empty, 0 bad; lower data.min_doc_tokens (now {MIN}), or fewer row streams "
        "(world_size x workers x batch_size) so that each gets more shards"
    )
    # a RedPajama-V2 listing whose shard is missing
    mirror = tmp_path / "mirror"
    (mirror / "listings").mkdir(parents=True)
    (mirror / "listings" / "en.txt").write_text("2023-06/0000/en_head\n")
    assert fit_fails(capfd, tmp_path / "run", f"data.source={mirror}", "data.batch_size=1") == (
        f"stuffed-mamba fit: error: data: {mirror} yields no document: no document in its 1 shard(s); 1 shard(s) "
        "could not be read (last error: documents/2023-06/0000/en_head.json.gz: No such file or directory): "
        "check data.source"
    )


def test_rows_per_shard_needs_parquet(tmp_path, capfd):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(ValueError) as e:
        build_dataloader(DataConfig(source="hf://json", hf_data_files=str(tmp_path / "a.jsonl"), tokenizer="bytes",
                                    hf_rows_per_shard=2))  # fmt: skip
    assert str(e.value).startswith("data.hf_rows_per_shard needs parquet files (their footers count the rows)")
    # data inspect words the same advice with its own arguments
    assert (
        main(["data", "inspect", "hf://json", "--data-files", str(tmp_path / "a.jsonl"), "--rows-per-shard", "2"]) == 2
    )
    assert error_line(capfd.readouterr().err).startswith(
        "stuffed-mamba data: error: --rows-per-shard needs parquet files (their footers count the rows)"
    )


def _rows_cfg(path, **kw) -> DataConfig:
    base = dict(source="hf://parquet", hf_data_files=str(path), tokenizer="bytes", min_doc_tokens=MIN,
                train_length=40, segments=3, batch_size=4, hf_rows_per_shard=5, seed=1)  # fmt: skip
    return DataConfig(**{**base, **kw})


def test_row_ranges_partition_the_file_and_feed_each_row_stream_its_own_rows(files):
    loader = build_dataloader(_rows_cfg(files["one"]))
    ds = loader.dataset
    assert ds.tags == ["books.parquet:rows0-4", "books.parquet:rows5-9", "books.parquet:rows10-14",
                       "books.parquet:rows15-19"]  # fmt: skip
    # each range reads its own rows, ids counted in the file, positions in the range
    rows = {name: list(ds.reader.open(name, 0, new_counters())) for name in ds.tags}
    assert [r[2] for name in ds.tags for r in rows[name]] == DOCS
    assert [r[1] for r in rows["books.parquet:rows5-9"]] == [f"books.parquet/{i}" for i in range(5, 10)]
    assert [r[0] for r in rows["books.parquet:rows5-9"]] == list(range(5))
    assert [r[2] for r in ds.reader.open("books.parquet:rows5-9", 3, new_counters())] == DOCS[8:10]
    # row b of the first episode: the first S*T+1 tokens of its own range's documents, EOS-joined
    ep = next(iter(loader))
    for b in range(4):
        (name,) = ds.lanes[b]
        lo = int(name.split(":rows")[1].split("-")[0])
        stream = np.concatenate([np.append(np.frombuffer(t.encode(), np.uint8), 256) for t in DOCS[lo : lo + 5]])
        assert np.array_equal(ep[b, 0].numpy(), stream[:41])
        assert np.array_equal(ep[b, 1].numpy(), stream[40:81])  # segment 1 continues segment 0


@pytest.mark.parametrize("workers", [0, 2])
def test_row_ranges_resume_exactly(files, workers):
    # 7 ranges of 3 rows (~2 KB each) over 2 x max(1, workers) row streams, 301 tokens per row: every
    # stream passes the end of its ranges (and of a pass) within 60 episodes; k stops inside a range
    cfg = _rows_cfg(files["one"], num_workers=workers, batch_size=2, hf_rows_per_shard=3, train_length=100)
    r = stop_and_resume(cfg, n=60, k=13)
    assert same_episodes(r.episodes, r.reference)
    assert r.loader.counters() == r.reference_loader.counters()
    assert r.reference_loader.counters()["epochs"] >= 1


def test_one_file_trains_with_rows_per_shard(files, capfd, tmp_path):
    run_dir = tmp_path / "run"
    rc = main(["fit", TINY, *SMALL, f"run.dir={run_dir}", "data.source=hf://parquet",
               f"data.hf_data_files={files['one']}", "data.hf_rows_per_shard=5", "trainer.max_steps=3"])  # fmt: skip
    _, err = capfd.readouterr()
    assert rc == 0, err
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert list(itertools.islice((run_dir / "tensorboard").glob("events.out.tfevents.*"), 1))
