"""Findings: ids, persistence, JSON Schema, dedupe, confinement, and record_finding's artifact check."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from neuron_core.errors import InputError, RunFolderError
from neuron_core.store import RunFolder
from tools import FindingStore, ToolContext, call_tool
from tools.findings import (
    Finding,
    FindingsDocument,
    Label,
    MissingQuantityError,
    Quantity,
    artifact_numbers,
    quantities_of,
)


def test_store_ids_persist_schema_and_dedupe(tmp_path):
    run = RunFolder(tmp_path / "run")
    store = FindingStore(run)
    a = store.add(kind="note", claim="L6/N12 fires on dates.", neurons=["6/12"],
                  quantities=[Quantity(name="max", value=4.25, neuron="6/12")], artifact="tables/x.parquet",
                  source="test")
    b = store.add(kind="note", claim="L6/N12 fires on dates.", neurons=["L6/N12"],
                  quantities=[Quantity(name="max", value=4.25, neuron="L6/N12")], artifact="tables/x.parquet",
                  source="test")
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


def _verdict_finding() -> Finding:
    ref = "L6/N12"
    return Finding(id="F003", kind="polysemantic", claim="L6/N12 is polysemantic.", artifact="t.parquet",
                   source="detect_polysemantic", neurons=[ref], verdict="detected",
                   quantities=quantities_of({"score": 0.81, "p_value": 0.005, "n_modes": 2}, neuron=ref)
                   + quantities_of({"share": 0.55, "effect": 0.02}, neuron=ref, mode=1)
                   + quantities_of({"share": 0.40}, neuron=ref, mode=2),
                   labels=[Label(name="mode", text="months", neuron=ref, mode=1),
                           Label(name="mode", text="JSON keys", neuron=ref, mode=2)])


def test_typed_quantities_round_trip_through_findings_json_and_its_schema(tmp_path):
    run = RunFolder(tmp_path / "run")
    store = FindingStore(run)
    f = _verdict_finding()
    fid = store.add(kind=f.kind, claim=f.claim, neurons=f.neurons, quantities=f.quantities, labels=f.labels,
                    verdict=f.verdict, artifact=f.artifact, source=f.source)
    back = FindingStore(run).get(fid)
    assert back.model_dump(exclude={"id"}) == f.model_dump(exclude={"id"})
    raw = json.loads(run.path_for("findings.json").read_text())["findings"][0]
    assert raw["quantities"][3] == {"name": "share", "value": 0.55, "neuron": "L6/N12", "layer": 6, "mode": 1}
    assert raw["verdict"] == "detected" and "numbers" not in raw
    schema = json.loads(run.path_for("findings.schema.json").read_text())
    quantity = schema["$defs"]["Quantity"]
    assert set(quantity["required"]) == {"name", "value"} and quantity["additionalProperties"] is False
    assert {"name", "value", "neuron", "layer", "mode"} <= set(quantity["properties"])
    assert schema["$defs"]["Finding"]["properties"]["verdict"]["anyOf"][0]["enum"] == ["detected", "borderline",
                                                                                       "not detected"]
    with pytest.raises(ValueError):  # the old dict of numbers is not silently dropped
        Finding.model_validate({**raw, "numbers": {"score": 0.81}})


def test_typed_accessors():
    f = _verdict_finding()
    assert f.value("score") == 0.81 and f.value("share", mode=1) == 0.55 and f.value("share", mode=2) == 0.40
    assert f.value("effect", mode=1, neuron="6/12") == 0.02 and f.value("effect", mode=2, default=-1.0) == -1.0
    assert f.text("mode", mode=2) == "JSON keys" and f.texts("mode") == ["months", "JSON keys"]
    assert f.subject == "L6/N12" and f.mode_indices() == [1, 2] and f.layers() == {6}
    assert [q.name for q in f.quantities_for(neuron="L6/N12", mode=1)] == ["share", "effect"]
    assert f.has("p_value") and not f.has("z_score")
    with pytest.raises(InputError, match="2 quantities 'share'"):
        f.value("share")
    with pytest.raises(MissingQuantityError):
        f.value("z_score")
    with pytest.raises(MissingQuantityError):
        f.text("mode", mode=3)


def test_quantities_are_checked():
    assert Quantity(name="max", value=3, neuron="6/12").layer == 6
    for bad in ({"name": "max", "value": float("nan")}, {"name": "Max score", "value": 1.0},
                {"name": "share", "value": 0.5, "mode": 0}, {"name": "max", "value": 1.0, "neuron": "L6/N12",
                                                             "layer": 7},
                {"name": "max", "value": 1.0, "neuron": "not a neuron"}, {"name": "max", "value": 1.0, "unit": "x"}):
        with pytest.raises(ValueError):
            Quantity.model_validate(bad)
    with pytest.raises(ValueError, match="not about"):
        Finding(id="F001", kind="note", claim="x", artifact="a", source="s", neurons=["L6/N1"],
                quantities=[Quantity(name="max", value=1.0, neuron="L6/N2")])


def test_the_verdict_type_is_the_detectors():
    from typing import get_args

    from neuron_core.analysis.types import Verdict as DetectorVerdict
    from tools.findings import Verdict

    assert get_args(Verdict) == get_args(DetectorVerdict)


def test_store_refuses_artifacts_outside(tmp_path):
    store = FindingStore(RunFolder(tmp_path / "run"))
    with pytest.raises(RunFolderError):
        store.add(kind="note", claim="x", artifact="../../etc/passwd", source="t")


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
    good = call_tool(ctx, "record_finding", {"claim": "L6/N12 peaks at 4.25.",
                                             "quantities": [{"name": "max", "value": 4.25, "neuron": "L6/N12"}],
                                             "artifact": "tables/t.parquet"})
    assert good.ok and good.result.finding_id == "F001"
    assert ctx.findings.get("F001").neurons == ["L6/N12"]  # the quantity's neuron is what the finding is about
    bad = call_tool(ctx, "record_finding", {"claim": "L6/N12 peaks at 9.",
                                            "quantities": [{"name": "max", "value": 9.0}],
                                            "artifact": "tables/t.parquet"})
    assert not bad.ok and bad.error.recoverable and "9.0" in bad.error.message
    outside = call_tool(ctx, "record_finding", {"claim": "escape attempt", "artifact": "../secret.json"})
    assert not outside.ok and outside.error.kind == "RunFolderError" and not outside.error.recoverable
    listed = call_tool(ctx, "read_findings", {"neuron": "L6/N12"})
    assert listed.ok and [f.id for f in listed.result.findings] == ["F001"]
    assert listed.result.findings[0].claim.startswith("<data>")
    assert listed.result.findings[0].quantities[0].value == 4.25


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
