"""stuffed-mamba: extend Mamba-2 language models to long contexts and watch them learn to forget."""

__version__ = "0.1.0"
