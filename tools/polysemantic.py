"""Tools: detect polysemantic neurons in profiled layers, describe one neuron's modes.

Usage::

    call_tool(ctx, "detect_polysemantic", {"layer": 6, "max_neurons": 64, "top_n": 5})   # -> Detection
    call_tool(ctx, "describe_neuron", {"neuron": "L6/N12"})                              # -> NeuronModes

Results are kept in the run folder (``tables/polysemantic.parquet`` with every analysed neuron's score,
``tables/detections.json`` with every verdict) so a later state, or a resumed run, reads them back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from neuron_core.errors import InputError
from tools._base import StrictArgs, ToolContext, fence, register
from tools.neurons import parse_ref, site_ref

__all__ = ["DetectArgs", "Detection", "NeuronVerdict", "DescribeArgs", "NeuronModes", "ModeView", "load_detections",
           "DETECTIONS_FILE"]

DETECTIONS_FILE = "tables/detections.json"


class DetectArgs(StrictArgs):
    layer: int = Field(ge=-64, le=256, description="a profiled layer")
    max_neurons: int = Field(default=64, ge=1, le=8192, description="neurons analysed, most active first")
    top_n: int = Field(default=5, ge=1, le=50, description="how many polysemantic neurons to return")
    n_null: int | None = Field(default=None, ge=10, le=5000, description="random context sets for the p-value")
    neurons: list[int] | None = Field(default=None, max_length=64, description="analyse exactly these neurons "
                                      "(e.g. to explain them) instead of the most active ones")


class NeuronVerdict(BaseModel):
    neuron: str
    score: float
    p_value: float
    n_modes: int
    modes: list[str] = Field(description="label (share) of each mode")
    finding_id: str


class Detection(BaseModel):
    site: str
    n_analysed: int
    n_polysemantic: int
    neurons: list[NeuronVerdict]
    artifacts: list[str]
    finding_ids: list[str]
    seconds: dict[str, float]
    headline: str


def _save(ctx: ToolContext) -> None:
    data = {site: [v.model_dump(mode="json") for v in verdicts] for site, verdicts in ctx.detections.items()}
    ctx.run.write_json(DETECTIONS_FILE, data)


def load_detections(ctx: ToolContext) -> dict[str, list[Any]]:
    """Every stored verdict by site (from memory, else from ``tables/detections.json``)."""
    if not ctx.detections:
        path = ctx.run.path_for(DETECTIONS_FILE)
        if path.exists():
            from neuron_core.analysis import PolysemanticNeuron

            raw = json.loads(path.read_text(encoding="utf-8"))
            ctx.detections = {site: [PolysemanticNeuron.model_validate(v) for v in items]
                              for site, items in raw.items()}
    return ctx.detections


def is_polysemantic(verdict: Any, polysemantic: set[tuple[str, int]]) -> bool:
    return (verdict.site, verdict.neuron) in polysemantic


def _mode_numbers(verdict: Any) -> dict[str, float]:
    """Each mode's share of the sampled mass and, where there is a top band, of the top examples."""
    numbers: dict[str, float] = {}
    for i, m in enumerate(verdict.modes, 1):
        numbers[f"mode {i} share"] = m.share
        if m.top_share is not None:
            numbers[f"mode {i} top_share"] = m.top_share
    return numbers


def _mode_text(verdict: Any) -> str:
    return ", ".join(f"“{m.label}” ({m.share_text})" for m in verdict.modes)


@register("detect_polysemantic", "Find polysemantic neurons in a profiled layer: cluster each neuron's strongest "
          "contexts into modes and score how distinct they are against random context sets (writes "
          "tables/polysemantic.parquet).", DetectArgs, Detection)
