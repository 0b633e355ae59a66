"""report.md / report.html: a quoted example shows its activating token in bold, whatever the token is, with every
piece of corpus text escaped."""

from __future__ import annotations

import re

import pytest

from neuron_core.analysis.types import Mode, ModeExample
from neuron_core.store import RunFolder
from tests.tools.findings_data import SITE, verdict
from tools import ReportInput, ToolContext, write_report
from tools.polysemantic import record_detection

TOKENS = [".", ",", "**", "_", " ", "(", "word", " hours"]


def _example(token: str, i: int) -> ModeExample:
    return ModeExample(text=f"the icing[[{token}]]next <b>x</b>\ue000 part",
                       token=token, value=3.0 + i, doc_id=i, position=5)


@pytest.fixture()
def report(tmp_path):
    ctx = ToolContext(RunFolder(tmp_path / "run"))
    examples = [_example(t, i) for i, t in enumerate(TOKENS)]
    modes = [Mode(label=f"family {k}", share=0.25, n_examples=2, examples=examples[2 * k:2 * k + 2])
             for k in range(4)]
    v = verdict(12, 0.8, 0.005, modes)
    ctx.detections = {SITE: [v]}
    record_detection(ctx.findings, SITE, [v], artifact="tables/polysemantic.parquet")
    paths = write_report(ctx, ReportInput(request="investigate layer 6", status="complete", model="m", layers=[6],
                                          corpus="c", backend="scripted", narrative="A narrative."))
    return open(paths.markdown, encoding="utf-8").read(), open(paths.html, encoding="utf-8").read()


@pytest.mark.parametrize("token", TOKENS)
def test_the_marked_token_is_bold_in_html(report, token):
    _, html = report
    expected = {" ": "icing <strong>␣</strong> next", " hours": "icing <strong>hours</strong>next"}
    assert expected.get(token, f"icing<strong>{token}</strong>next") in html


def test_no_markdown_emphasis_is_left_literal_and_corpus_html_is_escaped(report):
    markdown, html = report
    assert len(re.findall(r"icing ?<strong>[^<]+</strong>", html)) == len(TOKENS)
    assert "icing**" not in html and "**next" not in html
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html  # corpus HTML stays text
    assert "\ue000" not in html and "\ue001" not in markdown and "\ue000" not in markdown
    # report.md marks the token with <b> (Markdown's ** fails next to punctuation), the token itself escaped
    assert "icing<b>\\.</b>next" in markdown and "icing<b>\\*\\*</b>next" in markdown
    assert "icing <b>hours</b>next" in markdown  # the token's leading space stays, outside the bold
    assert markdown.count("<b>") == len(TOKENS)  # the corpus's own <b> is escaped: \<b\>


def test_the_detection_summary_agrees_in_number(report):
    markdown, _ = report  # one neuron analysed, one detected
    assert "Of 1 neuron analysed in L6, 1 is polysemantic" in markdown.replace("\\", "")
