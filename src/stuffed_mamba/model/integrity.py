"""Checkpoints that prove they are whole (issue 19).

`torch.load` does not check a zip archive's CRCs: a `.ckpt` with zeroed bytes in the middle of a
tensor loads, and the zeros are trained on. Every checkpoint the project writes carries a manifest,
written last, of every file's size and digest, and every read goes through `verify_checkpoint`
first; a damaged or incomplete one is a `CheckpointDamaged` whose message is one line naming the
file and what is wrong.

- A file (`last.ckpt`, `step-*.ckpt`; torch's zip format): the manifest is the zip archive's
  comment, at the very end of the file (`seal_file`). It holds the digest of every byte before the
  comment-length field, so the file proves itself wherever it is copied, and the existing
  replacement by one atomic rename stays one rename. torch and `zipfile` read such a file as before.
- A folder (DeepSpeed, every ZeRO stage): `stuffed_mamba_complete` inside it, the completeness
  marker of earlier versions, now a JSON manifest of every other file (`seal_folder`), written after
  every rank's shard is on disk and renamed into place.
- Written by an earlier version (no manifest; a marker holding `global_step N`): every zip member's
  CRC is checked (`zipfile.ZipFile.testzip`), and every `*.pt` / `*.ckpt` must be such an archive.

Digest: xxHash's XXH3-128 (`xxhash`, also a dependency of `datasets`), the fastest candidate on this
machine: 3-6x sha256, 8-14x blake2b, 1.6-5x zlib.crc32 (benchmarks/checkpoint_verify.py). It guards
against damage and mixed-up files, not against an adversary (who could as well write a pickle).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ALGORITHM = "xxh3_128"
FOLDER_MANIFEST = "stuffed_mamba_complete"  # inside a checkpoint folder, written last
_KEY = "stuffed_mamba_manifest"  # first key of a manifest; its value is the format version
_EOCD = b"PK\x05\x06"  # zip end-of-central-directory record: 22 bytes + comment
_CHUNK = 8 << 20
_LEGACY_MARKER = re.compile(rb"global_step \d+\n?")
_verified: dict[tuple, bool] = {}  # (path, stat signature) of checkpoints verified in this process


class CheckpointDamaged(ValueError):
    """A checkpoint that cannot prove it is whole; the message is one line."""


def _damaged(path, what: str) -> CheckpointDamaged:
    return CheckpointDamaged(f"{path}: damaged checkpoint ({what})")


def _hasher(algorithm: str):
    if algorithm == "xxh3_128":
        import xxhash

        return xxhash.xxh3_128()
    if algorithm in ("sha256", "blake2b"):
        return hashlib.new(algorithm)
    raise ValueError(f"unknown digest {algorithm!r}")


def file_digest(path: str | os.PathLike, limit: int | None = None, algorithm: str = ALGORITHM) -> str:
    """`ALGORITHM:hex` of the first `limit` bytes of a file (all of it by default)."""
    h = _hasher(algorithm)
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    left = limit if limit is not None else float("inf")
    with open(path, "rb", buffering=0) as f:
        while left > 0:
            n = f.readinto(view[: int(min(_CHUNK, left))])
            if not n:
                break
            h.update(view[:n])
            left -= n
    return f"{algorithm}:{h.hexdigest()}"


# ------------------------------------------------------------------------------------ writing


def seal_file(path: str | os.PathLike, step: int | None = None) -> None:
    """Append the manifest to a complete torch checkpoint file, as its zip comment, and fsync it."""
    path = Path(path)
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(size - 22, 0))
        eocd = f.read(22)
        if len(eocd) != 22 or eocd[:4] != _EOCD or eocd[20:] != b"\0\0":
            raise ValueError(f"{path}: not a torch zip archive without a comment: cannot seal it")
    covered = size - 2  # every byte but the comment length: members, central directory, end record
    manifest = {_KEY: 1, "bytes": covered, "digest": file_digest(path, covered), "step": step}
    comment = json.dumps(manifest, separators=(",", ":")).encode()
    with open(path, "r+b") as f:
        f.seek(covered)
        f.write(struct.pack("<H", len(comment)) + comment)
        f.flush()
        os.fsync(f.fileno())


def seal_folder(folder: str | os.PathLike, step: int | None = None) -> None:
    """Write `FOLDER_MANIFEST` (sizes and digests of every other file) into a complete folder, last."""
    folder = Path(folder)
    names = _files(folder)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(lambda n: file_digest(folder / n), names))
    files = {n: {"bytes": (folder / n).stat().st_size, "digest": d} for n, d in zip(names, digests, strict=True)}
    text = json.dumps({_KEY: 1, "step": step, "files": files}, indent=1) + "\n"
    part = folder / (FOLDER_MANIFEST + ".part")
    with open(part, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, folder / FOLDER_MANIFEST)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself reaches the disk before the folder is renamed into place
    finally:
        os.close(fd)


def _files(folder: Path) -> list[str]:
    skip = {FOLDER_MANIFEST, FOLDER_MANIFEST + ".part"}
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name not in skip)


# ------------------------------------------------------------------------------------ reading


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Raise `CheckpointDamaged` unless the checkpoint at `path` (a file or a folder) is whole."""
    path = Path(path)
    if not path.exists():
        raise CheckpointDamaged(f"{path}: no such checkpoint")
    key = (str(path.resolve()), _signature(path))
    if key in _verified:  # resume reads a checkpoint more than once: verify it once per process
        return
    if path.is_dir():
        _verify_folder(path)
    else:
        _verify_file(path)
    _verified[key] = True


