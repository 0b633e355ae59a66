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

from neuron_core.errors import InputError, NeuronCoreError
from tools._base import StrictArgs, ToolContext, fence, register
from tools.findings import FindingKind, FindingStore, Label, Quantity, Verdict, quantities_of
from tools.neurons import parse_ref, site_label, site_layer

__all__ = ["DetectArgs", "Detection", "NeuronVerdict", "DescribeArgs", "NeuronModes", "ModeView", "load_detections",
           "record_detection", "record_verdict", "verdict_quantities", "verdict_labels", "DETECTIONS_FILE"]

DETECTIONS_FILE = "tables/detections.json"


class DetectArgs(StrictArgs):
    layer: int = Field(ge=-64, le=256, description="a profiled layer")
    max_neurons: int = Field(default=64, ge=1, le=8192, description="neurons analysed in full: the most "
                             "promising of a quick screen of every neuron of the layer")
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
    verdict: Verdict
    finding_id: str


class Detection(BaseModel):
    site: str
    n_analysed: int
    n_polysemantic: int
    n_borderline: int = Field(description="neurons the test cannot settle at this sample size")
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


def verdict_quantities(verdict: Any, rank: int | None = None) -> list[Quantity]:
    """The numbers of one verdict, typed: the neuron's score, p-value, z, modes, separation (and rank among the
    detected), then per mode its share of the sampled mass, of the top examples, its examples, probe similarity and
    ablation effect (those measured)."""
    out = quantities_of({"score": verdict.score, "p_value": verdict.p_value, "z_score": verdict.z_score,
                         "n_modes": verdict.n_modes, "separation": verdict.separation, "rank": rank},
                        neuron=verdict.ref)
    for i, m in enumerate(verdict.modes, 1):
        out += quantities_of({"share": m.share, "top_share": m.top_share, "n_examples": m.n_examples,
                              "probe_similarity": m.probe_similarity, "effect": m.effect}, neuron=verdict.ref, mode=i)
    return out


def verdict_labels(verdict: Any) -> list[Label]:
    """Each mode's label and its share in words (what a writer quotes), typed."""
    out: list[Label] = []
    for i, m in enumerate(verdict.modes, 1):
        out.append(Label(name="mode", text=(m.label.strip() or f"mode {i}")[:400], neuron=verdict.ref, mode=i))
        out.append(Label(name="share_text", text=m.share_text, neuron=verdict.ref, mode=i))
    return out


def _mode_text(verdict: Any) -> str:
    return ", ".join(f"“{m.label}” ({m.share_text})" for m in verdict.modes)


def _verdict_claim(v: Any) -> str:
    numbers = f"score {v.score:.2f}, p = {v.p_value:.3g}"
    modes = f"{v.n_modes} mode{'s' if v.n_modes != 1 else ''}: {_mode_text(v)}"
    if v.verdict == "detected":
        return f"{v.ref} is polysemantic ({numbers}) with {modes}."
    if v.verdict == "borderline":
        return f"{v.ref} is borderline: the test cannot settle it at this sample size ({numbers}); {modes}."
    return f"{v.ref} is not polysemantic by the test ({numbers}); {modes}."


def record_verdict(store: FindingStore, verdict: Any, *, artifact: str, rank: int | None = None) -> str:
    """One neuron's verdict as a finding: ``polysemantic`` when detected, else ``neuron_verdict``."""
    kind: FindingKind = "polysemantic" if verdict.verdict == "detected" else "neuron_verdict"
    return store.add(kind=kind, artifact=artifact, source="detect_polysemantic", neurons=[verdict.ref],
                     quantities=verdict_quantities(verdict, rank), labels=verdict_labels(verdict),
                     verdict=verdict.verdict, claim=_verdict_claim(verdict))


def record_detection(store: FindingStore, site: str, results: Sequence[Any], *, artifact: str,
                     requested: Sequence[int] = (), max_borderline: int = 5, n_screened: int | None = None
                     ) -> list[str]:
    """The findings of one layer's detection: the summary, every detected neuron (best first), the strongest
    ``max_borderline`` borderline ones and the requested neurons' verdicts. Returns their ids. ``n_screened``:
    how many neurons the detector's screen scored to pick the analysed ones (None: no screen)."""
    found = sorted((v for v in results if v.verdict == "detected"), key=lambda v: -v.score)
    borderline = sorted((v for v in results if v.verdict == "borderline"), key=lambda v: -v.score)
    label, layer = site_label(site), site_layer(site)
    n_borderline = f" and {len(borderline)} borderline" if borderline else ""
    counts = {"n_analysed": len(results), "n_polysemantic": len(found), "n_borderline": len(borderline)}
    screen = ""
    if n_screened is not None and n_screened > len(results):
        counts["n_screened"] = n_screened
        screen = f" (the most promising of its {n_screened} neurons by a quick screen)"
    ids = [store.add(
        kind="polysemantic_summary", artifact=artifact, source="detect_polysemantic",
        claim=f"Of {len(results)} neuron{'' if len(results) == 1 else 's'} analysed in {label}{screen}, {len(found)} "
              f"{'is' if len(found) == 1 else 'are'} polysemantic{n_borderline}.",
        neurons=[v.ref for v in found],
        quantities=quantities_of(counts, layer=layer),
        labels=[Label(name="site", text=label, layer=layer)])]
    ids += [record_verdict(store, v, artifact=artifact, rank=rank) for rank, v in enumerate(found, 1)]
    extra = borderline[:max_borderline] + [v for v in results if v.neuron in requested and v.verdict != "detected"]
    ids += [record_verdict(store, v, artifact=artifact) for v in extra]  # a neuron in both: one finding
    return list(dict.fromkeys(ids))


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
    det.detect(top_n=None)
    ctx.detectors[site] = det
    ctx.detections[site] = list(det.results)
    _save(ctx)
    artifact = _write_scores(ctx, site, det.scores())
    ids = record_detection(ctx.findings, site, det.results, artifact=artifact, requested=args.neurons or (),
                           max_borderline=args.top_n, n_screened=det.n_screened.get(site))
    finding_of = {f.subject: f.id for f in ctx.findings.by_kind("polysemantic") if f.id in ids}
    return _detection(site, det, ids, finding_of, artifact, args.top_n)


