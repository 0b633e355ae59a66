"""The request parser and the campaign loader, fuzzed: whatever comes in, only a typed error comes out."""

from __future__ import annotations

import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.plan import Plan, PlanError, parse_request
from workflows.campaign import Campaign, load_campaign

WORDS = st.sampled_from(["investigate", "layer", "layers", "neuron", "explain", "of", "in", "smollm2-135m", "gpt2",
                         "using", "6", "3-5", "-1", "99999999999999999999", "6/1233", "L6/N12", "and", ",", "top",
                         "tokens", "0", "compare", "my_corpus.txt", "with", "hf:", "polysemantic", "\x00", "é"])
REQUESTS = st.one_of(st.text(max_size=200), st.lists(WORDS, max_size=14).map(" ".join))


@settings(max_examples=400, deadline=None)
@given(REQUESTS)
def test_the_request_parser_gives_a_plan_or_a_plan_error(text):
    try:
        plan = parse_request(text, default_model="smollm2-135m")
    except PlanError as exc:
        assert str(exc)  # said in words
    else:
        assert isinstance(plan, Plan) and plan.layers is not None


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(string.printable, max_size=30))
KEYS = st.sampled_from(["request", "model", "layers", "corpus", "max_tokens", "max_neurons", "top_n", "llm", "seed",
                        "embedder", "device", "colour", "name", "defaults", "requests"])
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(KEYS, inner, max_size=4)), max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(VALUES, st.text(max_size=300)))
def test_the_campaign_loader_gives_a_campaign_or_a_value_error(tmp_path, data):
    path = tmp_path / "fuzz.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    try:
        campaign = load_campaign(path)
    except ValueError as exc:
        assert str(path) in str(exc) or "not found" in str(exc)
    else:
        assert isinstance(campaign, Campaign) and campaign.requests
