"""Campaigns (a YAML list of requests into one folder) and the chat session, on a tiny model, scripted."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from agents import WorkbenchSettings
from neuron_core import ModelInterface
from neuron_core.errors import RunFolderBusyError
from neuron_core.store import RunFolder
from tests.conftest import make_tiny_gpt2
from workflows.campaign import load_campaign, run_campaign


@pytest.fixture(scope="module")
def tiny_models(tok):
    return {"tiny-gpt2": ModelInterface(make_tiny_gpt2(tok, n_layer=2), tokenizer=tok, name="tiny-gpt2")}


def _settings(tmp_path):
    return WorkbenchSettings(_env_file=None, llm="scripted", runs_dir=str(tmp_path), max_tokens=1200, max_neurons=6,
                             top_n=2, embedder="hidden", detector_n_null=20, detector_ablation=False)


def test_load_campaign_forms_and_errors(tmp_path):
    plain = tmp_path / "plain.yaml"
    plain.write_text("- investigate layer 1 of tiny-gpt2\n- explain neuron 1/3 of tiny-gpt2\n")
    c = load_campaign(plain)
    assert c.name == "plain" and [i.request for i in c.requests][1] == "explain neuron 1/3 of tiny-gpt2"
    mapped = tmp_path / "mapped.yaml"
    mapped.write_text("name: two\ndefaults: {max_tokens: 900, llm: scripted}\nrequests:\n"
                      "  - investigate layer 0 of tiny-gpt2\n  - {request: investigate layer 1 of tiny-gpt2, "
                      "max_tokens: 1000}\n")
    c = load_campaign(mapped)
    assert [(i.max_tokens, i.llm) for i in c.requests] == [(900, "scripted"), (1000, "scripted")]
    bad = tmp_path / "bad.yaml"
    bad.write_text("requests:\n  - {request: x, colour: blue}\n")
    with pytest.raises(ValueError, match="colour"):
        load_campaign(bad)
    with pytest.raises(ValueError, match="not found"):
        load_campaign(tmp_path / "missing.yaml")


def test_campaign_runs_every_request_into_one_folder(tmp_path, tiny_models):
    spec = tmp_path / "c.yaml"
    spec.write_text("name: tiny\nrequests:\n  - investigate layer 1 of tiny-gpt2\n"
                    "  - explain neuron 0/5 of tiny-gpt2\n  - investigate layer 9 of tiny-gpt2\n"
                    "  - investigate layer 1 of tiny-gpt2\n")
    lines = []
    folder, results = asyncio.run(run_campaign(load_campaign(spec), tmp_path / "out", _settings(tmp_path),
                                               echo=lines.append, models=tiny_models))
    assert folder == (tmp_path / "out" / "tiny").resolve()
    assert [r.status for r in results] == ["done", "done", "failed", "done"]
    assert results[2].exit_code == 2 and "out of range" in results[2].reason
    assert all(Path(r.run_dir).parent.parent == folder for r in results)
    # the repeated entry is the same experiment: run once, listed twice
    assert results[3].duplicate_of == 1 and results[3].run_dir == results[0].run_dir
    assert len(list(folder.glob("*/*/manifest.json"))) == 3
    summary = json.loads((folder / "campaign.json").read_text())
    assert summary["complete"] and [r["status"] for r in summary["results"]] == ["done", "done", "failed", "done"]
    md = (folder / "campaign.md").read_text()
    assert "| 1 | investigate layer 1 of tiny-gpt2 | done | [report](" in md and "done (same as #1)" in md
    explain = json.loads(Path(results[1].run_dir, "findings.json").read_text())["findings"]
    assert any(f["neurons"] == ["L0/N5"] and f["kind"] in ("polysemantic", "neuron_verdict") for f in explain)
    assert lines[0].startswith("[1/4]")


def test_a_campaign_started_again_runs_only_what_is_missing(tmp_path, tiny_models):
    spec = tmp_path / "c.yaml"
    spec.write_text("name: again\nrequests:\n  - investigate layer 0 of tiny-gpt2\n"
                    "  - investigate layer 1 of tiny-gpt2\n  - explain neuron 1/2 of tiny-gpt2\n")
    campaign = load_campaign(spec)
    folder, whole = asyncio.run(run_campaign(campaign, tmp_path / "out", _settings(tmp_path), models=tiny_models))
    summary = json.loads((folder / "campaign.json").read_text())
    # as if killed during the second experiment, before the third: the second's run stopped, the third never began
    first_trace = Path(whole[0].run_dir, "trace.jsonl").read_bytes()
    second = Path(whole[1].run_dir)
    manifest = json.loads((second / "manifest.json").read_text())
    (second / "manifest.json").write_text(json.dumps({**manifest, "status": "stopped", "report": None}))
    (second / "report.md").unlink()
    shutil.rmtree(Path(whole[2].run_dir).parent)
    (folder / "campaign.json").write_text(json.dumps({**summary, "results": summary["results"][:1]}))
    _, again = asyncio.run(run_campaign(campaign, tmp_path / "out", _settings(tmp_path), models=tiny_models))
    assert [r.status for r in again] == ["done"] * 3
    assert Path(again[0].run_dir, "trace.jsonl").read_bytes() == first_trace  # done: not run again
    assert again[1].resumed and again[1].run_dir == whole[1].run_dir and Path(again[1].report).exists()
    assert not again[2].resumed and again[2].run_dir != whole[2].run_dir
    assert [r.request for r in again] == [r.request for r in whole]
    after = json.loads((folder / "campaign.json").read_text())
    assert after["complete"] and [r["status"] for r in after["results"]] == [r["status"] for r in summary["results"]]


def test_two_campaigns_on_one_folder_are_stopped_by_the_lock(tmp_path, tiny_models):
    spec = tmp_path / "c.yaml"
    spec.write_text("name: busy\nrequests:\n  - investigate layer 0 of tiny-gpt2\n")
    holder = RunFolder(tmp_path / "out" / "busy").lock()  # another process's campaign, as the OS sees it
    try:
        with pytest.raises(RunFolderBusyError, match="in use by another process"):
            asyncio.run(run_campaign(load_campaign(spec), tmp_path / "out", _settings(tmp_path), models=tiny_models))
    finally:
        holder.unlock()
    assert not (tmp_path / "out" / "busy" / "campaign.json").exists()


def test_campaign_entries_are_checked_like_the_run_flags(tmp_path):
    for bad, where in (("{request: x, max_tokens: 0}", "max_tokens"), ("{request: x, top_n: -1}", "top_n"),
                       ("{request: x, max_neurons: 0}", "max_neurons"), ("{request: '', layers: [1]}", "request")):
        spec = tmp_path / "bad.yaml"
        spec.write_text(f"requests:\n  - {bad}\n")
        with pytest.raises(ValueError, match=where):
            load_campaign(spec)


def test_sweeps_are_written_once_and_expand_to_every_combination(tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text("name: layers\ndefaults: {llm: scripted, max_tokens: 900}\n"
                    "sweep: {layers: 0-2, models: [tiny-gpt2, other], seeds: [0, 1]}\n")
    campaign = load_campaign(spec)
    assert len(campaign.requests) == 3 * 2 * 2 and len({i.key for i in campaign.requests}) == 12
    first = campaign.requests[0]
    assert (first.request, first.layers, first.model, first.seed, first.max_tokens) == (
        "investigate layer 0 of tiny-gpt2", [0], "tiny-gpt2", 0, 900)
    spec.write_text("sweep: {seeds: [3, 4]}\nrequests:\n  - explain neuron 1/2 of tiny-gpt2 (seed {seed})\n")
    assert [(i.request, i.seed, i.layers) for i in load_campaign(spec).requests] == [
        ("explain neuron 1/2 of tiny-gpt2 (seed 3)", 3, None), ("explain neuron 1/2 of tiny-gpt2 (seed 4)", 4, None)]
    spec.write_text("sweep: {layers: 5-2}\n")
    with pytest.raises(ValueError, match="sweep.layers"):
        load_campaign(spec)
    spec.write_text("sweep: {layers: 0-1, colours: [red]}\n")
    with pytest.raises(ValueError, match="colours"):
        load_campaign(spec)


def test_the_summary_table_and_index_compare_the_experiments(tmp_path, tiny_models):
    import pandas as pd

    spec = tmp_path / "c.yaml"
    spec.write_text("name: table\nsweep: {layers: 0-1, models: [tiny-gpt2]}\n")
    folder, results = asyncio.run(run_campaign(load_campaign(spec), tmp_path / "out", _settings(tmp_path),
                                               models=tiny_models))
    assert [r.status for r in results] == ["done", "done"]
    table = pd.read_parquet(folder / "summary.parquet")
    assert table.equals(pd.read_csv(folder / "summary.csv").astype(table.dtypes.to_dict()))
    assert list(table["layer"]) == [0, 1] and set(table["model"]) == {"tiny-gpt2"}
    for row, result in zip(table.to_dict("records"), results, strict=True):
        findings = json.loads(Path(result.run_dir, "findings.json").read_text())["findings"]
        summary = next(f for f in findings if f["kind"] == "polysemantic_summary")
        values = {q["name"]: q["value"] for q in summary["quantities"]}
        assert row["n_analysed"] == values["n_analysed"] and row["n_polysemantic"] == values["n_polysemantic"]
        assert row["share_polysemantic"] == pytest.approx(values["n_polysemantic"] / values["n_analysed"])
    index = (folder / "index.html").read_text()
    assert "<img alt=\"share of polysemantic neurons per layer\" src=\"data:image/png;base64," in index
    assert index.count('">report</a>') == 2 and "<script" not in index


def test_a_campaign_on_ray_gives_the_summary_of_a_local_one(tmp_path, ray_instance):
    import pandas as pd

    spec = tmp_path / "c.yaml"
    spec.write_text("name: onray\ndefaults: {llm: scripted, max_tokens: 600, max_neurons: 8, top_n: 2}\n"
                    "sweep: {layers: 0-1, models: [smollm2-135m]}\n")
    campaign = load_campaign(spec)
    settings = WorkbenchSettings(_env_file=None, llm="scripted", runs_dir=str(tmp_path), embedder="hidden",
                                 detector_n_null=30, detector_ablation=False)
    local_folder, local = asyncio.run(run_campaign(campaign, tmp_path / "local", settings))
    ray_folder, remote = asyncio.run(run_campaign(campaign, tmp_path / "ray", settings, executor="ray"))
    assert [r.status for r in remote] == [r.status for r in local] == ["done", "done"]
    assert all(Path(r.run_dir).is_relative_to(ray_folder) and Path(r.report).exists() for r in remote)
    columns = ["layer", "model", "n_analysed", "n_polysemantic", "n_borderline"]
    a, b = (pd.read_csv(folder / "summary.csv")[columns] for folder in (local_folder, ray_folder))
    assert a.equals(b)
    assert json.loads((ray_folder / "campaign.json").read_text())["complete"]
    # started again on Ray: nothing is run twice
    traces = [Path(r.run_dir, "trace.jsonl").read_bytes() for r in remote]
    _, again = asyncio.run(run_campaign(campaign, tmp_path / "ray", settings, executor="ray"))
    assert [Path(r.run_dir, "trace.jsonl").read_bytes() for r in again] == traces
