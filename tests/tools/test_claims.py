"""The claim checker: every number in prose is bound to a quantity of the neuron, finding or run it is said of."""

from __future__ import annotations

import pytest

from tests.tools.findings_data import NONSENSE, demo_findings, realistic_findings, small_findings, verdict
from tools.claims import check_claims, remove_sentences, split_sentences
from tools.findings import Finding, quantities_of


def _problems(text: str, findings: list[Finding]) -> str:
    return " | ".join(p for i in check_claims(text, findings).issues for p in i.problems)


def test_the_demo_nonsense_sentence_fails():
    check = check_claims(NONSENSE, demo_findings())
    assert not check.ok
    problems = check.issues[0].problems
    assert any(p.startswith("1.00 ") for p in problems) and any(p.startswith("3 ") for p in problems)
    # even naming the neuron, "a score of 3" is the wrong quantity: 3 is its number of modes
    named = check_claims("L6/N1233 has a polysemanticity score of 3.", demo_findings())
    assert not named.ok and "3 is the n_modes of L6/N1233, not a score quantity" in named.issues[0].problems
    for good in ("L6/N1233 has a polysemanticity score of 1.00 [F005].", "L6/N1233 has 3 modes.",
                 "With 3 modes and a score of 1.00, L6/N1233 is the strongest case.",
                 "Its 3 modes are “months” (50%), “JSON keys” (30%) and “code 3.5” (20%) [F005]."):
        assert check_claims(good, demo_findings()).ok, _problems(good, demo_findings())


def test_true_statements_pass():
    text = ("We profiled 20,000 tokens from 1072 documents at layer 6 of smollm2-135m [F002]. "
            "L6/N12 (score 0.81, p = 0.00498) has 3 modes: “animals” (45%) and “code 3.5” (30%) [F003]. "
            "A neuron is active on 12.3% of tokens on average [F005]. We profiled 20k tokens.")
    check = check_claims(text, small_findings(), ignore=["smollm2-135m"])
    assert check.ok, check.feedback()
    assert check.n_checked == 4


def test_a_number_needs_its_neuron_or_finding():
    # 0.81 is L6/N12's score, but the sentence names no neuron and cites no finding
    problems = _problems("The strongest neuron scores 0.81.", small_findings())
    assert "0.81 is not a run-level quantity" in problems
    assert check_claims("The strongest neuron scores 0.81 [F003].", small_findings()).ok
    assert check_claims("The strongest neuron, L6/N12, scores 0.81.", small_findings()).ok
    # run-level quantities need neither
    assert check_claims("The corpus gave 1072 documents.", small_findings()).ok


def test_false_number_is_caught():
    check = check_claims("L6/N12 has a polysemanticity score of 0.93 [F003].", small_findings())
    assert not check.ok
    assert "0.93" in check.issues[0].problems[0]


def test_number_of_another_neuron_is_caught():
    # 0.61 is L6/N99's score, not L6/N12's
    check = check_claims("L6/N12 scores 0.61.", small_findings())
    assert not check.ok and "L6/N12" in check.issues[0].problems[0]


@pytest.mark.parametrize("text", [
    "L6/N12 has a p-value of 0.81.",          # its score
    "L6/N12 has a score of 0.005.",           # its p-value
    "We profiled 1072 tokens [F002].",         # the number of documents
    "L6/N12 has 2 modes.",                     # no quantity of L6/N12 is 2... and n_modes is 3
    "L6/N99 has a score of 2.",                # its number of modes
    "L6/N12 has a score of 81%.",              # a percentage is a share, not a score
    "Of the 1536 neurons, 3 are polysemantic [F001].",  # no such count
])
def test_the_right_number_with_the_wrong_quantity_word_fails(text):
    assert not check_claims(text, small_findings()).ok, text


def test_each_number_binds_to_the_neuron_written_before_it():
    ok = "L6/N12 (score 0.81) and L6/N99 (score 0.61) are the two cases."
    swapped = "L6/N12 (score 0.61) and L6/N99 (score 0.81) are the two cases."
    assert check_claims(ok, small_findings()).ok
    assert len(check_claims(swapped, small_findings()).issues[0].problems) == 2
    assert check_claims("L6/N12 and L6/N99 score 0.81 and 0.61.", small_findings()).ok


