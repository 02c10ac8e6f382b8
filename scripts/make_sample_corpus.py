#!/usr/bin/env python3
"""Regenerates data/sample/: a small offline corpus in the RedPajama-V2 layout plus its tokenizer.

Real English text every Debian machine with Python has:
  * Python's language reference topics (`pydoc_data.topics`), one document per topic;
  * the licence texts in /usr/share/common-licenses, one document per licence;
  * prose files from /usr/share/doc (release notes, NEWS, FAQs, protocol and library
    manuals; gzip or plain), at most --max-file-chars of a file, split at paragraph
    boundaries into documents of at most --max-doc-chars characters.
Documents are shuffled (seeded) into 16 head/middle shards and 2 tail shards. Planted
duplicates: copies of earlier documents placed in later head/middle shards and listed in
those shards' duplicates parquet; plus unlisted exact copies inside the tail shards (no
duplicates list there, as in RedPajama-V2), which only the in-stream dedup catches.
The byte-level BPE tokenizer (tokenizers, vocab --vocab-size, EOS "<|endoftext|>" = 0) is
trained on the documents. SOURCES.txt records which files went in.

    python scripts/make_sample_corpus.py [--out data/sample] [--budget-bytes 4000000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from mirror import document_record, write_documents, write_duplicates, write_listing  # noqa: E402

SNAPSHOT = "sample"
N_SHARDS = 8  # x {en_head, en_middle}
N_TAIL = 2
SKIP_SUFFIXES = (".pdf.gz", ".ps.gz", ".tar.gz", ".json.gz", ".html.gz", ".png", ".log.gz", ".xml.gz", ".html")


def prose_score(text: str) -> float:
    """Share of letters and spaces: release notes and manuals score ~0.9, changelogs and code less."""
    head = text[:50000]
    return sum(c.isalpha() or c == " " for c in head) / max(1, len(head))


def read_text(path: Path) -> str | None:
    try:
        raw = path.read_bytes()
        if path.name.endswith(".gz"):
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return None
    text = text.replace("\r\n", "\n").replace("\x0c", "\n")
    return text if "\x00" not in text else None


def split_paragraphs(text: str, max_chars: int) -> list[str]:
    """Pieces of at most ~max_chars, cut at blank lines."""
    pieces, cur, n = [], [], 0
    for para in re.split(r"\n\s*\n", text):
        if n + len(para) > max_chars and cur:
            pieces.append("\n\n".join(cur))
            cur, n = [], 0
        cur.append(para)
        n += len(para) + 2
    if cur:
        pieces.append("\n\n".join(cur))
    return [p.strip() for p in pieces if p.strip()]


def collect(budget: int, max_doc_chars: int, max_file_chars: int) -> tuple[list[dict], list[str]]:
    import pydoc_data.topics

    docs, sources = [], []

    def add(text, url, title):
        docs.append({"text": text, "url": url, "title": title})

    for name in sorted(pydoc_data.topics.topics):
        add(pydoc_data.topics.topics[name].strip(), f"https://docs.python.invalid/reference/{name}", name)
    sources.append(f"pydoc_data.topics ({len(pydoc_data.topics.topics)} topics)")
    lic = Path("/usr/share/common-licenses")
    for p in sorted(lic.glob("*")) if lic.is_dir() else []:
        if p.is_file() and not p.is_symlink() and (t := read_text(p)):
            add(t.strip(), f"https://licenses.invalid/{p.name}", p.name)
            sources.append(str(p))
    used = sum(len(d["text"]) for d in docs)

    candidates = []
    for p in sorted(Path("/usr/share/doc").rglob("*")):
        low = p.name.lower()
        if not p.is_file() or p.is_symlink() or low.endswith(SKIP_SUFFIXES) or "changelog" in low:
            continue
        if not (low.endswith((".gz", ".txt", ".md", ".rst")) or low.startswith(("readme", "news", "faq"))):
            continue
        if p.stat().st_size < 2000:
            continue
        t = read_text(p)
        if t is None or len(t) < 6000 or prose_score(t) < 0.86 or not t.isascii():
            continue
        candidates.append((p, t))
    random.Random(0).shuffle(candidates)  # many packages rather than the alphabet's first few
    seen = set()
    for p, t in candidates:
        if used >= budget:
            break
        if t in seen:  # the same file shipped by several packages
            continue
        seen.add(t)
        t = t[: min(budget - used, max_file_chars)]
        for i, piece in enumerate(split_paragraphs(t, max_doc_chars)):
            add(piece, f"https://debian-doc.invalid{p}#{i}", p.name)
        used += len(t)
        sources.append(str(p))
    return docs, sources


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "sample"))
    ap.add_argument("--budget-bytes", type=int, default=4_000_000, help="characters of /usr/share/doc text")
    ap.add_argument("--max-doc-chars", type=int, default=60_000)
    ap.add_argument("--max-file-chars", type=int, default=120_000, help="characters taken from one file")
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    for sub in ("documents", "duplicates", "listings"):
        for f in sorted((out / sub).rglob("*"), reverse=True) if (out / sub).exists() else []:
            f.unlink() if f.is_file() else f.rmdir()

    docs, sources = collect(args.budget_bytes, args.max_doc_chars, args.max_file_chars)
    rng = random.Random(args.seed)
    rng.shuffle(docs)
    head_middle = [f"{SNAPSHOT}/{i:04d}/en_{b}" for i in range(N_SHARDS) for b in ("head", "middle")]
    tail = [f"{SNAPSHOT}/{i:04d}/en_tail" for i in range(N_TAIL)]
    tags = head_middle + tail
    shards: dict[str, list[dict]] = {t: [] for t in tags}
    for i, d in enumerate(docs):
        tag = tags[i % len(tags)]
        shards[tag].append(document_record(d["text"], url=d["url"], title=d["title"], bucket=tag.rsplit("_", 1)[1]))

    # listed duplicates: copies of documents of earlier shards, appended to later head/middle shards
    listed = {t: [] for t in head_middle}
    for k in range(12):
        src = shards[head_middle[k % 8]][rng.randrange(len(shards[head_middle[k % 8]]))]
        dst = head_middle[8 + k % 8]
        pos = rng.randrange(len(shards[dst]) + 1)
        shards[dst].insert(pos, dict(src))
        listed[dst] = [r + (r >= pos) for r in listed[dst]] + [pos]
    # unlisted exact copies inside the tail shards: only the in-stream dedup catches them
    for t in tail:
        src = rng.choice(shards[t])
        shards[t].insert(rng.randrange(len(shards[t]) + 1), dict(src))

    for t in tags:
        write_documents(out, t, shards[t])
    for t in head_middle:
        digests = [shards[t][r]["digest"] for r in sorted(listed[t])]
        write_duplicates(out, t, sorted(listed[t]), digests)
    write_listing(out, f"en-{SNAPSHOT}-head_middle.txt", head_middle)
    write_listing(out, f"en-{SNAPSHOT}-tail.txt", tail)

    tok = train_tokenizer([d["text"] for d in docs], args.vocab_size)
    tok.save(str(out / "tokenizer.json"))
    n_tokens = [len(e.ids) for e in tok.encode_batch([d["text"] for d in docs])]
    stats = {
        "documents": len(docs),
        "chars": sum(len(d["text"]) for d in docs),
        "tokens": sum(n_tokens),
        "listed_duplicates": sum(len(v) for v in listed.values()),
        "unlisted_duplicates": len(tail),
        **{f"docs_ge_{k}_tokens": sum(n >= k for n in n_tokens) for k in (512, 1024, 2048, 4096, 16384)},
        **{f"tokens_in_docs_ge_{k}": sum(n for n in n_tokens if n >= k) for k in (512, 1024, 2048, 4096)},
    }
    (out / "SOURCES.txt").write_text(
        "Made by scripts/make_sample_corpus.py from these files of the machine it ran on:\n"
        + "".join(s + "\n" for s in sources)
        + "\nStatistics (sample tokenizer; planted duplicates not counted):\n"
        + json.dumps(stats, indent=1)
        + "\n",
        encoding="utf-8",
    )
    print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
