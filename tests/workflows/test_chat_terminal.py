"""The chat as a user meets it: the real program in a pseudo-terminal (pexpect), the scripted backend, the bundled
SmolLM2. One 12-turn conversation with the four lines that used to fail (a follow-up with no layer, "compare with
layer 4", "/neuron L3/N5" after it), a Ctrl-C during a profile, and the session resumed in a new process. The
answers' neuron ids and numbers are compared with the findings the runs wrote."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pexpect
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "> "


def _spawn(args: list[str], llm: str = "scripted") -> pexpect.spawn:
    env = {**os.environ, "TERM": "dumb", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           "PROMPT_TOOLKIT_NO_CPR": "1"}
    child = pexpect.spawn(sys.executable, ["-m", "workflows.chat", "--llm", llm, *args], cwd=str(ROOT),
                          env=env, encoding="utf-8", timeout=300, dimensions=(60, 500),
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    child.expect(PROMPT)
    return child


def _say(child: pexpect.spawn, line: str) -> str:
    """Send one line; what the chat printed before its next prompt."""
    child.sendline(line)
    child.expect(r"\n" + PROMPT)
    return child.before.replace("\r", "")


def _findings(run: Path) -> list[dict]:
    return json.loads((run / "findings.json").read_text())["findings"]


def _run_of(session: Path, layer: int) -> Path:
    suffix = f"layer-{layer}-of-smollm2-135m"
    return next(p for p in sorted(session.iterdir()) if p.is_dir() and p.name.endswith(suffix))


def _q(name: str, f: dict, **where) -> float:
    return next(q["value"] for q in f["quantities"] if q["name"] == name
                and all(q.get(k) == v for k, v in where.items()))


def _trace(session: Path) -> list[dict]:
    return [json.loads(line) for line in (session / "trace.jsonl").read_text().splitlines() if line.strip()]


def _wait_for_capture(session: Path, child: pexpect.spawn, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert child.isalive()
        runs = [p for p in session.iterdir() if p.name.endswith("layer-4-of-smollm2-135m")]
        for run in runs:
            trace = run / "trace.jsonl"
            if trace.exists() and '"to": "CAPTURE"' in trace.read_text():
                return
        time.sleep(0.1)
    raise AssertionError("the layer-4 run never reached CAPTURE")


def _mode_word(f: dict) -> tuple[int, str]:
    """The first mode whose label holds a word (three letters or more; a mode of digits and symbols has none), and
    that word."""
    labels = sorted((x["mode"], x["text"]) for x in f["labels"] if x["name"] == "mode")
    for mode, label in labels:
        words = re.findall(r"[A-Za-z]{3,}", label.replace("tokens", ""))
        if words:
            return mode, words[0].lower()
    raise AssertionError(f"no mode label with a word: {labels}")


def _screen(summary: dict) -> str:
    """How a summary's screen reads in prose: the layer's neuron count when a screen picked the analysed ones."""
    counts = {q["name"]: q["value"] for q in summary["quantities"]}
    if counts.get("n_screened", 0) <= counts["n_analysed"]:
        return ""
    return f" (the most promising of its {int(counts['n_screened']):,} by a quick screen)"


@pytest.mark.timeout(900)
def test_a_twelve_turn_conversation_with_ctrl_c_and_resume(tmp_path):
    child = _spawn(["--out", str(tmp_path)])
    session = Path(re.search(r"session folder (\S+)", child.before).group(1))

    out = _say(child, "investigate layer 3 of smollm2-135m")  # 1
    run3 = _run_of(session, 3)
    f3 = _findings(run3)
    poly = sorted((f for f in f3 if f["kind"] == "polysemantic"), key=lambda f: _q("rank", f))
    assert poly, "the default settings find polysemantic neurons in layer 3"
    summary = next(f for f in f3 if f["kind"] == "polysemantic_summary")
    n_poly = int(_q("n_polysemantic", summary))
    assert (f"Of {int(_q('n_analysed', summary))} neurons analysed in layer 3{_screen(summary)}, "
            f"{n_poly} {'is' if n_poly == 1 else 'are'} polysemantic [{summary['id']}]") in out
    top = poly[0]
    ref = top["neurons"][0]

    out = _say(child, "why is the top neuron polysemantic?")  # 2: no layer named, the session knows it
    assert f"{ref} is polysemantic [{top['id']}]: score {_q('score', top):.2f}, p = {_q('p_value', top):.3g}" in out
    assert f"{int(_q('n_modes', top))} modes" in out and "which layer" not in out

    out = _say(child, "show me its examples for the second mode")  # 3
    share2 = next(x["text"] for x in top["labels"] if x["name"] == "share_text" and x.get("mode") == 2)
    assert f"Mode 2 of {ref}" in out and f"holds {share2} of its activation mass" in out and "mode 2: <data>" in out

    share1 = next(x["text"] for x in top["labels"] if x["name"] == "share_text" and x.get("mode") == 1)
    out = _say(child, "and the first one?")  # 3b: "one" after a list of modes is a mode of the same neuron
    assert f"Mode 1 of {ref}" in out and f"holds {share1} of its activation mass" in out

    out = _say(child, "what does it promote?")  # 4
    assert f"{ref} most promotes" in out

    mode, word = _mode_word(top)
    out = _say(child, f"ablate it on the {word} examples")  # 5
    ablation = [f for f in _findings(run3) if f["kind"] == "ablation"][-1]
    effect = _q("effect", ablation)
    assert f"Zero-ablating {ref} on {int(_q('n_examples', ablation))} contexts of its mode {mode}" in out
    assert f"the model's loss by {effect:+.3g} nats per token [{ablation['id']}]" in out

    child.sendline("compare with layer 4")  # 6: Ctrl-C while layer 4 is profiled
    _wait_for_capture(session, child)
    time.sleep(1.0)
    child.sendintr()
    child.expect(r"\n" + PROMPT)
    assert "interrupted (Ctrl-C)" in child.before or "cancelled (Ctrl-C)" in child.before
    assert child.isalive()

    out = _say(child, "compare with layer 4")  # 7: resumes the stopped run; layer 3 is reused
    assert "resuming investigate layer 4" in out
    run4 = _run_of(session, 4)
    summary4 = next(f for f in _findings(run4) if f["kind"] == "polysemantic_summary")
    comparison = [f for f in json.loads((session / "findings.json").read_text())["findings"]
                  if f["kind"] == "comparison"][-1]
    for layer, s in ((3, summary), (4, summary4)):
        n_poly, n_an = int(_q("n_polysemantic", s)), int(_q("n_analysed", s))
        rate = "" if _screen(s) else f" ({n_poly / n_an:.0%})"  # 64 screened neurons' share is not a layer's rate
        assert f"Layer {layer}: {n_poly} of {n_an} analysed neurons{_screen(s)} are polysemantic{rate}," in out
    assert f"[{comparison['id']}]" in out and (session / "figures" / "compare_L3_L4.png").is_file()
    assert f"{ref} (score {_q('score', top):.2f}" in out  # the top neurons side by side

    n_runs = len([p for p in session.iterdir() if (p / "manifest.json").exists()])
    n_computes = sum(e["kind"] == "compute" for e in _trace(session))
    out = _say(child, "/neuron L3/N5")  # 8: layer 3 is still known after the comparison
    assert "is not in this profile" not in out and re.search(r"L3/N5 (is|was) ", out)
    out = _say(child, "open its dashboard")  # 9
    page = re.search(r"file://(\S+neuron_L3_N5\.html)", out)
    assert page and Path(page.group(1)).is_file()
    out = _say(child, "save the report")  # 10
    report = (session / "report.md").read_text()
    assert "why is the top neuron polysemantic?" in report and f"{ref} is polysemantic" in report
    assert len([p for p in session.iterdir() if (p / "manifest.json").exists()]) == n_runs  # nothing recomputed
    assert sum(e["kind"] == "compute" for e in _trace(session)) == n_computes

    child.sendline("/quit")  # 11
    child.expect(r"--resume (\S+)")
    assert Path(child.match.group(1).strip()) == session
    child.expect(pexpect.EOF)

    child = _spawn(["--resume", str(session)])  # the session comes back in a new process
    out = _say(child, "what does it promote?")  # 12: 'it' is still L3/N5
    assert "L3/N5 most promotes" in out
    out = _say(child, "/layers")
    assert re.search(r"smollm2-135m\W+3\b", out) and re.search(r"smollm2-135m\W+4\b", out)
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    resumed = _trace(session)
    start = max(i for i, e in enumerate(resumed) if e["kind"] == "session_resumed")
    assert not [e for e in resumed[start:] if e["kind"] in ("compute", "computed")]
    assert any(e["kind"] == "reused" for e in resumed[start:])


@pytest.mark.timeout(600)
def test_the_same_conversation_through_an_openai_compatible_server_with_tool_calls(tmp_path):
    """The real program against the fake OpenAI-compatible server (in this process): the team investigates layer 3,
    the Analyst answers follow-ups with tool calls, one of them on layer 4, which the session did not have."""
    from tests.agents.fake_openai import ChatPolicy, FakeOpenAI, user_task

    key = "sk-test-NEVER-IN-FILES-0123456789"
    with FakeOpenAI(ChatPolicy(malformed_first=False, extra_examples=False)) as server:
        os.environ.update(NW_LLM_BASE_URL=server.url, NW_LLM_MODEL="fake-model", NW_LLM_API_KEY=key,
                          NW_LLM_RETRY_BASE_DELAY="0.01")
        try:
            child = _spawn(["--out", str(tmp_path), "--max-tokens", "4000", "--max-neurons", "24", "--embedder",
                            "hidden"], llm="openai-compatible")
        finally:
            for name in ("NW_LLM_BASE_URL", "NW_LLM_MODEL", "NW_LLM_API_KEY", "NW_LLM_RETRY_BASE_DELAY"):
                os.environ.pop(name)
        session = Path(re.search(r"session folder (\S+)", child.before).group(1))
        out = _say(child, "investigate layer 3 of smollm2-135m")
        assert "Done: layer 3." in out and "openai-compatible" in out
        answers = [_say(child, line) for line in ("why is the top neuron polysemantic?", "what does it promote?",
                                                  "what about the strongest neuron of layer 4?",
                                                  "compare with layer 3")]
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    chats = [r for r in server.requests if "Question:" in user_task(r)]
    assert len({user_task(r) for r in chats}) == 3 and all("Session summary:" in user_task(r) for r in chats)
    run3, run4 = _run_of(session, 3), _run_of(session, 4)
    for answer, run in ((answers[0], run3), (answers[2], run4)):
        described = [f for f in _findings(run) if f["kind"] in ("polysemantic", "neuron_verdict")]
        ref = re.search(r"(L\d+/N\d+) has score", answer).group(1)
        f = next(f for f in described if f["neurons"] == [ref])
        assert f"{ref} has score {_q('score', f):.2f} with {int(_q('n_modes', f))} modes [{f['id']}]." in answer
        assert "removed by the claim check: It also has score 0.999" in answer
    assert re.search(r"L3/N\d+ most promotes these tokens \[F\d+\]", answers[1])
    computes = [e for e in _trace(session) if e["kind"] == "compute"]
    assert [e["layers"] for e in computes] == [[3], [4]] and computes[1]["why"] == "the Analyst's neuron_stats call"
    assert "Layer 4:" in answers[3] and "Layer 3:" in answers[3]  # compared without computing anything again
    assert key not in (session / "trace.jsonl").read_text()
