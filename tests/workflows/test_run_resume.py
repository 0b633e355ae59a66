"""A run folder can be resumed: the stored plan, profile and results are read back, nothing is redone twice."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from agents import WorkbenchSettings
from neuron_core import ModelInterface
from neuron_core.store import RunFolder
from tests.conftest import make_tiny_gpt2
from workflows.controller.run_state import RunState
from workflows.investigation import Investigation, RunOptions


def _finished_tiny_run(root: Path, tok) -> tuple[Path, WorkbenchSettings, dict]:
    """A finished scripted run of a tiny model under ``root``: its folder, settings and models."""
    models = {"tiny-gpt2": ModelInterface(make_tiny_gpt2(tok, n_layer=2), tokenizer=tok, name="tiny-gpt2")}
    settings = WorkbenchSettings(_env_file=None, llm="scripted", runs_dir=str(root), max_tokens=1200,
                                 max_neurons=6, embedder="hidden", detector_n_null=20, detector_ablation=False)
    result = asyncio.run(Investigation(RunOptions(request="investigate layer 1 of tiny-gpt2"), settings,
                                       models=models).run())
    assert result.status == "done"
    return Path(result.run_dir), settings, models


def test_resume_reuses_plan_profile_and_findings(tmp_path, tok):
    run_dir, settings, models = _finished_tiny_run(tmp_path, tok)
    first_run_dir = str(run_dir)
    findings_before = json.loads((run_dir / "findings.json").read_text())["findings"]
    (run_dir / "report.md").unlink()  # as if the run had stopped after its analyses
    (run_dir / "tables" / "detections.json").unlink()
    second = asyncio.run(Investigation(RunOptions(request="ignored: the stored plan is used", resume=str(run_dir)),
                                       settings, models=models).run())
    assert second.status == "done" and second.run_dir == first_run_dir
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


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tok):
    """A finished tiny run, and what resuming it needs."""
    return _finished_tiny_run(tmp_path_factory.mktemp("runs"), tok)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != ".lock"}


@pytest.mark.parametrize("name, corrupt, problem", [
    ("findings.json", lambda text: text[: len(text) // 2], "not a findings document"),
    ("manifest.json", lambda text: text[: len(text) // 2], "not valid JSON"),
    ("manifest.json", lambda text: "[1, 2]", "expected a JSON object, found list"),
    ("manifest.json", lambda text: text.replace('"layers": [', '"layers": "x", "_": ['), "its plan is not valid"),
    ("state.json", lambda text: text[: len(text) // 2], "not valid JSON"),
    ("state.json", lambda text: text.replace('"visualized_at": ', '"visualized_at": "x", "_": '), "not a run state"),
])
def test_resume_of_a_corrupt_run_names_the_file_and_changes_nothing(tmp_path, finished_run, name, corrupt, problem):
    source, settings, models = finished_run
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    path = run_dir / name
    path.write_text(corrupt(path.read_text()))
    before = _snapshot(run_dir)
    result = asyncio.run(Investigation(RunOptions(request="x", resume=str(run_dir)), settings, models=models).run())
    assert result.exit_code == 2 and result.status == "failed"
    assert name in result.reason and problem in result.reason
    assert _snapshot(run_dir) == before  # never rewritten as failed, no trace line, no new folder


def test_resume_of_a_folder_in_use_is_refused(finished_run):
    run_dir, settings, models = finished_run
    holder = RunFolder(run_dir).lock()
    try:
        result = asyncio.run(Investigation(RunOptions(request="x", resume=str(run_dir)), settings,
                                           models=models).run())
    finally:
        holder.unlock()
    assert result.exit_code == 2 and "in use by another process" in result.reason


def test_the_run_state_is_saved_and_a_folder_without_it_resumes_from_its_manifest(tmp_path, finished_run):
    source, settings, models = finished_run
    saved = RunState.load(RunFolder(source))
    assert saved.status == "done" and saved.exit_code == 0 and saved.reason == "done"
    assert saved.plan is not None and saved.plan.layers == [1] and saved.narrative and saved.critic_text
    assert saved.report_path == str(source / "report.md") and saved.figures_done and not saved.errors
    assert saved.for_resume() == RunState(request=saved.request, plan=saved.plan)
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    (run_dir / "state.json").unlink()  # a run folder written before state.json
    (run_dir / "report.md").unlink()
    from_manifest = RunState.load(RunFolder(run_dir))
    assert (from_manifest.request, from_manifest.plan) == (saved.request, saved.plan)
    result = asyncio.run(Investigation(RunOptions(request="x", resume=str(run_dir)), settings, models=models).run())
    assert result.status == "done" and (run_dir / "report.md").exists()
    resumed = RunState.load(RunFolder(run_dir))
    assert resumed.request == "investigate layer 1 of tiny-gpt2" and resumed.status == "done"
    assert resumed.narrative == saved.narrative
