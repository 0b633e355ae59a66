"""Tools: record a finding (its numbers must be in its artifact), read findings, check prose against them.

Usage::

    call_tool(ctx, "record_finding", {"claim": "...", "neurons": ["L6/N12"],
                                      "quantities": [{"name": "max", "value": 4.2, "neuron": "L6/N12"}],
                                      "artifact": "tables/neuron_stats.parquet"})      # -> Recorded
    call_tool(ctx, "read_findings", {"neuron": "L6/N12"})                               # -> FindingList
    call_tool(ctx, "check_claims", {"text": draft})                                     # -> ClaimCheck
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from neuron_core.errors import InputError
from tools._base import StrictArgs, ToolContext, fence, register
from tools.claims import ClaimCheck, check_claims
from tools.findings import Label, Quantity, Verdict, artifact_numbers, normalise_ref

__all__ = ["RecordArgs", "Recorded", "ReadArgs", "FindingList", "FindingView", "CheckArgs"]


class RecordArgs(StrictArgs):
    claim: str = Field(min_length=5, max_length=600)
    neurons: list[str] = Field(default_factory=list, max_length=20)
    quantities: list[Quantity] = Field(default_factory=list, max_length=30, description="the numbers behind the "
                                       "claim: name (score, max, share, ...), value, and the neuron / mode it is of")
    artifact: str = Field(min_length=1, max_length=300, description="file in the run folder holding the numbers")


class Recorded(BaseModel):
    finding_id: str
    headline: str


@register("record_finding", "Record a finding: a one-sentence claim, the neurons it is about, the numbers behind it "
          "and the artifact (a file in the run folder) they come from. Every number must occur in the artifact.",
          RecordArgs, Recorded)
def record_finding(ctx: ToolContext, args: RecordArgs) -> Recorded:
    path = ctx.run.path_for(args.artifact)
    held = artifact_numbers(path) if args.quantities else []
    missing = []
    for q in args.quantities:
        if not any(abs(v - q.value) <= 1e-4 * max(1.0, abs(v)) for v in held if math.isfinite(v)):
            missing.append(f"{q.name}={q.value}")
    if missing:
        raise InputError(f"these numbers do not occur in {args.artifact}: {', '.join(missing)}")
    known = ctx.findings.neuron_refs()
    refs = list(dict.fromkeys([normalise_ref(r) for r in args.neurons]
                              + [q.neuron for q in args.quantities if q.neuron is not None]))
    unknown = [r for r in refs if r not in known]
    if unknown and ctx.profile is not None:
        from tools.neurons import parse_ref

        for ref in unknown:
            parse_ref(ctx, ref)  # in range for the model and the profile
    fid = ctx.findings.add(kind="note", claim=args.claim, neurons=refs, quantities=list(args.quantities),
                           artifact=args.artifact, source="record_finding")
    return Recorded(finding_id=fid, headline=f"recorded {fid}")


class ReadArgs(StrictArgs):
    kind: str | None = Field(default=None, max_length=40)
    neuron: str | None = Field(default=None, max_length=40)
    limit: int = Field(default=40, ge=1, le=200)


class FindingView(BaseModel):
    id: str
    kind: str
    claim: str
    neurons: list[str]
    quantities: list[Quantity]
    labels: list[Label] = Field(description="texts behind the claim (mode labels, tokens), quoted between <data> "
                                "markers")
    verdict: Verdict | None


class FindingList(BaseModel):
    n_total: int
    findings: list[FindingView]
    headline: str


@register("read_findings", "Read recorded findings (optionally of one kind or about one neuron). Claims are quoted "
          "between <data> markers.", ReadArgs, FindingList)
def read_findings(ctx: ToolContext, args: ReadArgs) -> FindingList:
    items = ctx.findings.all()
    if args.kind:
        items = [f for f in items if f.kind == args.kind]
    if args.neuron:
        ref = normalise_ref(args.neuron)
        items = [f for f in items if ref in f.neurons]
    shown = [FindingView(id=f.id, kind=f.kind, claim=fence(f.claim, 500), neurons=f.neurons,
                         quantities=[q.model_copy(update={"value": round(q.value, 6)}) for q in f.quantities],
                         labels=[x.model_copy(update={"text": fence(x.text, 80)}) for x in f.labels],
                         verdict=f.verdict) for f in items[:args.limit]]
    return FindingList(n_total=len(ctx.findings), findings=shown, headline=f"{len(shown)} of {len(items)} findings")


class CheckArgs(StrictArgs):
    text: str = Field(min_length=1, max_length=20_000)


@register("check_claims", "Check every number, neuron id, layer and finding id in a text against findings.json; "
          "lists the sentences that fail.", CheckArgs, ClaimCheck)
def check_claims_tool(ctx: ToolContext, args: CheckArgs) -> ClaimCheck:
    return check_claims(args.text, ctx.findings.all(), ignore=_ignored_names(ctx))


def _ignored_names(ctx: ToolContext) -> list[str]:
    names = []
    if ctx.interface is not None:
        names.append(ctx.interface.name)
    if ctx.profile is not None:
        names.append(str(ctx.profile.meta.get("model", "")))
        names.append(str(ctx.profile.meta.get("corpus", "")))
    return names
