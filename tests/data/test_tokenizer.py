"""load_tokenizer (contract) and path resolution of the defaults."""

import pytest
from stuffed_mamba.data import DataConfig, load_tokenizer
from stuffed_mamba.data.paths import resolve_local

TEXT = "Mamba-2 learns to forget: état, 状態 and ∆t.\n"


def test_bytes_tokenizer_counts_utf8_bytes_and_round_trips():
    tok = load_tokenizer("bytes")
    ids = tok.encode(TEXT)
    assert ids == list(TEXT.encode("utf-8")) and tok.eos_id == 256 and tok.vocab_size == 257
    assert tok.decode(ids + [tok.eos_id]) == TEXT
    assert tok.encode_batch([TEXT, ""]) == [ids, []]


def test_sample_tokenizer_is_a_small_byte_level_bpe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default path resolves against the package, not the cwd
    tok = load_tokenizer(DataConfig().tokenizer)
    assert 256 < tok.vocab_size <= 4096 and tok.eos_id == 0
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT  # byte-level: any text round-trips
    assert len(ids) <= len(TEXT.encode("utf-8"))  # never more tokens than bytes (the pre-filter relies on it)
    english = "The state of a recurrent model must forget the past to make room for the present. " * 4
    assert len(tok.encode(english)) < 0.5 * len(english)  # merges learned from the sample's English
    assert tok.encode_batch([TEXT, TEXT]) == [ids, ids]


def test_default_source_resolves_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = resolve_local(DataConfig().source)
    assert root is not None and (root / "listings").is_dir()


def test_hub_tokenizer_without_network_or_cache_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="not in the HuggingFace cache"):
        load_tokenizer("EleutherAI/gpt-neox-20b")


def test_missing_tokenizer_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_tokenizer(str(tmp_path / "tokenizer.json"))
