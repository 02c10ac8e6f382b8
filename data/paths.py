"""Where a relative `source` or `tokenizer` path points.

Relative paths resolve against the current directory first, then against the installed
package's own folder, so the default `data/sample` works from any directory and in a wheel.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SAMPLE_DIR = PACKAGE_DIR / "sample"


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def resolve_local(spec: str) -> Path | None:
    """The existing local path `spec` names, or None when it names none."""
    p = Path(spec).expanduser()
    if p.exists():
        return p
    if not p.is_absolute():
        parts = p.parts
        # "data/sample/..." names the package folder itself (the repo's data/ is the package)
        if parts and parts[0] == "data":
            q = PACKAGE_DIR.joinpath(*parts[1:])
            if q.exists():
                return q
        q = PACKAGE_DIR / p
        if q.exists():
            return q
    return None
