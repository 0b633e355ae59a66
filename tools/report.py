"""The report: ``report.md`` and a self-contained ``report.html`` built from findings, detections and figures.

Usage::

    paths = write_report(ctx, ReportInput(request="investigate layer 6 of smollm2-135m", status="complete",
                                          model="smollm2-135m", layers=[6], corpus="builtin", backend="scripted",
                                          narrative=checked_prose, critic=verdict, caveats=[...]))
    paths.markdown, paths.html

Sections: summary (the checked narrative), method, the polysemantic neurons with their modes and examples, other
notable neurons, figures, caveats, the Critic's verdict and the findings index. Everything but the narrative and the
Critic's prose is generated here from findings.json, so its numbers are the findings' own. Corpus text is escaped
(Markdown) and the HTML renders no raw HTML, embeds figures as data URIs and forbids scripts (CSP).
"""

from __future__ import annotations

import base64
import html as _html
import re
from typing import Any, Literal

from pydantic import BaseModel, Field

from tools._base import ToolContext
from tools.figures import dashboard_page
from tools.polysemantic import load_detections

__all__ = ["ReportInput", "ReportPaths", "write_report", "render_markdown", "md_escape"]

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")
# The marked token of a quoted example sits between these private-use characters, which escaped corpus text never
# holds: report.md writes them as <b>…</b>, report.html as <strong>…</strong> (Markdown's ** does not embolden a
# token such as "." between letters, and the HTML renderer lets no raw HTML through).
_BOLD_OPEN, _BOLD_CLOSE = "\ue000", "\ue001"


def _plain(text: str) -> str:
    """``text`` without the bold markers (only the report's own examples place them)."""
    return str(text).replace(_BOLD_OPEN, "").replace(_BOLD_CLOSE, "")