def manifest_step(path: str | os.PathLike) -> int | None:
    """The optimiser step a checkpoint's manifest records (None: no readable manifest), without hashing."""
    path = Path(path)
    try:
        if path.is_dir():
            text = (path / FOLDER_MANIFEST).read_bytes()
            legacy = _LEGACY_MARKER.fullmatch(text)
            step = int(text.split()[1]) if legacy else json.loads(text)["step"]
        else:
            step = _file_manifest(path)[0]["step"]
        return int(step) if step is not None else None
    except (OSError, ValueError, KeyError, TypeError, IndexError, CheckpointDamaged):
        return None


def has_manifest(path: str | os.PathLike) -> bool:
    """Whether a checkpoint was sealed (a manifest, or an earlier version's marker), without hashing."""
    path = Path(path)
    if path.is_dir():
        return (path / FOLDER_MANIFEST).is_file()
    try:
        return path.is_file() and _file_manifest(path)[0] is not None
    except CheckpointDamaged:
        return False


def _signature(path: Path) -> tuple:
    def one(p: Path) -> tuple:
        s = p.stat()
        return (s.st_size, s.st_mtime_ns, s.st_ino, s.st_dev)

    if path.is_dir():
        return tuple((p.relative_to(path).as_posix(), one(p)) for p in sorted(path.rglob("*")) if p.is_file())
    return one(path)


def _file_manifest(path: Path) -> tuple[dict | None, int]:
    """(the manifest in a file's zip comment or None, the offset of its comment length field)."""
    size = path.stat().st_size
    if size == 0:
        raise _damaged(path, "the file is empty")
    with open(path, "rb") as f:
        f.seek(max(0, size - (22 + 0xFFFF)))
        tail = f.read()
    start = size - len(tail)
    pos = tail.rfind(_EOCD)
    while pos >= 0:  # the end record is the one whose comment reaches exactly the end of the file
        if pos + 22 <= len(tail) and pos + 22 + struct.unpack("<H", tail[pos + 20 : pos + 22])[0] == len(tail):
            break
        pos = tail.rfind(_EOCD, 0, pos)
    if pos < 0:
        raise _damaged(path, f"no zip end record in its last bytes: truncated, or not a checkpoint ({size} bytes)")
    comment = tail[pos + 22 :]
    if not comment:
        return None, start + pos + 20
    try:
        manifest = json.loads(comment)
    except ValueError:
        manifest = None
    fields = isinstance(manifest, dict) and isinstance(manifest.get("bytes"), int) and "digest" in manifest
    if not fields or manifest.get(_KEY) != 1:
        raise _damaged(path, "its manifest (the zip comment at its end) is unreadable")
    return manifest, start + pos + 20


