"""Safe HTML plumbing for the dashboards: JSON for <script> blocks, a hash-based CSP, token spans.

Usage::

    safe_json({"text": "</script><b>"})     # '{"text": "\\u003c/script\\u003e\\u003cb\\u003e"}'
    csp([script_source])                   # "default-src 'none'; script-src 'self' file: 'sha256-…'; …"
    plot_text("<b>x</b>")                  # '&lt;b&gt;x&lt;/b&gt;' (plotly reads a subset of HTML in labels)
    token_spans(example, scale)            # [{"text": "·cat", "style": "background:…", "tip": "…", "strong": …}]

Corpus text is untrusted everywhere: templates autoescape it, JSON escapes ``<``, ``>``, ``&`` (and the two
JavaScript line separators), plotly labels are HTML-escaped, and the CSP only runs the page's own scripts (by hash)
and the plotly.js file next to it, so even a missed escape could not run injected code.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from typing import Any

import numpy as np

from neuron_core.viz._source import TokenExample
from neuron_core.viz._text import strip_text

__all__ = ["safe_json", "csp", "plot_text", "token_spans", "activation_style", "to_builtin"]

_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def to_builtin(obj: Any) -> Any:
    """numpy and non-finite floats -> JSON-ready Python (NaN/inf become None)."""
    if isinstance(obj, dict):
        return {str(k): to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_builtin(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_builtin(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def safe_json(obj: Any) -> str:
    """JSON that can sit inside <script>: ``<``, ``>``, ``&`` only occur inside strings, so escaping them there
    keeps the JSON equal while ``</script>`` or ``<!--`` can never appear."""
    text = json.dumps(to_builtin(obj), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for raw, escaped in _JSON_ESCAPES.items():
        text = text.replace(raw, escaped)
    return text


def script_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii") + "'"


def csp(scripts: list[str]) -> str:
    """A Content-Security-Policy allowing only these inline scripts (by hash) and local script files."""
    hashes = " ".join(script_hash(s) for s in scripts)
    return ("default-src 'none'; "
            f"script-src 'self' file: {hashes}; "
            "style-src 'unsafe-inline'; img-src data: blob:; font-src data:; "
            "base-uri 'none'; form-action 'none'")


def plot_text(text: str) -> str:
    """Text for plotly labels and hovers: plotly renders a subset of HTML tags, so escape them."""
    return html.escape(str(text), quote=False)


def activation_style(value: float | None, scale: float) -> str:
    """Inline CSS of a token's background: red for positive, blue for negative, opacity by |value| / scale."""
    if value is None or not math.isfinite(value) or scale <= 0:
        return ""
    alpha = min(abs(value) / scale, 1.0) * 0.85
    rgb = "215,48,39" if value > 0 else "69,117,180"
    color = ";color:#fff" if alpha > 0.55 else ""
    return f"background:rgba({rgb},{alpha:.3f}){color}"


def token_spans(example: TokenExample, scale: float) -> list[dict[str, Any]]:
    """The spans of one example context: display text, style, hover text and whether it is the example token."""
    out = []
    for i, (token, value) in enumerate(zip(example.tokens, example.values, strict=True)):
        strong = i == example.index
        shown = repr(token)
        if value is None:
            tip = f"{shown}: context (a profile keeps only the example token's activation)"
        else:
            tip = f"{shown}: {value:+.4g}"
        if strong:
            tip += f"  [doc {example.doc_id}, position {example.position}]"
        out.append({"text": strip_text(token), "style": activation_style(value, scale), "tip": tip,
                    "strong": strong})
    return out