def md_escape(text: str) -> str:
    """Corpus text as literal Markdown (no emphasis, links, HTML or tables can come out of it)."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(_plain(text).split()))


class ReportInput(BaseModel):
    request: str
    status: Literal["complete", "partial", "failed"]
    stop_reason: str | None = None
    model: str
    layers: list[int]
    corpus: str
    backend: str
    backend_reason: str = ""
    narrative: str = Field(default="", description="checked prose (every number and id is in findings.json)")
    critic: str = ""
    caveats: list[str] = Field(default_factory=list)
    method: list[str] = Field(default_factory=list)
    top_n: int = 5
    revisions: int = 0


class ReportPaths(BaseModel):
    markdown: str
    html: str


def _example_md(example: Any, width: int = 70) -> str:
    text = str(example.text)
    m = re.search(r"\[\[(.*?)\]\]", text, re.S)
    if m:
        before, token, after = text[:m.start()], m.group(1), text[m.end():]
    else:
        before, token, after = text, str(example.token), ""
    before, after = before[-width:], after[:width // 2]
    # the token's own leading space (' hours') stays a space in front of the bold word, outside it
    gap_before = " " if before[-1:].isspace() or token[:1].isspace() else ""
    gap_after = " " if after[:1].isspace() or token[-1:].isspace() else ""
    return (f"…{md_escape(before)}{gap_before}{_BOLD_OPEN}{md_escape(token) or '␣'}{_BOLD_CLOSE}{gap_after}"
            f"{md_escape(after)}… ({example.value:.3g})")


def _figures(ctx: ToolContext) -> list[str]:
    folder = ctx.run.path_for("figures")
    return sorted(f"figures/{p.name}" for p in folder.glob("*.png")) if folder.exists() else []


def _caption(path: str) -> str:
    stem = path.rsplit("/", 1)[-1].removesuffix(".png")
    return stem.replace("_", " ")


def _polysemantic_section(ctx: ToolContext, top_n: int) -> list[str]:
    findings = {f.subject: f for f in ctx.findings.by_kind("polysemantic") if f.subject}
    verdicts = [v for items in load_detections(ctx).values() for v in items if v.ref in findings]
    verdicts.sort(key=lambda v: -v.score)
    summaries = ctx.findings.by_kind("polysemantic_summary")
    lines = ["## Polysemantic neurons", ""]
    for s in summaries:
        lines.append(f"- {md_escape(s.claim)} [{s.id}]")
    if summaries:
        lines.append("")
    if not verdicts:
        lines += ["No analysed neuron passed the polysemanticity test.", ""]
        return lines
    for v in verdicts[:top_n]:
        f = findings[v.ref]
        page = dashboard_page(ctx, v.ref)
        link = f" · [dashboard]({page})" if page else ""
        lines += [f"### {v.ref}: score {v.score:.2f}, p = {v.p_value:.3g} [{f.id}]", "",
                  f"{v.n_modes} modes, separation {v.separation:.2f}, z = {v.z_score:.2f}{link}", "",
                  "| mode | share | contexts | top tokens | probe concept | ablation effect |",
                  "|---|---|---|---|---|---|"]
        for m in v.modes:
            tokens = ", ".join(f"`{_plain(t).strip() or '␣'}`".replace("|", "\\|") for t in m.top_tokens[:6])
            concept = md_escape(m.probe_concept) if m.probe_concept else "–"
            if m.probe_concept and m.probe_similarity is not None:
                concept += f" ({m.probe_similarity:.2f})"
            effect = f"{m.effect:.3g}" if m.effect is not None else "–"
            lines.append(f"| {md_escape(m.label)} | {m.share_text} | {m.n_examples} | {tokens} | {concept} | "
                         f"{effect} |")
        lines.append("")
        for m in v.modes:
            for e in m.examples[:2]:
                lines.append(f"> *{md_escape(m.label)}*: {_example_md(e)}")
                lines.append(">")
        if lines[-1] == ">":
            lines.pop()
        lines.append("")
    if len(verdicts) > top_n:
        rest = ", ".join(f"{v.ref} ({v.score:.2f}) [{findings[v.ref].id}]" for v in verdicts[top_n:top_n + 20])
        lines += [f"Also polysemantic: {rest}.", ""]
    return lines


def _notable_section(ctx: ToolContext) -> list[str]:
    lines = ["## Other notable neurons", ""]
    items = ctx.findings.by_kind("layer_summary") + ctx.findings.by_kind("top_neurons") + \
        ctx.findings.by_kind("neuron_verdict") + ctx.findings.by_kind("logit_effects") + ctx.findings.by_kind("note")
    if not items:
        return lines + ["No other analyses were completed.", ""]
    for f in items:
        lines.append(f"- {md_escape(f.claim)} [{f.id}]")
    return lines + [""]


def render_markdown(ctx: ToolContext, inp: ReportInput) -> str:
    """report.md's text (an example's marked token in <b>…</b>)."""
    return _markdown(ctx, inp).replace(_BOLD_OPEN, "<b>").replace(_BOLD_CLOSE, "</b>")


def _markdown(ctx: ToolContext, inp: ReportInput) -> str:
    title = {"complete": "Investigation", "partial": "Partial investigation", "failed": "Failed investigation"}
    lines = [f"# {title[inp.status]}: {md_escape(inp.request)}", ""]
    status = f"**Status:** {inp.status}"
    if inp.stop_reason:
        status += f" — {md_escape(inp.stop_reason)}"
    lines += [status, "", "## Summary", ""]
    lines += [_plain(inp.narrative).strip() or "_No narrative was written._", ""]
    lines += ["## Method", "",
              f"- Model: {md_escape(inp.model)}; layers: {', '.join(str(x) for x in inp.layers)}",
              f"- Corpus: {md_escape(inp.corpus)}",
              f"- Narrative written by: {md_escape(inp.backend)}" + (f" ({md_escape(inp.backend_reason)})"
                                                                      if inp.backend_reason else "")]
    run_facts = ctx.findings.by_kind("run")
    for f in run_facts:
        lines.append(f"- {md_escape(f.claim)} [{f.id}]")
    lines += [f"- {md_escape(m)}" for m in inp.method]
    lines += ["- Every number and neuron id in the summary was checked against `findings.json`; a sentence that "
              "failed the check was revised or removed (see Caveats).", ""]
    lines += _polysemantic_section(ctx, inp.top_n)
    lines += _notable_section(ctx)
    figures = _figures(ctx)
    lines += ["## Figures", ""]
    if ctx.run.path_for("figures/dashboard/index.html").exists():
        lines += ["Interactive dashboard: [figures/dashboard/index.html](figures/dashboard/index.html)", ""]
    if figures:
        for path in figures:
            lines += [f"![{_caption(path)}]({path})", ""]
    else:
        lines += ["No figures were made.", ""]
    lines += ["## Caveats", ""]
    caveats = list(inp.caveats)
    if inp.status != "complete":
        caveats.insert(0, f"This report is {inp.status}: {inp.stop_reason or 'the run did not finish'}.")
    lines += [f"- {md_escape(c)}" for c in caveats] if caveats else ["- None recorded."]
    lines += ["", "## Critic's verdict", "", _plain(inp.critic).strip() or "_The Critic did not run._", ""]
    lines += ["## Findings", "", "| id | kind | claim |", "|---|---|---|"]
    for f in ctx.findings.all():
        lines.append(f"| {f.id} | {f.kind} | {md_escape(f.claim)} |")
    lines.append("")
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;
color:#1d1d1f;line-height:1.5}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}blockquote{color:#444;border-left:3px solid #ccc;
margin:.3em 0;padding:.1em .8em}code{background:#f5f5f5;padding:0 .2em}h3{margin-top:1.6em}
"""


def _to_html(ctx: ToolContext, markdown: str, title: str) -> str:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    body = body.replace(_BOLD_OPEN, "<strong>").replace(_BOLD_CLOSE, "</strong>")

    def inline(m: re.Match[str]) -> str:
        rel = _html.unescape(m.group(1))
        path = ctx.run.path_for(rel)  # refuses anything outside the run folder
        if not path.is_file():
            return m.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="(figures/[^"]+\.png)"', inline, body)
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}</body></html>\n")


def write_report(ctx: ToolContext, inp: ReportInput) -> ReportPaths:
    """Write report.md and report.html into the run folder (atomically); return their paths."""
    marked = _markdown(ctx, inp)
    md_path = ctx.run.write_text("report.md", marked.replace(_BOLD_OPEN, "<b>").replace(_BOLD_CLOSE, "</b>"))
    html_path = ctx.run.write_text("report.html", _to_html(ctx, marked, f"Report: {inp.request[:80]}"))
    return ReportPaths(markdown=str(md_path), html=str(html_path))