def _verify_file(path: Path) -> None:
    manifest, covered = _file_manifest(path)
    if manifest is None:  # written before manifests: the members' CRCs at least
        _check_zip(path)
        return
    if manifest.get("bytes") != covered:
        raise _damaged(
            path, f"{covered} bytes before its manifest, which says {manifest.get('bytes')}: cut or extended"
        )
    try:
        algorithm = str(manifest["digest"]).split(":")[0]
        digest = file_digest(path, covered, algorithm)
    except (KeyError, ValueError) as e:
        raise _damaged(path, f"its manifest is unusable: {e}") from None
    if digest != manifest["digest"]:
        member = _bad_member(path)
        where = f"member {member} fails its CRC check" if member else "in the zip's headers or directory"
        raise _damaged(path, f"its bytes differ from the digest in its manifest: {where}")


def _bad_member(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip()
    except Exception:  # noqa: BLE001 - only a hint for the message
        return None


def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except Exception as e:  # noqa: BLE001 - zipfile raises many kinds on damaged headers
        raise _damaged(path, f"not a readable zip archive: {str(e) or type(e).__name__}") from None
    if bad is not None:
        raise _damaged(path, f"member {bad} fails its CRC check")


def _verify_folder(folder: Path) -> None:
    marker = folder / FOLDER_MANIFEST
    text = marker.read_bytes() if marker.is_file() else None
    if text is None or _LEGACY_MARKER.fullmatch(text):
        _verify_legacy_folder(folder)
        return
    try:
        manifest = json.loads(text)
        if manifest.get(_KEY) != 1:
            raise ValueError
        listed = {name: (int(e["bytes"]), str(e["digest"])) for name, e in manifest["files"].items()}
    except (ValueError, AttributeError, KeyError, TypeError):
        raise _damaged(marker, "the folder's manifest is unreadable") from None
    present = set(_files(folder))
    problems = [(n, "missing: the folder's manifest lists it") for n in sorted(set(listed) - present)]
    problems += [(n, "not in the folder's manifest: a foreign file") for n in sorted(present - set(listed))]
    for name in sorted(set(listed) & present):
        want, have = listed[name][0], (folder / name).stat().st_size
        if have != want:
            cut = "truncated" if have < want else "too long"
            problems.append((name, f"{cut}: {have} bytes, the folder's manifest says {want}"))
    if not problems:
        names = sorted(listed)
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            digests = list(pool.map(lambda n: _digest_as(folder / n, listed[n][1]), names))
        problems = [
            (n, "its bytes differ from the digest in the folder's manifest: damaged, or a foreign file")
            for n, d in zip(names, digests, strict=True)
            if d != listed[n][1]
        ]
    if problems:
        name, what = problems[0]
        more = f"; and {len(problems) - 1} more problem(s)" if len(problems) > 1 else ""
        raise _damaged(folder / name, what + more)


def _digest_as(path: Path, recorded: str) -> str:
    try:
        return file_digest(path, None, recorded.split(":")[0])
    except ValueError as e:
        raise _damaged(path, f"the folder's manifest is unusable: {e}") from None


def _verify_legacy_folder(folder: Path) -> None:
    """Folders from before manifests: every torch file (`*.pt`, `*.ckpt`, or any zip) passes its CRCs."""
    for name in _files(folder):
        p = folder / name
        if p.suffix in (".pt", ".ckpt") or zipfile.is_zipfile(p):
            _check_zip(p)