def test_percentages_and_precision():
    ok = check_claims("Its score is 0.8 [F003]. Its first mode holds 45.4% of the mass [F003]. "
                      "L6/N12's first mode holds 45% of its activation. Its share is 0.45 [F003].", small_findings())
    assert ok.ok, ok.feedback()
    for bad in ("Its first mode holds 47% of the mass [F003].", "L6/N12's first mode holds 45.0% of its mass.",
                "L6/N12's share is 0.46."):
        assert not check_claims(bad, small_findings()).ok, bad
    sci = check_claims("L6/N12 has p = 4.98e-03.", small_findings())
    assert sci.ok, sci.feedback()


def test_layer_level_quantities_are_of_the_layer_named():
    findings = [Finding(id=f"F00{i}", kind="layer_summary", claim=f"Layer L{layer}.", artifact="t", source="s",
                        quantities=quantities_of({"n_dead": dead, "n_dense": 12}, layer=layer))
                for i, (layer, dead) in enumerate(((6, 0), (9, 4)), 1)]
    assert check_claims("In layer 9, 4 neurons are dead.", findings).ok
    assert not check_claims("In layer 6, 4 neurons are dead.", findings).ok


def test_unknown_neuron_layer_mode_and_finding_are_caught():
    check = check_claims("L6/N777 is the key neuron. Neuron 4242 is dead. Layer 9 is quiet. See [F099]. "
                         "Mode 7 of L6/N12 is odd.", small_findings())
    problems = " ".join(p for i in check.issues for p in i.problems)
    for word in ("L6/N777", "4242", "layer 9", "F099", "mode 7"):
        assert word in problems
    assert len(check.issues) == 5
    assert check_claims("Mode 2 of L6/N12 holds 30%.", small_findings()).ok
    assert check_claims("Modes 1 and 2 of L6/N12 hold 45% and 30%.", small_findings()).ok
    assert not check_claims("Modes 1 and 4 of L6/N12 hold 45% and 30%.", small_findings()).ok


def test_quoted_label_numbers_are_not_numbers_but_invented_quotes_are():
    assert check_claims("Its second mode is “code 3.5” [F003].", small_findings()).ok
    assert not check_claims("Its second mode is “code 7.5”.", small_findings()).ok


def test_remove_sentences_keeps_the_rest():
    text = "L6/N12 scores 0.81 [F003]. It scores 0.99 too.\n\nAnother paragraph with 1072 documents."
    check = check_claims(text, small_findings())
    clean, removed = remove_sentences(text, check.issues)
    assert removed == ["It scores 0.99 too."]
    assert "0.99" not in clean and "0.81" in clean and "1072" in clean
    assert split_sentences("A 0.5 b. C d!") == ["A 0.5 b.", "C d!"]


def test_mode_shares_in_words_pass_the_check(tmp_path):
    """A verdict whose modes include one seen only among the top examples and one found through the probes: the
    detector tool's finding, quoted into a narrative the way the writer does, passes the check."""
    from agents.scripted import mode_list
    from neuron_core.analysis.types import Mode
    from neuron_core.store import RunFolder
    from tools.findings import FindingStore
    from tools.polysemantic import record_verdict

    modes = [Mode(label="tokens 'bill'/'to'", share=0.713, top_share=0.52, n_examples=30),
             Mode(label="french_words ('le')", share=0.287, top_share=0.22, n_examples=12),
             Mode(label="tokens 'CH'/'al'", share=0.0, top_share=0.26, n_examples=4),
             Mode(label="urls ('http'), found through the probes", share=0.0, top_share=0.0, n_examples=6,
                  found_by_probes=True)]
    store = FindingStore(RunFolder(tmp_path / "run"))
    fid = record_verdict(store, verdict(1378, 0.75, 0.005, modes, z=9.1, separation=0.8), artifact="t.parquet")
    finding = store.get(fid)
    assert "(0% of the mass, 26% of the top examples)" in finding.claim
    assert finding.text("share_text", mode=4) == "found through the probes"
    text = f"L6/N1378 (score 0.75, p = 0.005) has 4 modes: {mode_list(finding)} [{fid}]."
    check = check_claims(text, [finding])
    assert check.ok, check.feedback()
    wrong = text.replace("26% of the top", "36% of the top")
    assert not check_claims(wrong, [finding]).ok


def test_every_claim_the_tools_write_passes_the_check(tmp_path):
    findings = realistic_findings(tmp_path)
    text = " ".join(f"{f.claim} [{f.id}]" for f in findings if f.kind != "run")
    check = check_claims(text, findings)
    assert check.ok, check.feedback()
