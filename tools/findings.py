"""Findings: the facts an investigation established, the only facts a report may state.

Usage::

    store = FindingStore(run)                                   # reads run/findings.json when present
    fid = store.add(kind="polysemantic", claim="L6/N12 has 3 modes", neurons=["L6/N12"],
                    numbers={"score": 0.81, "n_modes": 3}, artifact="tables/polysemantic.parquet", source="detect")
    store.get(fid).numbers["score"]                             # 0.81
    store.all(); store.numbers(); store.neuron_refs()

Every finding has an id (``F001``), a claim in words, the numbers behind it and the artifact (a path inside the run
folder) it came from. ``findings.json`` is written atomically after each change, with ``findings.schema.json``
(its JSON Schema) beside it. Adding a finding identical in kind, neurons and numbers returns the existing id.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from neuron_core.errors import InputError
from neuron_core.store import RunFolder

__all__ = ["Finding", "FindingsDocument", "FindingStore", "FindingKind", "artifact_numbers", "NEURON_REF_RE",
           "normalise_ref"]

FindingKind = Literal["run", "layer_summary", "top_neurons", "polysemantic", "polysemantic_summary", "mode",
                      "neuron_verdict", "logit_effects", "token_analysis", "examples", "note"]

NEURON_REF_RE = re.compile(r"\bL(\d+)\s*/\s*N(\d+)\b")


def normalise_ref(ref: str) -> str:
    """``'l6/n12'``, ``'6/12'``, ``'L6 / N12'`` -> ``'L6/N12'``."""
    from neuron_core.sites import parse_neuron_ref

    layer, neuron = parse_neuron_ref(ref.replace(" ", ""))
    return f"L{layer}/N{neuron}"


class Finding(BaseModel):
    """One established fact."""

    id: str = Field(pattern=r"^F\d{3,}$", description="F001, F002, ...")
    kind: FindingKind
    claim: str = Field(min_length=1, description="the fact in one sentence")
    neurons: list[str] = Field(default_factory=list, description="neuron ids the claim is about, as L6/N1234")
    numbers: dict[str, float] = Field(default_factory=dict, description="the numbers behind the claim, by name")
    artifact: str = Field(description="the file in the run folder the numbers come from")
    source: str = Field(description="the tool (or the controller) that established it")


class FindingsDocument(BaseModel):
    """What findings.json holds."""

    schema_: str = Field(default="findings.schema.json", alias="$schema")
    findings: list[Finding] = Field(default_factory=list)


def _finite(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise InputError(f"finding numbers must be finite, got {value!r}")
    return number


class FindingStore:
    """The findings of one run, persisted in ``findings.json``."""

    FILE = "findings.json"
    SCHEMA = "findings.schema.json"

    def __init__(self, run: RunFolder) -> None:
        self.run = run
        self._items: list[Finding] = []
        path = run.path_for(self.FILE)
        if path.exists():
            doc = FindingsDocument.model_validate_json(path.read_text(encoding="utf-8"))
            self._items = list(doc.findings)

    def add(self, *, kind: FindingKind, claim: str, artifact: str, source: str, neurons: list[str] | None = None,
            numbers: dict[str, Any] | None = None) -> str:
        refs = [normalise_ref(r) for r in (neurons or [])]
        nums = {str(k): _finite(v) for k, v in (numbers or {}).items()}
        self.run.path_for(artifact)  # refuses artifacts outside the run folder
        for item in self._items:
            if item.kind == kind and item.neurons == refs and item.numbers == nums and item.artifact == artifact \
                    and item.claim == claim:
                return item.id
        finding = Finding(id=f"F{len(self._items) + 1:03d}", kind=kind, claim=claim, neurons=refs, numbers=nums,
                          artifact=artifact, source=source)
        self._items.append(finding)
        self.save()
        return finding.id

    def save(self) -> None:
        doc = FindingsDocument(findings=self._items)
        self.run.write_json(self.FILE, doc.model_dump(mode="json", by_alias=True))
        schema_path = self.run.path_for(self.SCHEMA)
        if not schema_path.exists():
            self.run.write_json(self.SCHEMA, FindingsDocument.model_json_schema(by_alias=True))

    def all(self) -> list[Finding]:
        return list(self._items)

    def get(self, fid: str) -> Finding:
        for item in self._items:
            if item.id == fid:
                return item
        raise InputError(f"no finding {fid!r}; findings: {', '.join(i.id for i in self._items) or 'none'}")

    def __contains__(self, fid: object) -> bool:
        return any(i.id == fid for i in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def numbers(self) -> list[float]:
        return [v for item in self._items for v in item.numbers.values()]

    def neuron_refs(self) -> set[str]:
        return {r for item in self._items for r in item.neurons}

    def by_kind(self, kind: str) -> list[Finding]:
        return [i for i in self._items if i.kind == kind]


# -------------------------------------------------------------------------------------------- artifact numbers
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _walk(value: Any, out: list[float]) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        if math.isfinite(float(value)):
            out.append(float(value))
    elif isinstance(value, dict):
        for v in value.values():
            _walk(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _walk(v, out)


def artifact_numbers(path: Path, max_values: int = 2_000_000) -> list[float]:
    """Every finite number an artifact holds (JSON values, Parquet numeric cells, numbers in text files)."""
    if not path.exists():
        raise InputError(f"artifact {path.name!r} does not exist")
    out: list[float] = []
    if path.is_dir():
        for child in sorted(path.iterdir()):
            if child.suffix in (".json", ".parquet") and len(out) < max_values:
                out.extend(artifact_numbers(child, max_values - len(out)))
        return out
    if path.suffix == ".json":
        _walk(json.loads(path.read_text(encoding="utf-8")), out)
    elif path.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        for column in frame.columns:
            series = frame[column]
            if series.dtype.kind in "iuf":
                out.extend(float(v) for v in series.to_numpy().tolist() if math.isfinite(float(v)))
            if len(out) >= max_values:
                break
    elif path.suffix in (".md", ".txt", ".csv", ".html"):
        out.extend(float(m) for m in _NUMBER_RE.findall(path.read_text(encoding="utf-8", errors="replace")))
    else:
        raise InputError(f"cannot read numbers from a {path.suffix or 'file without suffix'} artifact")
    return out[:max_values]