def _analysed_verdict(ctx: ToolContext, site: str, neuron: int) -> Any:
    """The neuron's verdict from its layer's detection (in memory, else on disk), or None if it was not analysed."""
    det = ctx.detectors.get(site)
    if det is not None:
        return next((v for v in det.results if v.site == site and v.neuron == neuron), None)
    return next((v for v in load_detections(ctx).get(site, []) if v.neuron == neuron), None)


def _analyse_alone(ctx: ToolContext, site: str, neuron: int, ref: str) -> Any:
    """A neuron its layer's detection did not analyse (a screen picks ``max_neurons`` of the layer): the detector on
    that neuron alone, with the layer detection's settings. Its p-value does not depend on the company."""
    from dataclasses import replace

    from neuron_core.analysis import DetectorConfig, PolysemanticDetector

    try:
        prof = ctx.require_profile()
        prof.key(site)
    except NeuronCoreError as err:  # no profile yet, or not of this layer
        raise InputError(f"{ref} was not analysed and its layer is not profiled; run profile_corpus and "
                         "detect_polysemantic on its layer first") from err
    base = ctx.detectors.get(site)
    config = (replace(base.config, max_neurons=None) if base is not None
              else DetectorConfig(ablation=ctx.ablation, **({"n_null": ctx.n_null} if ctx.n_null else {})))
    det = PolysemanticDetector(prof, interface=ctx.require_model(), embedder=ctx.embedder, config=config,
                               sites=[site], neurons=[neuron], seed=ctx.seed)
    return det.describe(site, neuron)


def _write_scores(ctx: ToolContext, site: str, scores: Any) -> str:
    """tables/polysemantic.parquet with this site's rows replaced (other layers' rows kept)."""
    artifact = "tables/polysemantic.parquet"
    existing = ctx.run.path_for(artifact)
    if existing.exists():
        import pandas as pd

        old = pd.read_parquet(existing)
        scores = pd.concat([old[old["site"] != site], scores], ignore_index=True)
    ctx.run.write_parquet(artifact, scores)
    return artifact


def _detection(site: str, det: Any, ids: list[str], finding_of: dict[str | None, str], artifact: str,
               top_n: int) -> Detection:
    found = sorted((v for v in det.results if v.verdict == "detected"), key=lambda v: -v.score)
    n_borderline = sum(v.verdict == "borderline" for v in det.results)
    verdicts = [NeuronVerdict(neuron=v.ref, score=round(v.score, 4), p_value=round(v.p_value, 4),
                              n_modes=v.n_modes, finding_id=finding_of[v.ref], verdict=v.verdict,
                              modes=[f"{fence(m.label, 60)} ({m.share_text})" for m in v.modes])
                for v in found[:top_n]]
    timings = {k: round(float(t), 3) for k, t in dict(getattr(det, "timings", {}) or {}).items()}
    label = site_label(site)
    return Detection(site=site, n_analysed=len(det.results), n_polysemantic=len(found), n_borderline=n_borderline,
                     neurons=verdicts, artifacts=[artifact, DETECTIONS_FILE], finding_ids=ids, seconds=timings,
                     headline=f"{len(found)} of {len(det.results)} neurons in {label} are polysemantic"
                              + (f", {n_borderline} borderline" if n_borderline else "")
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
    verdict: Verdict
    modes: list[ModeView]
    summary: str
    finding_id: str = Field(description="the finding that holds these numbers (recorded if it was not yet)")
    headline: str


@register("describe_neuron", "The modes of one neuron: label, share, top tokens and example contexts (corpus data "
          "between <data> markers); a neuron of a profiled layer that its detection did not analyse is analysed "
          "alone.", DescribeArgs, NeuronModes)
def describe_neuron(ctx: ToolContext, args: DescribeArgs) -> NeuronModes:
    site, neuron = parse_ref(ctx, args.neuron)
    verdict = _analysed_verdict(ctx, site, neuron)
    if verdict is None:
        verdict = _analyse_alone(ctx, site, neuron, args.neuron)
    modes = [ModeView(label=fence(m.label, 80), share=round(m.share, 4), share_text=m.share_text,
                      n_examples=m.n_examples,
                      top_tokens=[fence(t, 40) for t in m.top_tokens[:8]], probe_concept=m.probe_concept,
                      effect=None if m.effect is None else round(m.effect, 4),
                      examples=[f"{fence(e.text)} = {e.value:.3g}" for e in m.examples[:args.n_examples]])
             for m in verdict.modes]
    recorded = next((f for f in ctx.findings.all() if f.kind in ("polysemantic", "neuron_verdict")
                     and f.subject == verdict.ref), None)
    fid = recorded.id if recorded else record_verdict(ctx.findings, verdict, artifact=DETECTIONS_FILE)
    return NeuronModes(neuron=verdict.ref, score=round(verdict.score, 4), p_value=round(verdict.p_value, 4),
                       z_score=round(verdict.z_score, 3), separation=round(verdict.separation, 4),
                       n_modes=verdict.n_modes, verdict=verdict.verdict, modes=modes,
                       summary=fence(verdict.summary, 600), finding_id=fid,
                       headline=f"{verdict.ref}: {verdict.n_modes} modes, score {verdict.score:.2f}")
