"""Tool: zero-ablate one neuron on chosen contexts (a mode's examples, or contexts holding a word).

Usage::

    call_tool(ctx, "ablate_neuron", {"neuron": "L3/N344", "mode": 1})           # on mode 1's examples
    call_tool(ctx, "ablate_neuron", {"neuron": "L3/N344", "contains": "log"})   # on contexts holding 'log'

The result, and an ``ablation`` finding, give the mean loss change in nats per token at and after the activating
token when the neuron is zeroed (positive: the model needs the neuron there). Causal LMs only.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, model_validator

from neuron_core.errors import InputError
from tools._base import StrictArgs, ToolContext, fence, register
from tools.findings import Label, quantities_of
from tools.neurons import parse_ref, site_ref
from tools.polysemantic import load_detections

__all__ = ["AblateArgs", "Ablation"]


class AblateArgs(StrictArgs):
    neuron: str = Field(min_length=3, max_length=40, description="neuron id, e.g. L6/N1234")
    mode: int | None = Field(default=None, ge=1, le=20, description="ablate on this mode's examples (1-based)")
    contains: str | None = Field(default=None, min_length=1, max_length=60,
                                 description="ablate on the neuron's strong contexts whose text holds this word")
    n: int = Field(default=8, ge=1, le=32, description="contexts used at most")

    @model_validator(mode="after")
    def _one_selection(self) -> AblateArgs:
        if (self.mode is None) == (self.contains is None):
            raise ValueError("give exactly one of mode or contains")
        return self


class Ablation(BaseModel):
    neuron: str
    selection: str = Field(description="which contexts: a mode's label or the word they hold")
    mode: int | None
    n_contexts: int
    effect: float = Field(description="mean loss change, nats per token (ablated minus clean)")
    per_context: list[tuple[str, float]] = Field(description="each context (fenced) and its loss change")
    finding_id: str
    headline: str


def _mode_keys(ctx: ToolContext, site: str, neuron: int, mode: int) -> tuple[str, set[tuple[int, int]]]:
    verdict = next((v for v in load_detections(ctx).get(site, []) if v.neuron == neuron), None)
    if verdict is None:
        raise InputError(f"{site_ref(site, neuron)} was not analysed for modes; run detect_polysemantic first")
    if not 1 <= mode <= len(verdict.modes):
        raise InputError(f"{site_ref(site, neuron)} has {len(verdict.modes)} modes; there is no mode {mode}")
    m = verdict.modes[mode - 1]
    return m.label, {(e.doc_id, e.position) for e in m.examples}


@register("ablate_neuron", "Zero-ablate a neuron on one mode's examples, or on its strong contexts holding a word, "
          "and measure the model's loss change (nats per token; records an ablation finding).", AblateArgs, Ablation)
def ablate_neuron(ctx: ToolContext, args: AblateArgs) -> Ablation:
    from neuron_core.analysis import contexts_from_profile
    from neuron_core.analysis.ablation import per_context_effects

    interface = ctx.require_model()
    prof = ctx.require_profile()
    site, neuron = parse_ref(ctx, args.neuron)
    ref = site_ref(site, neuron)
    pool = contexts_from_profile(prof, site, neuron, n_top=256, n_sample=256, band=0.0)
    if args.mode is not None:
        selection, keys = _mode_keys(ctx, site, neuron, args.mode)
        chosen = [c for c in pool if c.key in keys and c.ids]
    else:
        selection = args.contains or ""
        word = re.compile(re.escape(selection), re.I)
        chosen = [c for c in sorted(pool, key=lambda c: -c.value) if c.ids and word.search(c.text)]
    chosen = chosen[: args.n]
    if not chosen:
        raise InputError(f"none of {ref}'s stored strong contexts fit {selection!r}; nothing to ablate")
    diff = per_context_effects(interface, site, neuron, chosen)
    effect = float(diff.mean())
    what = f"mode {args.mode} (“{selection}”)" if args.mode is not None else f"contexts holding '{selection}'"
    fid = ctx.findings.add(
        kind="ablation", neurons=[ref], artifact="profile/examples.parquet", source="ablate_neuron",
        claim=f"Zero-ablating {ref} on {len(chosen)} of its {what} changes the loss by {effect:+.3g} nats per token.",
        quantities=quantities_of({"effect": effect, "n_examples": len(chosen)}, neuron=ref, mode=args.mode),
        labels=[Label(name="selection", text=selection[:400], neuron=ref, mode=args.mode)])
    return Ablation(neuron=ref, selection=fence(selection, 80), mode=args.mode, n_contexts=len(chosen),
                    effect=round(effect, 4), per_context=[(fence(c.marked(), 200), round(float(d), 4))
                                                          for c, d in zip(chosen, diff)],
                    finding_id=fid, headline=f"ablating {ref} on {len(chosen)} {what}: {effect:+.3g} nats/token")