def detect_polysemantic(ctx: ToolContext, args: DetectArgs) -> Detection:
    from neuron_core.analysis import DetectorConfig, PolysemanticDetector

    prof = ctx.require_profile()
    interface = ctx.require_model()
    site = prof[args.layer].name
    options: dict[str, Any] = {"max_neurons": args.max_neurons, "ablation": ctx.ablation}
    n_null = args.n_null if args.n_null is not None else ctx.n_null
    if n_null is not None:
        options["n_null"] = n_null
    wanted: dict[str, Sequence[int]] | None = None
    if args.neurons:  # the asked-for neurons plus the most active ones (the null distribution needs company)
        peak = prof[site].max.float()
        order = [int(n) for n in peak.argsort(descending=True)[: args.max_neurons] if float(peak[n]) > 0]
        wanted = {site: list(dict.fromkeys([*args.neurons, *order]))}
    det = PolysemanticDetector(prof, interface=interface, embedder=ctx.embedder, config=DetectorConfig(**options),
                               sites=[site], neurons=wanted, seed=ctx.seed)
    found = det.detect(top_n=None)
    ctx.detectors[site] = det
    ctx.detections[site] = list(det.results)
    _save(ctx)
    scores = det.scores()
    artifact = "tables/polysemantic.parquet"
    existing = ctx.run.path_for(artifact)
    if existing.exists():  # keep other layers' rows
        import pandas as pd

        old = pd.read_parquet(existing)
        scores = pd.concat([old[old["site"] != site], scores], ignore_index=True)
    ctx.run.write_parquet(artifact, scores)
    label = site_ref(site, 0).split("/")[0]
    n_analysed = len(det.results)
    ids = [ctx.findings.add(
        kind="polysemantic_summary", artifact=artifact, source="detect_polysemantic",
        claim=f"Of {n_analysed} neurons analysed in {label}, {len(found)} are polysemantic.",
        neurons=[v.ref for v in found],
        numbers={"n_analysed": n_analysed, "n_polysemantic": len(found)})]
    verdicts: list[NeuronVerdict] = []
    for rank, v in enumerate(found):
        numbers: dict[str, float] = {"score": v.score, "p_value": v.p_value, "z_score": v.z_score,
                                     "n_modes": v.n_modes, "separation": v.separation, "rank": rank + 1}
        numbers |= _mode_numbers(v)
        for i, mode in enumerate(v.modes, 1):
            numbers[f"mode {i} n_examples"] = mode.n_examples
            if mode.probe_similarity is not None:
                numbers[f"mode {i} probe_similarity"] = mode.probe_similarity
            if mode.effect is not None:
                numbers[f"mode {i} effect"] = mode.effect
        fid = ctx.findings.add(
            kind="polysemantic", artifact=artifact, source="detect_polysemantic", neurons=[v.ref], numbers=numbers,
            claim=f"{v.ref} is polysemantic (score {v.score:.2f}, p = {v.p_value:.3g}) with {v.n_modes} modes: "
                  f"{_mode_text(v)}.")
        ids.append(fid)
        if rank < args.top_n:
            verdicts.append(NeuronVerdict(neuron=v.ref, score=round(v.score, 4), p_value=round(v.p_value, 4),
                                          n_modes=v.n_modes, finding_id=fid,
                                          modes=[f"{fence(m.label, 60)} ({m.share_text})" for m in v.modes]))
    poly = {(v.site, v.neuron) for v in found}
    for v in det.results:
        if args.neurons and v.neuron in args.neurons and (v.site, v.neuron) not in poly:
            ids.append(ctx.findings.add(
                kind="neuron_verdict", artifact=artifact, source="detect_polysemantic", neurons=[v.ref],
                numbers={"score": v.score, "p_value": v.p_value, "z_score": v.z_score, "n_modes": v.n_modes,
                         "separation": v.separation} | _mode_numbers(v),
                claim=f"{v.ref} is not polysemantic by the test (score {v.score:.2f}, p = {v.p_value:.3g}); "
                      f"{v.n_modes} mode(s): {_mode_text(v)}."))
    timings = {k: round(float(t), 3) for k, t in dict(getattr(det, "timings", {}) or {}).items()}
    return Detection(site=site, n_analysed=n_analysed, n_polysemantic=len(found), neurons=verdicts,
                     artifacts=[artifact, DETECTIONS_FILE], finding_ids=ids, seconds=timings,
                     headline=f"{len(found)} of {n_analysed} neurons in {label} are polysemantic"
                              + (f"; top: {found[0].ref} (score {found[0].score:.2f})" if found else ""))


class DescribeArgs(StrictArgs):
    neuron: str = Field(min_length=3, max_length=40, description="neuron id, e.g. L6/N1234")
    n_examples: int = Field(default=3, ge=1, le=10, description="examples shown per mode")


class ModeView(BaseModel):
    label: str
    share: float
    share_text: str = Field(description="the share in words (a mode seen only among the top examples gives its "
                            "share of those)")
    n_examples: int
    top_tokens: list[str]
    probe_concept: str | None
    effect: float | None
    examples: list[str]


class NeuronModes(BaseModel):
    neuron: str
    score: float
    p_value: float
    z_score: float
    separation: float
    n_modes: int
    modes: list[ModeView]
    summary: str
    headline: str


@register("describe_neuron", "The modes of one analysed neuron: label, share, top tokens and example contexts "
          "(corpus data between <data> markers).", DescribeArgs, NeuronModes)
def describe_neuron(ctx: ToolContext, args: DescribeArgs) -> NeuronModes:
    site, neuron = parse_ref(ctx, args.neuron)
    det = ctx.detectors.get(site)
    verdict = None
    if det is not None:
        verdict = det.describe(site, neuron)
    else:
        for v in load_detections(ctx).get(site, []):
            if v.neuron == neuron:
                verdict = v
        if verdict is None:
            raise InputError(f"{args.neuron} was not analysed; run detect_polysemantic on its layer first "
                             "(only the most active neurons are analysed)")
    modes = [ModeView(label=fence(m.label, 80), share=round(m.share, 4), share_text=m.share_text,
                      n_examples=m.n_examples,
                      top_tokens=[fence(t, 40) for t in m.top_tokens[:8]], probe_concept=m.probe_concept,
                      effect=None if m.effect is None else round(m.effect, 4),
                      examples=[f"{fence(e.text)} = {e.value:.3g}" for e in m.examples[:args.n_examples]])
             for m in verdict.modes]
    return NeuronModes(neuron=verdict.ref, score=round(verdict.score, 4), p_value=round(verdict.p_value, 4),
                       z_score=round(verdict.z_score, 3), separation=round(verdict.separation, 4),
                       n_modes=verdict.n_modes, modes=modes, summary=fence(verdict.summary, 600),
                       headline=f"{verdict.ref}: {verdict.n_modes} modes, score {verdict.score:.2f}")
