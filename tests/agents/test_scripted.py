"""The deterministic writer: reads like a researcher's summary, and every number it writes passes the check."""

from __future__ import annotations

import json
from pathlib import Path

from agents.plan import Plan
from agents.runner import TurnFacts
from agents.scripted import plural, scripted_narrative
from tests.tools.findings_data import realistic_findings
from tools.claims import check_claims, split_sentences
from tools.findings import Finding, FindingsDocument, Label, Quantity, quantities_of

DEMO = Path(__file__).parents[1] / "tools" / "data" / "demo_findings.json"


def _neuron(fid: str, ref: str, verdict: str, score: float, p: float, modes: list[tuple[str, str, float]]) -> Finding:
    kind = "polysemantic" if verdict == "detected" else "neuron_verdict"
    quantities = quantities_of({"score": score, "p_value": p, "n_modes": len(modes), "z_score": 6.1}, neuron=ref)
    labels: list[Label] = []
    for i, (label, share_text, share) in enumerate(modes, 1):
        quantities.append(Quantity(name="share", value=share, neuron=ref, mode=i))
        labels += [Label(name="mode", text=label, neuron=ref, mode=i),
                   Label(name="share_text", text=share_text, neuron=ref, mode=i)]
    return Finding(id=fid, kind=kind, claim=f"{ref}.", artifact="t.parquet", source="detect_polysemantic",
                   neurons=[ref], verdict=verdict, quantities=quantities, labels=labels)


def _findings(n_poly: int = 7, n_border: int = 3, n_screened: int | None = None) -> list[Finding]:
    screened = {} if n_screened is None else {"n_screened": n_screened}
    return [
        Finding(id="F001", kind="run", claim="Profiled.", artifact="profile/profile.json", source="profile_corpus",
                quantities=quantities_of({"n_tokens": 20000, "n_docs": 512})),
        Finding(id="F002", kind="polysemantic_summary", claim="Summary.", artifact="t.parquet", source="d",
                neurons=["L6/N1233", "L6/N87"], labels=[Label(name="site", text="L6", layer=6)],
                quantities=quantities_of({"n_analysed": 64, "n_polysemantic": n_poly, "n_borderline": n_border,
                                          **screened}, layer=6)),
        _neuron("F003", "L6/N87", "detected", 0.7712, 0.01, [("weekdays", "51%", 0.51), ("chemistry", "29%", 0.29),
                                                              ("sports", "20%", 0.2)]),
        _neuron("F004", "L6/N1233", "detected", 0.8149, 0.00498, [("months", "55%", 0.55),
                                                                  ("JSON keys", "40%", 0.40)]),
        _neuron("F005", "L6/N260", "borderline", 0.5312, 0.0448, [("animals", "60%", 0.6), ("music", "40%", 0.4)]),
        _neuron("F006", "L6/N5", "not detected", 0.2, 0.41, [("plain text", "100%", 1.0)]),
        Finding(id="F007", kind="layer_summary", claim="Layer.", artifact="t.parquet", source="neuron_stats",
                quantities=quantities_of({"n_neurons": 1536, "n_dead": 0, "n_dense": 1,
                                          "mean_frac_active": 0.1234}, layer=6)),
        Finding(id="F008", kind="top_neurons", claim="Top.", artifact="t.parquet", source="neuron_stats",
                neurons=["L6/N1233", "L6/N87"],
                quantities=[Quantity(name="max", value=4.25, neuron="L6/N1233"),
                            Quantity(name="max", value=3.91, neuron="L6/N87")]),
    ]


def _plan(**update) -> Plan:
    return Plan(request="investigate layer 6 of smollm2-135m", model="smollm2-135m", layers=[6], **update)


