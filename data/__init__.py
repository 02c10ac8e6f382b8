"""The streaming data pipeline (DESIGN section 3): RedPajama-V2, or any hf:// corpus.

stream -> dedup -> length filter -> tokenize -> pack -> episodes [B, S, T+1].
Data never imports the model.
"""

from .config import DataConfig
from .eval_text import load_eval_sequences
from .loader import EpisodeLoader, build_dataloader
from .tokenizer import ByteTokenizer, load_tokenizer

__all__ = [
    "ByteTokenizer",
    "DataConfig",
    "EpisodeLoader",
    "build_dataloader",
    "load_eval_sequences",
    "load_tokenizer",
]
