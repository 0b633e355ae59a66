"""Turning token strings (untrusted corpus text) into labels people can read.

Usage::

    token_label(" cat")          # '·cat'   spaces made visible (for tick labels)
    token_label("\n")            # '↵'
    strip_text("\n")             # '↵'      for token strips, where the space itself is visible
    mpl_text("$5 and $6")        # '\\$5 and \\$6'  matplotlib would otherwise read it as mathtext
    shorten("a long context", 8) # 'a long …'
"""

from __future__ import annotations

__all__ = ["token_label", "strip_text", "mpl_text", "shorten"]

_VISIBLE = {"\n": "↵", "\r": "␍", "\t": "⇥"}


def _controls(text: str) -> str:
    out = []
    for ch in text:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def shorten(text: str, width: int) -> str:
    """Cut ``text`` to ``width`` characters, ending with an ellipsis when cut."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def token_label(token: str, width: int = 14) -> str:
    """A one-line label for a tick: whitespace and control characters made visible, cut to ``width``."""
    if token == "":
        return "∅"
    return shorten(_controls(token).replace(" ", "·"), width)


def strip_text(token: str) -> str:
    """Text of a token box in a strip: spaces kept (the box shows them), newlines and controls made visible."""
    return _controls(token) if token else "∅"


def mpl_text(text: str) -> str:
    """Escape what matplotlib would interpret: ``$`` starts mathtext (and may raise on corpus text)."""
    return text.replace("$", r"\$")
