"""Findings: ids, persistence, JSON Schema, dedupe, confinement, and record_finding's artifact check."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from neuron_core.errors import InputError, RunFolderError
from neuron_core.store import RunFolder
from tools import FindingStore, ToolContext, call_tool
from tools.findings import FindingsDocument, artifact_numbers


def test_store_ids_persist_schema_and_dedupe(tmp_path):
    run = RunFolder(tmp_path / "run")
    store = FindingStore(run)
    a = store.add(kind="note", claim="L6/N12 fires on dates.", neurons=["6/12"], numbers={"max": 4.25},
                  artifact="tables/x.parquet", source="test")
    b = store.add(kind="note", claim="L6/N12 fires on dates.", neurons=["L6/N12"], numbers={"max": 4.25},
                  artifact="tables/x.parquet", source="test")
    c = store.add(kind="note", claim="Another.", artifact="manifest.json", source="test")
    assert (a, b, c) == ("F001", "F001", "F002")
    doc = json.loads((tmp_path / "run" / "findings.json").read_text())
    assert doc["$schema"] == "findings.schema.json"
    FindingsDocument.model_validate(doc)
    schema = json.loads((tmp_path / "run" / "findings.schema.json").read_text())
    assert "findings" in schema["properties"]
    again = FindingStore(run)
    assert [f.id for f in again.all()] == ["F001", "F002"] and again.get("F001").neurons == ["L6/N12"]
    with pytest.raises(InputError):
        again.get("F404")


def test_store_refuses_artifacts_outside_and_nan(tmp_path):
    store = FindingStore(RunFolder(tmp_path / "run"))
    with pytest.raises(RunFolderError):
        store.add(kind="note", claim="x", artifact="../../etc/passwd", source="t")
    with pytest.raises(InputError):
        store.add(kind="note", claim="x", artifact="manifest.json", source="t", numbers={"a": float("nan")})


def test_artifact_numbers_reads_json_parquet_text(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.write_json("a.json", {"x": [1, 2.5, {"y": -3}], "flag": True})
    run.write_parquet("tables/t.parquet", pd.DataFrame({"v": [0.5, 1.5], "s": ["a", "b"]}))
    run.write_text("n.md", "about 12.5 and 7")
    assert sorted(artifact_numbers(run.path_for("a.json"))) == [-3.0, 1.0, 2.5]
    assert artifact_numbers(run.path_for("tables/t.parquet")) == [0.5, 1.5]
    assert artifact_numbers(run.path_for("n.md")) == [12.5, 7.0]


def test_record_finding_requires_numbers_from_the_artifact(tmp_path):
    ctx = ToolContext(RunFolder(tmp_path / "run"))
    ctx.run.write_parquet("tables/t.parquet", pd.DataFrame({"neuron": [12], "max": [4.25]}))
    good = call_tool(ctx, "record_finding", {"claim": "L6/N12 peaks at 4.25.", "neurons": ["L6/N12"],
                                             "numbers": {"max": 4.25}, "artifact": "tables/t.parquet"})
    assert good.ok and good.result.finding_id == "F001"
    bad = call_tool(ctx, "record_finding", {"claim": "L6/N12 peaks at 9.", "numbers": {"max": 9.0},
                                            "artifact": "tables/t.parquet"})
    assert not bad.ok and bad.error.recoverable and "9.0" in bad.error.message
    outside = call_tool(ctx, "record_finding", {"claim": "escape attempt", "artifact": "../secret.json"})
    assert not outside.ok and outside.error.kind == "RunFolderError" and not outside.error.recoverable
    listed = call_tool(ctx, "read_findings", {"neuron": "L6/N12"})
    assert listed.ok and [f.id for f in listed.result.findings] == ["F001"]
    assert listed.result.findings[0].claim.startswith("<data>")


def test_call_tool_reports_structured_errors(tmp_path):
    seen = []
    ctx = ToolContext(RunFolder(tmp_path / "run"), on_call=seen.append)
    unknown = call_tool(ctx, "rm_rf", {})
    assert not unknown.ok and unknown.error.kind == "UnknownTool" and unknown.error.recoverable
    invalid = call_tool(ctx, "profile_corpus", {"layers": [], "max_tokens": 10, "bogus": 1})
    assert invalid.error.kind == "ValidationError" and "max_tokens" in invalid.error.message
    assert "bogus" in invalid.error.message
    no_model = call_tool(ctx, "list_sites", {})
    assert no_model.error.recoverable and "load_model" in no_model.error.message
    assert [r.tool for r in seen] == ["rm_rf", "profile_corpus", "list_sites"] and not any(r.ok for r in seen)
    assert json.loads(invalid.for_llm())["error"]["kind"] == "ValidationError"
