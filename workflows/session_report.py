"""The session report: every answer of a chat session as it was checked, with its runs and figures.

Usage::

    md, html = write_session_report(session)      # <session>/report.md and report.html (figures inlined)
"""

from __future__ import annotations

import base64
import html as _html
from pathlib import Path

from workflows.session import Session

__all__ = ["write_session_report", "session_markdown"]

_CSS = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.5}"
        "blockquote{color:#555;border-left:3px solid #ccc;margin-left:0;padding-left:1rem}"
        "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem}img{max-width:100%}")


def _quoted(line: str) -> str:
    return "> " + line.replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_").replace("<", "&lt;")


def session_markdown(session: Session) -> str:
    state = session.state
    out = [f"# Chat session {session.root.name}", "", f"Started {state.created}.", "", "## Runs", "",
           "| run | model | layers | status | made for |", "|---|---|---|---|---|"]
    for r in state.runs:
        out.append(f"| {Path(r.run_dir).name} | {r.model} | {', '.join(map(str, r.layers))} | {r.status} | "
                   f"{r.computed_for or r.request} |")
    out += ["", "## Answers", ""]
    for i, a in enumerate(state.answers, 1):
        out += [f"### {i}. {a.question}", "", a.text or "*(a question back)*", ""]
        if a.data:
            out += [_quoted(line) + "  " for line in a.data] + [""]
        for fig in a.figures:
            if fig.endswith(".png"):
                out += [f"![figure]({fig})", ""]
        if a.removed:
            out += ["Sentences the claim check removed: " + " / ".join(a.removed), ""]
    out += ["Every number and neuron id in an answer was checked against the findings of its runs (or the "
            "session's comparisons); corpus text is quoted, never part of the prose.", ""]
    return "\n".join(out)


def _html_of(markdown: str, title: str) -> str:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)

    def inline(path: str) -> str:
        p = Path(_html.unescape(path))
        return "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii") if p.is_file() else path

    import re

    body = re.sub(r'src="([^"]+\.png)"', lambda m: f'src="{inline(m.group(1))}"', body)
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">"
            f"<title>{_html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}</body></html>\n")


def write_session_report(session: Session) -> tuple[Path, Path]:
    markdown = session_markdown(session)
    md = session.folder.write_text("report.md", markdown)
    html = session.folder.write_text("report.html", _html_of(markdown, f"Chat session {session.root.name}"))
    session.trace.event("report", markdown=str(md), html=str(html), answers=len(session.state.answers))
    return md, html
