"""`load_tokenizer(spec)` (contract): the built-in byte tokenizer, a tokenizer.json, or a hub name.

Every tokenizer here adds no special tokens of its own: the pipeline appends EOS after each
document itself. `encode_arrays` is the pipeline's fast path (int32 numpy arrays, one
`tokenizers` batch call using its Rust threads).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .paths import resolve_local

# the EOS names of common byte-level BPE vocabularies, in order of preference
EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>")


class ByteTokenizer:
    """256 byte tokens plus EOS = 256; token count == UTF-8 byte count, exactly."""

    eos_id = 256
    vocab_size = 257
    name = "bytes"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.int32) for t in texts]

    def decode(self, ids) -> str:
        b = bytes(int(i) for i in ids if 0 <= int(i) < 256)
        return b.decode("utf-8", errors="replace")


class HFTokenizer:
    """A `tokenizers.Tokenizer` with the small interface the project uses."""

    def __init__(self, tok, name: str):
        self._tok = tok
        self.name = name
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        eos = next((t for t in EOS_NAMES if tok.token_to_id(t) is not None), None)
        if eos is None:
            raise ValueError(f"tokenizer {name!r} has no EOS token (looked for {', '.join(EOS_NAMES)})")
        self.eos_token = eos
        self.eos_id = tok.token_to_id(eos)

    @property
    def backend(self):
        """The underlying `tokenizers.Tokenizer`."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=False)]

    def encode_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        encs = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encs]

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


def load_tokenizer(spec: str):
    """ "bytes" | a tokenizer.json (or a folder holding one) | a HuggingFace hub name.

    Returns an object with `encode(text) -> list[int]`, `encode_batch(texts)`, `decode(ids)`,
    `eos_id` and `vocab_size`. Hub names need network access or a cached copy.
    """
    from tokenizers import Tokenizer

    if spec == "bytes":
        return ByteTokenizer()
    local = resolve_local(spec)
    if local is not None:
        path = local / "tokenizer.json" if local.is_dir() else local
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer folder {str(local)!r} holds no tokenizer.json")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise ValueError(f"cannot read tokenizer file {str(path)!r}: {e}") from None
        return HFTokenizer(tok, str(path))
    if spec.endswith(".json") or os.sep in spec and not _looks_like_hub_name(spec):
        raise FileNotFoundError(f"tokenizer file {spec!r} not found")
    path = _hub_file(spec)
    return HFTokenizer(Tokenizer.from_file(path), spec)


def _hub_file(name: str) -> str:
    """The hub's tokenizer.json for `name`: the local HuggingFace cache first, then the network."""
    import huggingface_hub as hub

    cached = hub.try_to_load_from_cache(name, "tokenizer.json")
    if isinstance(cached, str):
        return cached
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise RuntimeError(f"tokenizer {name!r} is not in the HuggingFace cache and HF_HUB_OFFLINE is set")
    try:
        return hub.hf_hub_download(name, "tokenizer.json")
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeError(
            f"cannot load tokenizer {name!r} from the HuggingFace hub (no network and no cached copy?): {first}"
        ) from None


def _looks_like_hub_name(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not Path(spec).is_absolute() and not spec.startswith(".")
