"""The prose filter: what a prose-only model may add to the deterministic narrative."""

from __future__ import annotations

import pytest

from agents.prose import filter_prose, loop_in, shared_phrase
from tests.tools.findings_data import NONSENSE, demo_findings, realistic_findings

BASE = ["Of the 64 most active neurons analysed in layer 6, 9 are polysemantic [F002].",
        "The strongest case is L6/N1233 (score 1.00, p = 0.005), whose 3 modes are “months” (50%), “JSON keys” "
        "(30%) and “code 3.5” (20%) [F005]."]


def _reasons(text: str, **kw) -> list[tuple[str, str]]:
    out = filter_prose(text, demo_findings(), earlier=BASE, **kw)
    return [(d.reason, d.sentence) for d in out.dropped]


def test_a_checked_new_sentence_is_kept():
    text = "Taken together, L6/N1233 responds to calendar words and to code, two unrelated concepts."
    out = filter_prose(text, demo_findings(), earlier=BASE)
    assert out.kept == [text] and not out.dropped and out.text == text
    numbered = "Taken together, L6/N1233 splits its 3 modes between dates and code."
    assert filter_prose(numbered, demo_findings(), earlier=BASE).kept == [numbered]


def test_the_demo_nonsense_is_left_out():
    out = filter_prose(NONSENSE, demo_findings(), earlier=BASE)
    assert not out.kept and out.dropped[0].reason == "repeats itself"
    assert out.dropped[0].detail == "that l6 neurons are"


def test_a_sentence_that_fails_the_check_is_left_out():
    out = filter_prose("Taken together, L6/N1233 has a polysemanticity score of 3.", demo_findings(), earlier=BASE)
    assert not out.kept and out.dropped[0].reason == "fails the check"
    assert "not a score quantity" in out.dropped[0].detail
    unbound = filter_prose("This neuron responds to dates with a score of 1.00 [F005].", demo_findings(),
                           earlier=BASE)
    assert unbound.kept and not unbound.dropped  # bound through the cited finding: L6/N1233's score is 1.00
    wrong = filter_prose("This neuron responds to dates with a score of 0.93 [F005].", demo_findings(), earlier=BASE)
    assert wrong.dropped[0].reason == "fails the check"


def test_a_sentence_about_no_neuron_and_no_finding_is_left_out():
    """What the bundled model wrote into make demo's summary once: every word checks out, it says nothing."""
    said = ("Taken together, the neurons of layer 6 have a number of neurons that are highly active and highly "
            "responsive to the input of the layer 6 layer.")
    out = filter_prose(said, demo_findings(), earlier=BASE)
    assert not out.kept and out.dropped[0].reason in ("repeats itself", "states no finding")
    assert loop_in(said) == "layer 6 layer"
    plain = filter_prose("Taken together, the layer holds many active neurons.", demo_findings(), earlier=BASE)
    assert plain.dropped[0].reason == "states no finding"


def test_repetition_of_the_summary_or_of_itself_is_left_out():
    reasons = _reasons("The strongest case is L6/N1233, a neuron of dates. L6/N1233 fires on on on every date. "
                       "L6/N1233 responds to months and to JSON keys in code. L6/N1233 responds to months and to "
                       "JSON keys.")
    assert reasons == [("repeats an earlier sentence", "The strongest case is L6/N1233, a neuron of dates."),
                       ("repeats itself", "L6/N1233 fires on on on every date."),
                       ("repeats an earlier sentence", "L6/N1233 responds to months and to JSON keys.")]
    assert loop_in("a b c d x a b c d") == "a b c d" and loop_in("one two three four five") is None
    assert shared_phrase("we saw the strongest case is here", BASE) == "the strongest case is"


def test_fragments_limits_and_fence_markers():
    text = ("<data>L6/N1233 fires on month names in dates.</data> L6/N1233 also fires on keys. "
            "A third sentence about L6/N1233 follows here. And a trailing fragment without end")
    out = filter_prose(text, demo_findings(), earlier=BASE, max_sentences=2)
    assert out.kept == ["L6/N1233 fires on month names in dates.", "L6/N1233 also fires on keys."]
    assert [d.reason for d in out.dropped] == ["over the limit", "fragment"]
    assert filter_prose("Too short.", demo_findings()).dropped[0].reason == "fragment"
    with pytest.raises(ValueError):
        filter_prose(text, demo_findings(), max_sentences=-1)


def test_a_neuron_named_twice_or_a_wrong_most_active_neuron_is_left_out(tmp_path):
    """What the bundled model added to make demo's summary at 42ef18a, on the ids of a realistic run: a list that
    names one neuron twice, and a neuron called the most active that the top_neurons finding does not rank first."""
    findings = realistic_findings(tmp_path)
    listed = ("Taken together, L6/N1233, L6/N87, L6/N330, and L6/N87, have the strongest modes of their respective "
              "neural networks.")
    out = filter_prose(listed, findings)
    assert not out.kept and (out.dropped[0].reason, out.dropped[0].detail) == ("repeats itself", "lists L6/N87 twice")
    wrong = "The strongest mode is L6/N330, which is the most active mode in L6."
    out = filter_prose(wrong, findings)
    assert not out.kept and out.dropped[0].reason == "fails the check"
    assert "L6/N330 is not the most active neuron of L6: L6/N1233 is" in out.dropped[0].detail
    right = "The most strongly activating neuron, L6/N1233, also responds to months and to code."
    assert filter_prose(right, findings).kept == [right]
    again = "L6/N1233 responds to months, and zeroing L6/N1233 on them changes the loss."  # named twice, not listed
    assert filter_prose(again, findings).kept == [again]