def test_the_narrative_reads_like_a_researchers_summary():
    text = scripted_narrative(TurnFacts(plan=_plan(), findings=_findings()))
    assert text.split("\n\n") == [
        "We profiled 20,000 tokens from 512 documents at layer 6 [F001]. "
        "Of the 64 neurons analysed in layer 6, 7 are polysemantic and 3 borderline [F002]. "
        "The strongest case is L6/N1233 (score 0.81, p = 0.00498), whose 2 modes are “months” (55%) and "
        "“JSON keys” (40%) [F004].",
        "L6/N87 (score 0.77, p = 0.01) has 3 modes: “weekdays” (51%), “chemistry” (29%) and “sports” (20%) [F003]. "
        "L6/N260 (score 0.53, p = 0.0448) [F005] is borderline: at this sample size the test can call it neither "
        "polysemantic nor clean. "
        "L6/N5 does not pass the test (score 0.20, p = 0.41) [F006].",
        "The most strongly activating neurons are L6/N1233 (max 4.25) and L6/N87 (max 3.91) [F008]. "
        "In layer 6, no neuron is dead and 1 is dense; on average a neuron is active on 12.3% of tokens [F007].",
    ]
    assert check_claims(text, _findings()).ok


def test_the_screen_is_named_with_its_count():
    """A detection whose neurons a screen picked says so, with both counts, and the claim check accepts it."""
    findings = _findings(n_screened=1536)
    text = scripted_narrative(TurnFacts(plan=_plan(), findings=findings))
    assert ("Of the 64 neurons analysed in layer 6 (the most promising of its 1,536 by a quick screen), 7 are "
            "polysemantic and 3 borderline [F002].") in text
    assert check_claims(text, findings).ok
    wrong = text.replace("1,536 by", "1,024 by")
    assert not check_claims(wrong, findings).ok


def test_counts_read_in_the_singular_and_plural():
    one = scripted_narrative(TurnFacts(plan=_plan(), findings=_findings(n_poly=1, n_border=1)))
    assert "Of the 64 neurons analysed in layer 6, 1 is polysemantic and 1 borderline [F002]." in one
    none = scripted_narrative(TurnFacts(plan=_plan(), findings=_findings(n_poly=0, n_border=0)))
    assert "None of the 64 neurons analysed in layer 6 is polysemantic [F002]." in none
    only_borderline = scripted_narrative(TurnFacts(plan=_plan(), findings=_findings(n_poly=0, n_border=2)))
    assert "layer 6, none is polysemantic and 2 are borderline [F002]." in only_borderline
    assert plural(1, "mode") == "1 mode" and plural(3, "mode") == "3 modes" and plural(1, "document") == "1 document"
    assert plural(20000, "token") == "20,000 tokens"


def test_several_borderline_neurons_share_one_sentence():
    findings = _findings() + [_neuron("F009", "L6/N9", "borderline", 0.51, 0.0498, [("food", "50%", 0.5),
                                                                                   ("weather", "50%", 0.5)])]
    text = scripted_narrative(TurnFacts(plan=_plan(), findings=findings))
    assert ("L6/N260 (score 0.53, p = 0.0448) [F005] and L6/N9 (score 0.51, p = 0.0498) [F009] are borderline: at "
            "this sample size the test can call them neither polysemantic nor clean.") in text
    assert check_claims(text, findings).ok


def _sentences_are_distinct(text: str) -> None:
    sentences = split_sentences(text)
    assert len(sentences) == len(set(sentences))
    from agents.prose import loop_in

    assert not [s for s in sentences if loop_in(s)]


def test_the_whole_narrative_of_a_realistic_run_passes_the_check(tmp_path):
    findings = realistic_findings(tmp_path)
    text = scripted_narrative(TurnFacts(plan=_plan(), findings=findings))
    check = check_claims(text, findings, ignore=["smollm2-135m", "builtin"])
    assert check.ok and check.n_checked >= 8, check.feedback()
    assert "3 borderline" in text and "L6/N1001 does not pass the test" in text
    _sentences_are_distinct(text)


def test_the_whole_narrative_of_the_demo_runs_findings_passes_the_check():
    """findings.json of `python -m workflows.run "investigate layer 6 of smollm2-135m" --llm scripted`."""
    findings = FindingsDocument.model_validate(json.loads(DEMO.read_text(encoding="utf-8"))).findings
    text = scripted_narrative(TurnFacts(plan=_plan(), findings=findings))
    check = check_claims(text, findings, ignore=["smollm2-135m", "builtin-v1", "builtin"])
    assert check.ok and check.n_checked >= 6, check.feedback()
    assert text.startswith("We profiled 20,000 tokens from 1,068 documents at layer 6 [F002].")
    _sentences_are_distinct(text)
