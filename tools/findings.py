"""Findings: the facts an investigation established, the only facts a report may state.

Usage::

    store = FindingStore(run)                                   # reads run/findings.json when present
    fid = store.add(kind="polysemantic", claim="L6/N12 has 3 modes", neurons=["L6/N12"],
                    quantities=quantities_of({"score": 0.81, "n_modes": 3}, neuron="L6/N12")
                    + [Quantity(name="share", value=0.45, neuron="L6/N12", mode=1)],
                    labels=[Label(name="mode", text="months", neuron="L6/N12", mode=1)],
                    verdict="detected", artifact="tables/polysemantic.parquet", source="detect")
    f = store.get(fid)
    f.value("score"), f.value("share", mode=1), f.text("mode", mode=1)      # 0.81, 0.45, 'months'
    f.quantities_for(neuron="L6/N12"), f.mode_indices(), f.subject          # [...], [1], 'L6/N12'

Every finding has an id (``F001``), a claim in words (for people: code never reads it back), typed quantities (a
name, a value, and the neuron, layer and 1-based mode it is of), typed labels (text such as a mode's label, of the
same shape), a verdict for findings about one neuron's polysemanticity, and the artifact (a path inside the run
folder) it came from. ``findings.json`` is written atomically after each change, with ``findings.schema.json`` (its
JSON Schema) beside it. Adding a finding identical to a stored one returns the existing id.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from neuron_core.errors import CorruptRunFolderError, InputError, UnknownSiteError
from neuron_core.sites import NeuronRef
from neuron_core.store import RunFolder

__all__ = ["Finding", "FindingsDocument", "FindingStore", "FindingKind", "Quantity", "Label", "Verdict",
           "MissingQuantityError", "quantities_of", "artifact_numbers", "NEURON_REF_RE", "normalise_ref", "ref_parts"]

FindingKind = Literal["run", "layer_summary", "top_neurons", "polysemantic", "polysemantic_summary", "mode",
                      "neuron_verdict", "logit_effects", "token_analysis", "examples", "ablation", "comparison",
                      "note"]
Verdict = Literal["detected", "borderline", "not detected"]  # neuron_core.analysis.types.Verdict (tested equal)

NEURON_REF_RE = re.compile(r"\bL(\d+)\s*/\s*N(\d+)\b")
_NAME = r"^[a-z][a-z0-9_]*$"


def ref_parts(ref: str) -> tuple[int, int]:
    """``'L6/N12'`` (or ``'6/12'``) -> ``(6, 12)``; a ref that is not a neuron id is an InputError."""
    try:
        return NeuronRef.parse(ref.replace(" ", "")).pair
    except UnknownSiteError as exc:
        raise InputError(str(exc)) from None


def normalise_ref(ref: str) -> str:
    """``'l6/n12'``, ``'6/12'``, ``'L6 / N12'`` -> ``'L6/N12'``."""
    return str(NeuronRef(*ref_parts(ref)))


class MissingQuantityError(LookupError):
    """A finding holds no quantity (or label) of that name for that neuron, layer and mode."""


class _Of(BaseModel):
    """What a quantity or a label is of: a neuron (its layer follows), a layer, a mode of the neuron, or the run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_NAME, description="what it is: score, p_value, n_modes, share, effect, max, n_tokens, "
                      "mode (a mode's label), ...")
    neuron: str | None = Field(default=None, description="the neuron it is of, as L6/N12; None: of a layer or the run")
    layer: int | None = Field(default=None, description="the layer it is of (the neuron's, when a neuron is given)")
    mode: int | None = Field(default=None, ge=1, description="1-based index of the neuron's mode it is of")

    @model_validator(mode="before")
    @classmethod
    def _subject(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("neuron") is None:
            return data
        layer, index = ref_parts(str(data["neuron"]))
        if data.get("layer") is not None and int(data["layer"]) != layer:
            raise ValueError(f"layer {data['layer']} contradicts neuron {data['neuron']}")
        return {**data, "neuron": str(NeuronRef(layer, index)), "layer": layer}

    @property
    def where(self) -> str:
        """``'L6/N12 mode 1'``, ``'layer 6'`` or ``'run'``: what it is of, for people."""
        base = self.neuron or (f"layer {self.layer}" if self.layer is not None else "run")
        return base + (f" mode {self.mode}" if self.mode is not None else "")


class Quantity(_Of):
    """One number a finding establishes, with what it is of."""

    value: float

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"a quantity must be finite, got {value!r}")
        return value


