"""The claim checker: numbers and neuron ids in prose must come from findings.json."""

from __future__ import annotations

from tools.claims import check_claims, remove_sentences, split_sentences
from tools.findings import Finding


def _findings():
    return [
        Finding(id="F001", kind="run", claim="Plan: investigate layer 6 of smollm2-135m.", artifact="manifest.json",
                source="controller", numbers={"n_layers": 30, "d_mlp": 1536, "max_tokens": 20000, "layer 6": 6}),
        Finding(id="F002", kind="run", claim="Profiled 20000 tokens from 1072 documents.", artifact="profile",
                source="profile_corpus", numbers={"n_tokens": 20000, "n_docs": 1072}),
        Finding(id="F003", kind="polysemantic", claim="L6/N12 is polysemantic with 3 modes: “animals” (45%), "
                "“code 3.5” (30%).", artifact="tables/polysemantic.parquet", source="detect_polysemantic",
                neurons=["L6/N12"], numbers={"score": 0.8149, "p_value": 0.00498, "n_modes": 3,
                                             "mode 1 share": 0.4537, "mode 2 share": 0.30}),
        Finding(id="F004", kind="polysemantic", claim="L6/N99 is polysemantic.", artifact="tables/polysemantic.parquet",
                source="detect_polysemantic", neurons=["L6/N99"], numbers={"score": 0.61, "n_modes": 2}),
        Finding(id="F005", kind="layer_summary", claim="Layer L6: 1536 neurons.",
                artifact="tables/neuron_stats.parquet", source="neuron_stats",
                numbers={"mean_frac_active": 0.1234, "n_dead": 0}),
    ]


def test_true_statements_pass():
    text = ("We profiled 20,000 tokens from 1072 documents at layer 6 of smollm2-135m [F002]. "
            "L6/N12 (score 0.81, p = 0.00498) has 3 modes: “animals” (45%) and “code 3.5” (30%) [F003]. "
            "A neuron is active on 12.3% of tokens on average [F005]. We profiled 20k tokens.")
    check = check_claims(text, _findings(), ignore=["smollm2-135m"])
    assert check.ok, check.feedback()
    assert check.n_checked == 4


def test_false_number_is_caught():
    check = check_claims("L6/N12 has a polysemanticity score of 0.93 [F003].", _findings())
    assert not check.ok
    assert "0.93" in check.issues[0].problems[0]


def test_number_of_another_neuron_is_caught():
    # 0.61 is L6/N99's score, not L6/N12's
    check = check_claims("L6/N12 scores 0.61.", _findings())
    assert not check.ok and "L6/N12" in check.issues[0].problems[0]


def test_unknown_neuron_layer_and_finding_are_caught():
    check = check_claims("L6/N777 is the key neuron. Neuron 4242 is dead. Layer 9 is quiet. See [F099].",
                         _findings())
    problems = " ".join(p for i in check.issues for p in i.problems)
    assert "L6/N777" in problems and "4242" in problems and "layer 9" in problems and "F099" in problems
    assert len(check.issues) == 4


def test_rounding_and_percent_rules():
    ok = check_claims("Its score is 0.8 [F003]. Its first mode holds 45.4% of the mass [F003].", _findings())
    assert ok.ok, ok.feedback()
    bad = check_claims("Its first mode holds 47% of the mass [F003].", _findings())
    assert not bad.ok
    sci = check_claims("L6/N12 has p = 4.98e-03.", _findings())
    assert sci.ok, sci.feedback()


def test_quoted_label_numbers_are_not_numbers_but_invented_quotes_are():
    assert check_claims("Its second mode is “code 3.5” [F003].", _findings()).ok
    assert not check_claims("Its second mode is “code 7.5”.", _findings()).ok


def test_remove_sentences_keeps_the_rest():
    text = "L6/N12 scores 0.81 [F003]. It scores 0.99 too.\n\nAnother paragraph with 1072 documents."
    check = check_claims(text, _findings())
    clean, removed = remove_sentences(text, check.issues)
    assert removed == ["It scores 0.99 too."]
    assert "0.99" not in clean and "0.81" in clean and "1072" in clean
    assert split_sentences("A 0.5 b. C d!") == ["A 0.5 b.", "C d!"]


def test_mode_shares_in_words_pass_the_check():
    """A verdict whose modes include one seen only among the top examples and one found through the probes: the
    detector tool's claim and numbers, quoted into a narrative the way the scripted writer does, pass the check."""
    from agents.scripted import mode_list
    from neuron_core.analysis import PolysemanticNeuron
    from neuron_core.analysis.types import Mode
    from tools.polysemantic import _mode_numbers, _mode_text

    modes = [Mode(label="tokens 'bill'/'to'", share=0.713, top_share=0.52, n_examples=30),
             Mode(label="french_words ('le')", share=0.287, top_share=0.22, n_examples=12),
             Mode(label="tokens 'CH'/'al'", share=0.0, top_share=0.26, n_examples=4),
             Mode(label="urls ('http'), found through the probes", share=0.0, top_share=0.0, n_examples=6,
                  found_by_probes=True)]
    verdict = PolysemanticNeuron(site="blocks.6.mlp.hook_post", neuron=1378, score=0.75, p_value=0.005, z_score=9.1,
                                 n_modes=4, separation=0.8, modes=modes, summary="")
    finding = Finding(id="F010", kind="polysemantic", artifact="tables/polysemantic.parquet",
                      source="detect_polysemantic", neurons=[verdict.ref],
                      claim=f"{verdict.ref} is polysemantic (score 0.75, p = 0.005) with 4 modes: "
                            f"{_mode_text(verdict)}.",
                      numbers={"score": 0.75, "p_value": 0.005, "n_modes": 4} | _mode_numbers(verdict))
    assert "(0% of the mass, 26% of the top examples)" in finding.claim
    assert "(found through the probes)" in finding.claim
    text = f"{verdict.ref} (score 0.75, p = 0.005) has 4 modes: {mode_list(finding)} [F010]."
    check = check_claims(text, [finding])
    assert check.ok, check.feedback()
    wrong = text.replace("26% of the top", "36% of the top")
    assert not check_claims(wrong, [finding]).ok
