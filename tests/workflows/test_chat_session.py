"""The chat session in process, on a tiny GPT-2: the scripted path's answers and questions back, the session folder
and its resume, and the same conversation through a fake OpenAI-compatible server whose Analyst calls tools (one of
them for a layer the session does not have yet)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agents import WorkbenchSettings
from neuron_core import ModelInterface
from tests.agents.fake_openai import ChatPolicy, FakeOpenAI, tool_results, user_task
from tests.conftest import make_tiny_gpt2
from workflows.chat import ChatSession
from workflows.chat_llm import session_summary

KEY = "sk-test-NEVER-IN-FILES-0123456789"


@pytest.fixture(scope="module")
def tiny_models(tok):
    return {"tiny-gpt2": ModelInterface(make_tiny_gpt2(tok, n_layer=2), tokenizer=tok, name="tiny-gpt2")}


def _settings(tmp_path, **extra):
    base = dict(_env_file=None, llm="scripted", runs_dir=str(tmp_path), max_tokens=1200, max_neurons=6, top_n=2,
                embedder="hidden", detector_n_null=20, detector_ablation=False)
    return WorkbenchSettings(**{**base, **extra})


def _chat(tmp_path, tiny_models, said, **kw):
    return ChatSession(kw.pop("settings", None) or _settings(tmp_path), out=str(tmp_path), models=tiny_models,
                       say=said.append, **kw)


def _trace(session_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (session_dir / "trace.jsonl").read_text().splitlines() if x.strip()]


def _runs(session_dir: Path) -> list[Path]:
    return sorted(p for p in session_dir.iterdir() if (p / "manifest.json").exists())


def test_the_scripted_chat_investigates_answers_and_refuses_to_guess(tmp_path, tiny_models):
    said: list[str] = []
    chat = _chat(tmp_path, tiny_models, said, llm="scripted")
    chat.loop(["/findings", "why is the top neuron polysemantic?", "sing me a song", "investigate layer 1 of tiny-gpt2",
               "/findings layer_summary", "/examples L1/N3", "/neuron L1/N250", "/compare", "/bogus", "/quit",
               "never read"])
    text = "\n".join(said)
    assert "no investigation yet" in said[0]
    assert said[1].startswith("? Which model?")  # a follow-up before anything is known: a question, no run
    assert said[2].startswith("? I did not understand 'sing me a song'")
    assert "[DONE]" in text and "Done: layer 1." in text
    assert "[layer_summary] Layer L1" in text or "[layer_summary] <data>Layer L1" in text
    assert "<data>" in text  # corpus text is quoted as data
    assert "unknown command '/bogus'" in text and "never read" not in text
    assert "usage: /compare 4 [5 ...]" in text
    assert len(_runs(chat.session.root)) == 1  # the unclear lines computed nothing
    chat.close()


def test_follow_ups_reuse_the_session_and_resume_it(tmp_path, tiny_models):
    said: list[str] = []
    chat = _chat(tmp_path, tiny_models, said, llm="scripted")
    chat.loop(["investigate layer 1 of tiny-gpt2", "tell me about the most active neuron", "what does it promote?",
               "compare with layer 0", "/neuron L1/N3", "save the report"])
    root = chat.session.root
    text = "\n".join(said)
    findings = {p.name: json.loads((p / "findings.json").read_text())["findings"] for p in _runs(root)}
    assert len(findings) == 2  # layer 1, then layer 0 for the comparison: nothing computed twice
    layer1 = next(f for name, f in findings.items() if "layer-1" in name)
    top = next(f for f in layer1 if f["kind"] == "top_neurons")["neurons"][0]
    effects = next(f for f in layer1 if f["kind"] == "logit_effects" and f["neurons"] == [top])
    assert f"Through the unembedding, {top} most promotes" in text and f"[{effects['id']}]" in text
    comparison = json.loads((root / "findings.json").read_text())["findings"][-1]
    assert comparison["kind"] == "comparison" and f"[{comparison['id']}]" in text
    assert "layer | analysed | polysemantic | share" in text
    trace = _trace(root)
    computes = [e for e in trace if e["kind"] == "compute"]
    assert [e["layers"] for e in computes] == [[1], [0]]
    assert any(e["kind"] == "reused" and e.get("layers") == [1] for e in trace)
    report = (root / "report.md").read_text()
    assert "compare with layer 0" in report and f"{top} most promotes" in report
    chat.close()

    said.clear()
    again = _chat(tmp_path, tiny_models, said, llm="scripted", resume=str(root))
    again.loop(["what does it promote?", "/layers", "/watch The cat sat on the"])
    text = "\n".join(said)
    assert "L1/N3 most promotes" in text  # 'it' was the last neuron named before the resume
    assert re.search(r"step 1 .* L1/N3=[-+]\d", text) and "summary: 20 tokens generated" in text  # the live monitor
    assert [e["layers"] for e in _trace(root) if e["kind"] == "compute"] == [[1], [0]]
    again.close()

    said.clear()
    single = _chat(tmp_path, tiny_models, said, llm="scripted", resume=str(_runs(root)[0]))
    single.loop(["/layers", "why is the top neuron polysemantic?"])
    assert single.session.root != root and not said[-1].startswith("?")
    single.close()

    said.clear()
    bare = _chat(tmp_path, {}, said, llm="scripted", resume=str(root))  # no model here: reading needs none
    bare.loop(["/findings top_neurons"])
    assert any(line.startswith("F") and "[top_neurons]" in line for line in said), said
    assert "- tiny-gpt2 layers [1]: detected" in session_summary(bare)
    assert bare.session.models == {}  # nothing was loaded to read them
    bare.close()


def test_a_tool_calling_analyst_answers_follow_ups_and_computes_a_missing_layer(tmp_path, tiny_models):
    policy = ChatPolicy(malformed_first=False, extra_examples=False)
    said: list[str] = []
    with FakeOpenAI(policy) as server:
        settings = _settings(tmp_path, llm="openai-compatible", llm_base_url=server.url, llm_model="fake-model",
                             llm_api_key=KEY, llm_retry_base_delay=0.01)
        chat = _chat(tmp_path, tiny_models, said, settings=settings)
        chat.loop(["investigate layer 1 of tiny-gpt2", "why is the top neuron polysemantic?", "what does it promote?",
                   "what about the strongest neuron of layer 0?", "compare layers 1 and 0", "save the report"])
    root = chat.session.root
    text = "\n".join(said)
    chats = [r for r in server.requests if "Question:" in user_task(r)]
    assert chats and all("Session summary:" in user_task(r) for r in chats)
    called = [json.loads(c["function"]["arguments"]) for r in server.requests for m in r["messages"]
              if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    assert {"layer": 0, "top": 3} in called  # a layer the session did not have when the Analyst asked
    computes = [e for e in _trace(root) if e["kind"] == "compute"]
    assert [e["layers"] for e in computes] == [[1], [0]] and computes[1]["why"] == "the Analyst's neuron_stats call"
    outcomes = [r for req in chats for r in tool_results(req)]
    assert not [o for o in outcomes if "error" in o], outcomes
    described = [o for o in outcomes if "n_modes" in o and "finding_id" in o]
    for d in described:
        assert f"{d['neuron']} has score {d['score']:.2f} with {d['n_modes']} modes [{d['finding_id']}]." in text
    assert "score 0.999" not in text.replace("removed by the claim check", "")  \
        or all("score 0.999" in line for line in said if "removed by the claim check" in line)
    assert sum("removed by the claim check" in line for line in said) >= 2
    assert "layer | analysed" in text and KEY not in (root / "trace.jsonl").read_text()
    assert any(e["kind"] == "tool_call" and e["caller"] == "analyst" and e["tool"] == "describe_neuron"
               for e in _trace(root))
    chat.close()