class Label(_Of):
    """One piece of text a finding establishes (a mode's label, a share in words, a promoted token)."""

    text: str = Field(min_length=1, max_length=400)


def quantities_of(values: Mapping[str, float | int | None], *, neuron: str | None = None, layer: int | None = None,
                  mode: int | None = None) -> list[Quantity]:
    """Quantities of one subject: ``quantities_of({"score": 0.8, "p_value": 0.01}, neuron="L6/N12")``; None values
    are left out (a quantity that was not measured)."""
    return [Quantity(name=name, value=float(value), neuron=neuron, layer=layer, mode=mode)
            for name, value in values.items() if value is not None]


class _Missing:
    """The default of :meth:`Finding.value` when a missing quantity must raise."""


_RAISE = _Missing()


class Finding(BaseModel):
    """One established fact."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^F\d{3,}$", description="F001, F002, ...")
    kind: FindingKind
    claim: str = Field(min_length=1, description="the fact in one sentence, for people (never parsed back)")
    neurons: list[str] = Field(default_factory=list, description="neuron ids the claim is about, as L6/N1234")
    quantities: list[Quantity] = Field(default_factory=list, description="the numbers behind the claim, typed")
    labels: list[Label] = Field(default_factory=list, description="the texts behind the claim (mode labels, ...)")
    verdict: Verdict | None = Field(default=None, description="for a finding about one neuron's polysemanticity: "
                                    "detected, borderline (the test cannot settle it) or not detected")
    artifact: str = Field(description="the file in the run folder the numbers come from")
    source: str = Field(description="the tool (or the controller) that established it")

    @model_validator(mode="after")
    def _about_its_neurons(self) -> Finding:
        stray = {x.neuron for x in [*self.quantities, *self.labels] if x.neuron and x.neuron not in self.neurons}
        if stray:
            raise ValueError(f"{self.id}: quantities or labels of {', '.join(sorted(stray))}, which the finding is "
                             "not about (add them to neurons)")
        return self

    @property
    def subject(self) -> str | None:
        """The neuron the finding is about, when it is about exactly one."""
        return self.neurons[0] if len(self.neurons) == 1 else None

    def quantities_for(self, name: str | None = None, *, neuron: str | None = None, layer: int | None = None,
                       mode: int | None = None) -> list[Quantity]:
        """The quantities that match every given filter (None matches anything)."""
        return [q for q in self.quantities if _fits(q, name, neuron, layer, mode)]

    def has(self, name: str, *, neuron: str | None = None, layer: int | None = None, mode: int | None = None) -> bool:
        return bool(self.quantities_for(name, neuron=neuron, layer=layer, mode=mode))

    def value(self, name: str, *, neuron: str | None = None, layer: int | None = None, mode: int | None = None,
              default: float | _Missing = _RAISE) -> float:
        """The one quantity ``name`` of the given neuron / layer / mode: ``f.value("share", mode=1)``.

        Raises MissingQuantityError when there is none (unless ``default`` is given), InputError when several match."""
        found = self.quantities_for(name, neuron=neuron, layer=layer, mode=mode)
        if len(found) > 1:
            raise InputError(f"{self.id} has {len(found)} quantities {name!r} ({', '.join(q.where for q in found)}); "
                             "say which neuron, layer or mode")
        if found:
            return found[0].value
        if isinstance(default, _Missing):
            raise MissingQuantityError(f"{self.id} has no quantity {name!r}" + _filters(neuron, layer, mode))
        return default

    def text(self, name: str, *, neuron: str | None = None, layer: int | None = None, mode: int | None = None) -> str:
        """The one label ``name`` of the given neuron / layer / mode: ``f.text("mode", mode=2)``."""
        found = [x for x in self.labels if _fits(x, name, neuron, layer, mode)]
        if len(found) != 1:
            if found:
                raise InputError(f"{self.id} has {len(found)} labels {name!r}; say which neuron, layer or mode")
            raise MissingQuantityError(f"{self.id} has no label {name!r}" + _filters(neuron, layer, mode))
        return found[0].text

    def texts(self, name: str, *, neuron: str | None = None) -> list[str]:
        """Every label ``name`` (of ``neuron``), in order."""
        return [x.text for x in self.labels if _fits(x, name, neuron, None, None)]

    def mode_indices(self, neuron: str | None = None) -> list[int]:
        """The modes (1-based) the finding holds quantities or labels of."""
        return sorted({x.mode for x in [*self.quantities, *self.labels]
                       if x.mode is not None and neuron in (None, x.neuron)})

    def layers(self) -> set[int]:
        """Every layer the finding is about (of its neurons, quantities and labels)."""
        out = {ref_parts(r)[0] for r in self.neurons}
        return out | {x.layer for x in [*self.quantities, *self.labels] if x.layer is not None}


def _fits(item: _Of, name: str | None, neuron: str | None, layer: int | None, mode: int | None) -> bool:
    if neuron is not None and neuron != item.neuron:
        neuron = normalise_ref(neuron)  # '6/12' asks for L6/N12
    return (name in (None, item.name) and neuron in (None, item.neuron) and layer in (None, item.layer)
            and mode in (None, item.mode))


def _filters(neuron: str | None, layer: int | None, mode: int | None) -> str:
    parts = [f"{k} {v}" for k, v in (("of", neuron), ("layer", layer), ("mode", mode)) if v is not None]
    return f" ({', '.join(parts)})" if parts else ""


class FindingsDocument(BaseModel):
    """What findings.json holds."""

    schema_: str = Field(default="findings.schema.json", alias="$schema")
    findings: list[Finding] = Field(default_factory=list)


class FindingStore:
    """The findings of one run, persisted in ``findings.json``."""

    FILE = "findings.json"
    SCHEMA = "findings.schema.json"

    def __init__(self, run: RunFolder) -> None:
        self.run = run
        self._items: list[Finding] = []
        path = run.path_for(self.FILE)
        if path.exists():
            try:
                doc = FindingsDocument.model_validate_json(path.read_bytes())
            except ValidationError as exc:
                problem = exc.errors()[0]
                raise CorruptRunFolderError(
                    f"{path}: not a findings document ({'.'.join(str(p) for p in problem['loc']) or 'file'}: "
                    f"{problem['msg']}); it may be truncated. Nothing was changed") from None
            self._items = list(doc.findings)

    def add(self, *, kind: FindingKind, claim: str, artifact: str, source: str, neurons: list[str] | None = None,
            quantities: list[Quantity] | None = None, labels: list[Label] | None = None,
            verdict: Verdict | None = None) -> str:
        """Store a finding (or find the identical stored one); returns its id."""
        refs = [normalise_ref(r) for r in (neurons or [])]
        self.run.path_for(artifact)  # refuses artifacts outside the run folder
        finding = Finding(id=f"F{len(self._items) + 1:03d}", kind=kind, claim=claim, neurons=refs,
                          quantities=list(quantities or []), labels=list(labels or []), verdict=verdict,
                          artifact=artifact, source=source)
        same = finding.model_dump(exclude={"id"})
        for item in self._items:
            if item.model_dump(exclude={"id"}) == same:
                return item.id
        self._items.append(finding)
        self.save()
        return finding.id

    def save(self) -> None:
        doc = FindingsDocument(findings=self._items)
        self.run.write_json(self.FILE, doc.model_dump(mode="json", by_alias=True))
        schema = FindingsDocument.model_json_schema(by_alias=True)
        schema_path = self.run.path_for(self.SCHEMA)
        if not schema_path.exists() or json.loads(schema_path.read_text(encoding="utf-8")) != schema:
            self.run.write_json(self.SCHEMA, schema)

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
        return [q.value for item in self._items for q in item.quantities]

    def neuron_refs(self) -> set[str]:
        return {r for item in self._items for r in item.neurons}

    def by_kind(self, kind: FindingKind) -> list[Finding]:
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
