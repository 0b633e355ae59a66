"""The follow-up parser: each sentence of the grammar, its intent and its unresolved references."""

from __future__ import annotations

import pytest

from agents.followups import GRAMMAR, parse_followup


@pytest.mark.parametrize(("text", "intent", "neuron", "mode", "layers"), [
    ("investigate layer 3 of smollm2-135m", "investigate", None, None, [3]),
    ("why is the top neuron polysemantic?", "explain", ("top", None, None, None), None, []),
    ("why is L3/N165 polysemantic?", "explain", ("ref", 3, 165, None), None, []),
    ("tell me about neuron 12 of layer 4", "explain", ("ref", 4, 12, None), None, [4]),
    ("what about neuron 12?", "explain", ("index", None, 12, None), None, []),
    ("the second one?", "explain", ("ordinal", None, None, 2), None, []),
    ("describe the top neuron of layer 4", "explain", ("top", 4, None, None), None, [4]),
    ("tell me about the most active neuron", "explain", ("active", None, None, None), None, []),
    ("show me its examples for the second mode", "examples", ("focus", None, None, None), ("index", 2, None), []),
    ("examples of mode 3 of L2/N7", "examples", ("ref", 2, 7, None), ("index", 3, None), []),
    ("compare with layer 4", "compare", None, None, [4]),
    ("compare layers 3 to 5", "compare", None, None, [3, 4, 5]),
    ("ablate it on the date examples", "ablate", ("focus", None, None, None), ("concept", None, "date"), []),
    ("ablate it on that mode", "ablate", ("focus", None, None, None), ("focus", None, None), []),
    ("what does it promote?", "promotes", ("focus", None, None, None), None, []),
    ("which tokens does L6/N12 suppress", "promotes", ("ref", 6, 12, None), None, []),
    ("open its dashboard", "dashboard", ("focus", None, None, None), None, []),
    ("save the report", "report", None, None, []),
])
def test_each_sentence_of_the_grammar(text, intent, neuron, mode, layers):
    f = parse_followup(text)
    assert f.intent == intent
    if neuron is None:
        assert f.neuron is None
    else:
        assert (f.neuron.kind, f.neuron.layer, f.neuron.index, f.neuron.rank) == neuron
    assert (None if f.mode is None else (f.mode.kind, f.mode.index, f.mode.concept)) == mode
    assert f.layers == layers


@pytest.mark.parametrize("text", ["sing me a song", "", "investigate", "compare", "hmm?"])
def test_an_unclear_sentence_gets_a_question_never_a_guess(text):
    f = parse_followup(text)
    assert f.intent == "unclear" and f.question.endswith("/help lists what I understand.")


def test_the_grammar_names_every_example_it_promises():
    for line in ("why is L3/N344 polysemantic?", "compare with layer 4", "ablate it on the log examples",
                 "what does it promote?", "open its dashboard", "save the report"):
        assert line in GRAMMAR and parse_followup(line).intent != "unclear"
