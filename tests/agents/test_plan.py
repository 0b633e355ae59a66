"""Understanding requests without an LLM, and validating plans (parsed or refined)."""

from __future__ import annotations

import pytest

from agents.plan import PlanError, parse_request, refine_plan, validate_plan


@pytest.mark.parametrize("request_text,model,layers,neurons,corpus,intent", [
    ("investigate layer 6 of gpt2", "gpt2", [6], [], "builtin", "investigate"),
    ("look for polysemantic neurons in layers 3-5 of smollm2-135m using my_corpus.txt", "smollm2-135m", [3, 4, 5],
     [], "my_corpus.txt", "investigate"),
    ("explain neuron 6/1234 of smollm2-135m", "smollm2-135m", [6], ["L6/N1234"], "builtin", "explain"),
    ("Explain L6/N12 in model ./my-model", "./my-model", [6], ["L6/N12"], "builtin", "explain"),
    ("what does neuron 12 of layer 3 do in tiny-gpt2?", "tiny-gpt2", [3], ["L3/N12"], "builtin", "explain"),
    ("investigate layers 2, 4 and 7 of smollm2-135m", "smollm2-135m", [2, 4, 7], [], "builtin", "investigate"),
    ("investigate layers 1 to 3 of meta-llama/Llama-3.2-1B over data/texts.jsonl", "meta-llama/Llama-3.2-1B",
     [1, 2, 3], [], "data/texts.jsonl", "investigate"),
    ("investigate the last layer of smollm2-135m", "smollm2-135m", [-1], [], "builtin", "investigate"),
])
def test_parser(request_text, model, layers, neurons, corpus, intent):
    plan = parse_request(request_text)
    assert (plan.model, plan.layers, plan.neurons, plan.corpus, plan.intent) == (model, layers, neurons, corpus,
                                                                                  intent)
    assert plan.source == "parser"


def test_parser_sizes_and_default_model():
    plan = parse_request("investigate layer 2 on 5k tokens with the top 100 neurons", default_model="smollm2-135m")
    assert (plan.model, plan.max_tokens, plan.max_neurons) == ("smollm2-135m", 5000, 100)
    assert plan.notes and "names no model" in plan.notes[0]


@pytest.mark.parametrize("text,words", [
    ("", "empty"),
    ("investigate smollm2-135m", "which layer"),
    ("investigate layer 6", "which model"),
    ("investigate layers 5-3 of gpt2", "backwards"),
    ("investigate layers 0-20 of gpt2", "at most 8"),
])
def test_parser_rejects_with_words(text, words):
    with pytest.raises(PlanError, match=words):
        parse_request(text)


def test_validation_against_the_model(tmp_path):
    plan = parse_request("investigate layer 40 of smollm2-135m")
    with pytest.raises(PlanError, match=r"layer 40 is out of range: smollm2-135m has 30 layers \(0-29\)"):
        validate_plan(plan, n_layers=30, d_mlp=1536)
    with pytest.raises(PlanError, match="neuron 6/9999 is out of range"):
        validate_plan(parse_request("explain neuron 6/9999 of smollm2-135m"), n_layers=30, d_mlp=1536)
    with pytest.raises(PlanError, match="not found"):
        validate_plan(parse_request("investigate layer 1 of gpt2 using nowhere.txt"), n_layers=12, d_mlp=3072)
    last = validate_plan(parse_request("investigate the last layer of smollm2-135m"), n_layers=30, d_mlp=1536)
    assert last.layers == [29]
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello\n")
    ok = validate_plan(parse_request(f"investigate layer 1 of gpt2 using {corpus}"), n_layers=12, d_mlp=3072)
    assert ok.corpus == str(corpus.resolve())


def test_refinement_is_bounded_and_validated():
    plan = parse_request("investigate layer 6 of smollm2-135m")
    refined = refine_plan(plan, {"layers": [5, 6], "top_n": 3})
    assert refined.layers == [5, 6] and refined.top_n == 3 and refined.source == "parser+llm"
    with pytest.raises(PlanError, match="cannot be changed"):
        refine_plan(plan, {"model": "gpt-5"})
    with pytest.raises(PlanError, match="max_tokens"):
        refine_plan(plan, {"max_tokens": 10**9})
    with pytest.raises(PlanError, match="layers"):
        refine_plan(plan, {"layers": list(range(20))})
    with pytest.raises(PlanError, match="out of range"):
        validate_plan(refine_plan(plan, {"layers": [31]}), n_layers=30, d_mlp=1536)
