"""`--llm local` end to end: SmolLM2 is both the model under study and the (prose-only) LLM of the agents."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from tools import check_claims
from tools.findings import FindingsDocument
from workflows.run import main
from workflows.stateflow import legal_path


@pytest.mark.slow
def test_local_backend_end_to_end(tmp_path, monkeypatch):
    for name in ("OPENAI_API_KEY", "NW_LLM", "NW_LLM_BASE_URL", "NW_LLM_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(Path(__file__).parent)
    monkeypatch.setenv("NW_LOCAL_MAX_NEW_TOKENS", "60")
    monkeypatch.setenv("NW_DETECTOR_ABLATION", "false")  # lean: the scripted end-to-end test measures ablation
    monkeypatch.setenv("NW_DETECTOR_N_NULL", "60")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["investigate layer 6 of smollm2-135m", "--llm", "local", "--max-tokens", "3000",
                     "--max-neurons", "8", "--top-n", "2", "--max-revisions", "1", "--out", str(tmp_path)])
    assert code == 0, err.getvalue()
    assert "LLM backend: local" in out.getvalue()
    run_dir = next(tmp_path.iterdir())
    trace = [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]
    path = [(e["frm"], e["to"]) for e in trace if e["kind"] == "transition"]
    assert legal_path(path) and path[-1][1] == "DONE"
    llm = [e for e in trace if e["kind"] == "llm_call"]
    agents = {e["agent"] for e in llm}
    assert {"analyst", "critic"} <= agents
    assert all(e["completion_tokens"] > 0 and e["prompt_tokens"] > 0 for e in llm)
    # the controller ran the tools (the local model cannot call them)
    tools = {e["tool"]: e["caller"] for e in trace if e["kind"] == "tool_call"}
    assert tools["profile_corpus"] == "capturer" and tools["detect_polysemantic"] == "analyst"
    # whatever the small model wrote, the report states only what findings.json holds
    doc = FindingsDocument.model_validate_json((run_dir / "findings.json").read_text())
    report = (run_dir / "report.md").read_text()
    summary = report.split("## Summary")[1].split("## Method")[0]
    assert check_claims(summary, doc.findings, ignore=["smollm2-135m", "builtin-v1", "builtin"]).ok
    # the deterministic writer wrote the facts; the model added at most 2 sentences, each checked and not repeated
    assert summary.strip().startswith("We profiled 3,000 tokens from ")
    filtered = [e for e in trace if e["kind"] == "prose_filtered" and e["agent"] == "analyst"]
    assert len(filtered) == 1 and len(filtered[0]["kept"]) <= 2
    assert all(sentence in summary for sentence in filtered[0]["kept"])
    assert (run_dir / "report.html").exists() and (run_dir / "figures" / "dashboard" / "index.html").exists()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["backend"] == "local" and manifest["budget"]["llm_calls"] == len(llm)
