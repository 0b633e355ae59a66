"""Tools about single neurons and layers: statistics, examples, token analysis of a text, logit effects.

Usage::

    call_tool(ctx, "neuron_stats", {"layer": 6, "top": 5})                 # -> LayerStats (tables/neuron_stats.parquet)
    call_tool(ctx, "neuron_examples", {"neuron": "L6/N12", "kind": "top"})  # -> NeuronExamples (texts fenced)
    call_tool(ctx, "token_analysis", {"text": "The cat sat.", "layer": 6})  # -> TokenAnalysis
    call_tool(ctx, "logit_effects", {"layer": 6, "neurons": [12, 99]})      # -> LogitEffectsResult

Every text that came from a corpus or a model is fenced (``<data>…</data>``): it is data, not instructions.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Literal

from pydantic import BaseModel, Field

from neuron_core.errors import InputError
from neuron_core.sites import NeuronRef, canonical_site_name, layer_of_site_name, neuron_ref, site_label
from tools._base import StrictArgs, ToolContext, fence, register
from tools.findings import FindingStore, Label, Quantity, quantities_of

__all__ = ["NeuronStatsArgs", "LayerStats", "NeuronRow", "ExamplesArgs", "NeuronExamples", "ExampleView",
           "TokenAnalysisArgs", "TokenAnalysis", "LogitEffectsArgs", "LogitEffectsResult", "site_ref", "parse_ref",
           "site_label", "site_layer", "record_layer_stats", "record_logit_effects"]


# The names of sites and neurons live in neuron_core.sites; these are its functions under the tools' names.
site_ref = neuron_ref  # ('blocks.6.mlp.hook_post', 12) -> 'L6/N12'
site_layer = layer_of_site_name  # 'blocks.6.mlp.hook_post' -> 6; None for a site that is not a numbered layer


def parse_ref(ctx: ToolContext, ref: str) -> tuple[str, int]:
    """``'L6/N12'`` -> (canonical site, 12), checked against the loaded model (or the profile)."""
    layer, neuron = NeuronRef.parse(ref).pair
    if ctx.interface is not None:
        site = ctx.interface.resolve(layer).name
    else:
        site = canonical_site_name(layer)
    if ctx.profile is not None and site in ctx.profile.site_stats:
        n = ctx.profile[site].n_neurons
        if not 0 <= neuron < n:
            raise InputError(f"neuron {neuron} out of range for layer {layer} (0-{n - 1})")
    return site, neuron


def _r(value: Any, digits: int = 4) -> float:
    number = float(value)
    return round(number, digits) if math.isfinite(number) else float("nan")


class NeuronStatsArgs(StrictArgs):
    layer: int = Field(ge=-64, le=256, description="a profiled layer")
    top: int = Field(default=8, ge=1, le=50, description="how many of the most active neurons to list")


class NeuronRow(BaseModel):
    ref: str
    max: float
    mean: float
    frac_active: float


class LayerStats(BaseModel):
    site: str
    n_neurons: int
    n_dead: int
    n_dense: int
    n_outlier: int
    mean_frac_active: float
    top_by_max: list[NeuronRow]
    artifact: str
    finding_ids: list[str]
    headline: str


@register("neuron_stats", "Per-neuron statistics of one profiled layer: dead, dense and outlier neurons and the "
          "most strongly activating neurons (writes tables/neuron_stats.parquet).", NeuronStatsArgs, LayerStats)
def neuron_stats(ctx: ToolContext, args: NeuronStatsArgs) -> LayerStats:
    from neuron_core.analysis import layer_summary, neuron_table

    prof = ctx.require_profile()
    site = prof[args.layer].name
    table = neuron_table(prof)
    ctx.run.write_parquet("tables/neuron_stats.parquet", table)
    ctx.run.write_parquet("tables/layer_summary.parquet", layer_summary(prof))
    rows = table[table["site"] == site]
    n = int(len(rows))
    flags = {name: int(rows[name].astype(bool).sum()) if name in rows else 0 for name in ("dead", "dense", "outlier")}
    mean_frac = float(rows["frac_active"].mean())
    top = rows.sort_values("max", ascending=False).head(args.top)
    top_rows = [NeuronRow(ref=site_ref(site, int(r.neuron)), max=_r(r.max), mean=_r(r.mean),
                          frac_active=_r(r.frac_active)) for r in top.itertuples()]
    artifact = "tables/neuron_stats.parquet"
    ids = record_layer_stats(ctx.findings, site, n_neurons=n, flags=flags, mean_frac_active=mean_frac,
                             top_rows=top_rows, artifact=artifact)
    label = site_label(site)
    return LayerStats(site=site, n_neurons=n, n_dead=flags["dead"], n_dense=flags["dense"],
                      n_outlier=flags["outlier"], mean_frac_active=_r(mean_frac), top_by_max=top_rows,
                      artifact=artifact, finding_ids=ids,
                      headline=f"{label}: {n} neurons, {flags['dead']} dead, {flags['dense']} dense; top "
                               + ", ".join(r.ref for r in top_rows[:3]))


def record_layer_stats(store: FindingStore, site: str, *, n_neurons: int, flags: dict[str, int],
                       mean_frac_active: float, top_rows: list[NeuronRow], artifact: str) -> list[str]:
    """A layer's statistics as findings: its summary (dead, dense, outliers, mean active fraction) and its most
    strongly activating neurons. Returns their ids."""
    label, layer = site_label(site), site_layer(site)
    ids = [store.add(
        kind="layer_summary", artifact=artifact, source="neuron_stats",
        claim=f"Layer {label}: {n_neurons} neurons, {flags['dead']} dead, {flags['dense']} dense, "
              f"{flags['outlier']} outliers; on average a neuron is active on {mean_frac_active:.1%} of tokens.",
        quantities=quantities_of({"n_neurons": n_neurons, "n_dead": flags["dead"], "n_dense": flags["dense"],
                                  "n_outlier": flags["outlier"], "mean_frac_active": mean_frac_active}, layer=layer),
        labels=[Label(name="site", text=label, layer=layer)])]
    if top_rows:
        ids.append(store.add(
            kind="top_neurons", artifact=artifact, source="neuron_stats", neurons=[r.ref for r in top_rows],
            claim="The most strongly activating neurons of " + label + ": "
                  + ", ".join(f"{r.ref} (max {r.max:.3g})" for r in top_rows) + ".",
            quantities=[q for rank, r in enumerate(top_rows, 1) for q in quantities_of(
                {"max": r.max, "frac_active": r.frac_active, "rank": rank}, neuron=r.ref)]))
    return ids


class ExamplesArgs(StrictArgs):
    neuron: str = Field(min_length=3, max_length=40, description="neuron id, e.g. L6/N1234")
    kind: Literal["top", "quantile", "bottom"] = "top"
    n: int = Field(default=6, ge=1, le=30)


class ExampleView(BaseModel):
    text: str = Field(description="fenced context, the activating token marked [[like this]]")
    token: str
    value: float
    doc_id: int
    position: int


class NeuronExamples(BaseModel):
    neuron: str
    kind: str
    examples: list[ExampleView]
    headline: str


@register("neuron_examples", "Contexts where a neuron activates (top, quantile-spread or bottom) from the profile. "
          "Texts are corpus data between <data> markers.", ExamplesArgs, NeuronExamples)
def neuron_examples(ctx: ToolContext, args: ExamplesArgs) -> NeuronExamples:
    prof = ctx.require_profile()
    site, neuron = parse_ref(ctx, args.neuron)
    view = prof[site]
    if args.kind == "top":
        items = view.top_examples(neuron, args.n)
    elif args.kind == "bottom":
        items = view.bottom_examples(neuron, args.n)
    else:
        items = view.quantile_examples(neuron, args.n)
    out = [ExampleView(text=fence(e.text()), token=fence(e.token, 60), value=_r(e.value), doc_id=e.doc_id,
                       position=e.position) for e in items]
    ref = site_ref(site, neuron)
    return NeuronExamples(neuron=ref, kind=args.kind, examples=out,
                          headline=f"{len(out)} {args.kind} examples of {ref}")


class TokenAnalysisArgs(StrictArgs):
    text: str = Field(min_length=1, max_length=2000)
    layer: int = Field(ge=-64, le=256)
    top: int = Field(default=5, ge=1, le=20, description="most active neurons listed per token")


class TokenAnalysis(BaseModel):
    site: str
    n_tokens: int
    rows: list[dict[str, Any]] = Field(description="per token: the token (fenced) and its most active neurons")
    artifact: str
    headline: str


@register("token_analysis", "Run one text through the model and list, per token, the most active neurons of a "
          "layer.", TokenAnalysisArgs, TokenAnalysis)
def token_analysis(ctx: ToolContext, args: TokenAnalysisArgs) -> TokenAnalysis:
    from neuron_core.analysis import text_neuron_map

    interface = ctx.require_model()
    site = interface.resolve(args.layer).name
    frame = text_neuron_map(interface, args.text, site, top=args.top)
    digest = hashlib.sha256(args.text.encode()).hexdigest()[:10]
    artifact = f"tables/token_analysis_{digest}.parquet"
    ctx.run.write_parquet(artifact, frame)
    rows: list[dict[str, Any]] = []
    for record in frame.head(120).to_dict(orient="records"):
        row: dict[str, Any] = {}
        for key, value in record.items():
            if isinstance(value, str):
                row[key] = fence(value, 80)
            elif isinstance(value, float):
                row[key] = _r(value)
            elif isinstance(value, (int, bool)) or value is None:
                row[key] = value
            else:
                row[key] = str(value)[:120]
        rows.append(row)
    return TokenAnalysis(site=site, n_tokens=len(frame), rows=rows, artifact=artifact,
                         headline=f"token analysis of a {len(args.text)}-character text at {site}")


class LogitEffectsArgs(StrictArgs):
    layer: int = Field(ge=-64, le=256)
    neurons: list[int] = Field(min_length=1, max_length=20)
    k: int = Field(default=8, ge=1, le=30)


class NeuronEffects(BaseModel):
    neuron: str
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]
    finding_id: str


class LogitEffectsResult(BaseModel):
    effects: list[NeuronEffects]
    artifact: str
    headline: str


@register("logit_effects", "Tokens whose logits each neuron most promotes and suppresses through the unembedding "
          "(direct path).", LogitEffectsArgs, LogitEffectsResult)
def logit_effects(ctx: ToolContext, args: LogitEffectsArgs) -> LogitEffectsResult:
    from neuron_core.analysis import neuron_logit_effects

    interface = ctx.require_model()
    site = interface.resolve(args.layer).name
    effects = neuron_logit_effects(interface, site, list(args.neurons), k=args.k)
    for e in effects:
        ctx.logit[f"{e.site}/{e.neuron}"] = e
    artifact = "tables/logit_effects.json"
    ctx.run.write_json(artifact, [e.model_dump(mode="json") if hasattr(e, "model_dump") else vars(e)
                                  for e in ctx.logit.values()])
    out: list[NeuronEffects] = []
    for e in effects:
        ref = site_ref(site, int(e.neuron))
        promoted = [(str(t), _r(v)) for t, v in list(e.promoted)[:args.k]]
        suppressed = [(str(t), _r(v)) for t, v in list(e.suppressed)[:args.k]]
        fid = record_logit_effects(ctx.findings, ref, promoted, suppressed, artifact=artifact)
        out.append(NeuronEffects(neuron=ref, promoted=[(fence(t, 40), v) for t, v in promoted],
                                 suppressed=[(fence(t, 40), v) for t, v in suppressed], finding_id=fid))
    return LogitEffectsResult(effects=out, artifact=artifact,
                              headline=f"logit effects of {len(out)} neurons at {site}")


def record_logit_effects(store: FindingStore, ref: str, promoted: list[tuple[str, float]],
                         suppressed: list[tuple[str, float]], *, artifact: str) -> str:
    """One neuron's strongest logit effects (tokens, strongest first, with their logit changes) as a finding."""
    claim = (f"{ref} most promotes " + ", ".join(repr(t) for t, _ in promoted[:3])
             + " and most suppresses " + ", ".join(repr(t) for t, _ in suppressed[:3]) + ".")
    return store.add(kind="logit_effects", claim=claim, neurons=[ref], artifact=artifact, source="logit_effects",
                     quantities=_effect_quantities(ref, promoted, suppressed),
                     labels=_effect_labels(ref, promoted, suppressed))


def _effect_quantities(ref: str, promoted: list[tuple[str, float]], suppressed: list[tuple[str, float]]
                       ) -> list[Quantity]:
    """The three strongest logit changes each way, strongest first (finite ones)."""
    return [Quantity(name=name, value=v, neuron=ref) for name, pairs in (("promoted", promoted),
                                                                         ("suppressed", suppressed))
            for _, v in pairs[:3] if math.isfinite(v)]


def _effect_labels(ref: str, promoted: list[tuple[str, float]], suppressed: list[tuple[str, float]]) -> list[Label]:
    """The tokens of those changes, in the same order (a token of blanks is shown as '␣')."""
    return [Label(name=name, text=t[:400] if t.strip() else "␣", neuron=ref)
            for name, pairs in (("promoted", promoted), ("suppressed", suppressed))
            for t, v in pairs[:3] if math.isfinite(v)]
