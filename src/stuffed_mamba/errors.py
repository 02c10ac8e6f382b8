"""`first_line(e)`: an exception as the one line a user is shown (the project's errors never show a
traceback for a mistake a user can make). Standard library only: every layer imports it."""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first line of `str(e)`, or the exception's type name when it has no message.

    torch's refusal to unpickle a non-tensor object (`weights_only=True`) is several paragraphs
    whose first line does not name the culprit: the line naming it is kept instead."""
    text = str(e).strip()
    if "Weights only load failed" in text:
        culprit = next((ln.strip() for ln in text.splitlines() if "Unsupported global" in ln), "")
        return f"refused to unpickle a non-tensor object ({culprit or 'unknown global'})"
    return text.splitlines()[0] if text else type(e).__name__
