"""A run folder can be resumed: the stored plan, profile and results are read back, nothing is redone twice."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from agents import WorkbenchSettings
from neuron_core import ModelInterface
from tests.conftest import make_tiny_gpt2
from workflows.investigation import Investigation, RunOptions


def test_resume_reuses_plan_profile_and_findings(tmp_path, tok):
    models = {"tiny-gpt2": ModelInterface(make_tiny_gpt2(tok, n_layer=2), tokenizer=tok, name="tiny-gpt2")}
    settings = WorkbenchSettings(_env_file=None, llm="scripted", runs_dir=str(tmp_path), max_tokens=1200,
                                 max_neurons=6, embedder="hidden", detector_n_null=20, detector_ablation=False)
    first = asyncio.run(Investigation(RunOptions(request="investigate layer 1 of tiny-gpt2"), settings,
                                      models=models).run())
    assert first.status == "done"
    run_dir = Path(first.run_dir)
    findings_before = json.loads((run_dir / "findings.json").read_text())["findings"]
    (run_dir / "report.md").unlink()  # as if the run had stopped after its analyses
    (run_dir / "tables" / "detections.json").unlink()
    second = asyncio.run(Investigation(RunOptions(request="ignored: the stored plan is used", resume=str(run_dir)),
                                       settings, models=models).run())
    assert second.status == "done" and second.run_dir == first.run_dir
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["request"] == "investigate layer 1 of tiny-gpt2"
    assert (run_dir / "report.md").exists()
    events = [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]
    starts = [i for i, e in enumerate(events) if e["kind"] == "run_start"]
    assert len(starts) == 2
    resumed = [e for e in events[starts[1]:] if e["kind"] == "tool_call"]
    profile = next(e for e in resumed if e["tool"] == "profile_corpus")
    assert json.loads(profile["result"])["resumed"] is True
    assert any(e["tool"] == "detect_polysemantic" for e in resumed)  # its output was gone: redone
    assert not any(e["tool"] == "neuron_stats" for e in resumed)  # its finding was there: not redone
    findings_after = json.loads((run_dir / "findings.json").read_text())["findings"]
    assert [f["id"] for f in findings_after] == [f["id"] for f in findings_before]  # no duplicates
