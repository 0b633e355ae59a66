"""Answers to chat follow-ups: references resolved against the session, tools called, prose written and checked.

Usage::

    answerer = Answerer(session, compute)                       # compute(model, layers, why, resume, request)
    reply = await answerer.answer(parse_followup("why is the top neuron polysemantic?"))
    reply.text, reply.data, reply.table, reply.findings         # checked prose, quoted corpus data, a table

Every sentence of ``reply.text`` names its neuron or cites its finding, and passes the same typed claim check as a
report (``tools.check_claims``) against ``reply.findings``; a sentence that fails is taken out and listed in
``reply.removed``. Corpus text and file paths go in ``reply.data``, never in the prose. An unclear reference gets a
question back (``reply.question``); nothing is ever computed on a guess.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agents.followups import FollowUp, ModeSpec, NeuronSpec
from agents.scripted import detection_sentence, explain_text, promotes_text
from tools import DATA_CLOSE, DATA_OPEN, Finding, check_claims, remove_sentences
from tools.findings import Quantity, ref_parts
from workflows.controller.plan import DEFAULT_MODEL
from workflows.session import RunEntry, Session

__all__ = ["Answerer", "Reply", "Compute"]

Compute = Callable[[str, list[int], str, str | None, str | None], Awaitable[RunEntry]]


@dataclass
class Reply:
    text: str = ""
    data: list[str] = field(default_factory=list)
    table: tuple[list[str], list[list[str]]] | None = None
    figures: list[str] = field(default_factory=list)
    question: str | None = None
    findings: list[Finding] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class Ask(Exception):  # noqa: N818 - a question back, not an error
    """A reference the session cannot resolve: the chat asks this back."""


def _q(text: str) -> str:
    return f"“{_plain(text)}”"


def _plain(text: str) -> str:
    """A tool's fenced text without its data markers (the prose quotes it; the claim check knows the label)."""
    return text.replace(DATA_OPEN, "").replace(DATA_CLOSE, "")


def _layer_of(ref: str) -> int:
    return ref_parts(ref)[0]


class Answerer:
    """Answers one :class:`FollowUp` at a time, keeping the session's focus up to date."""

    def __init__(self, session: Session, compute: Compute, *, default_model: str = DEFAULT_MODEL) -> None:
        self.session = session
        self.compute = compute
        self.default_model = default_model

    @property
    def focus(self) -> Any:
        return self.session.focus

    async def answer(self, f: FollowUp) -> Reply:
        if f.intent == "unclear":
            return Reply(question=f.question)
        handler = getattr(self, f"_{f.intent}")
        try:
            reply: Reply = await handler(f)
        except Ask as ask:
            return Reply(question=str(ask))
        self.session.save()
        return self.checked(reply)

    def checked(self, reply: Reply) -> Reply:
        """The reply with every sentence that fails the claim check against its findings taken out."""
        if not reply.text:
            return reply
        names = [self.focus.model or "", *self.session.models_known()]
        check = check_claims(reply.text, reply.findings, ignore=names)
        if not check.ok:
            reply.text, reply.removed = remove_sentences(reply.text, check.issues)
            self.session.trace.event("claims_removed", sentences=reply.removed,
                                     problems=[p for i in check.issues for p in i.problems])
        return reply

    # ------------------------------------------------------------------------------------ resolution
    def _model(self, f: FollowUp) -> str:
        model = f.model or self.focus.model
        if model is None:
            known = self.session.models_known()
            if len(known) == 1:
                return known[0]
            raise Ask("Which model? Start with a request such as 'investigate layer 3 of smollm2-135m'.")
        return model

    async def _entries(self, model: str, layers: list[int], why: str) -> list[RunEntry]:
        entries = await self.session.ensure(model, layers, why, lambda m, ls, w, r: self.compute(m, ls, w, r, None))
        if len(entries) < len(layers):
            raise Ask(f"Layer(s) {', '.join(map(str, layers))} of {model} could not be computed (see above); "
                      "ask again to resume.")
        return entries

    async def _entry(self, model: str, layer: int, why: str) -> RunEntry:
        return (await self._entries(model, [layer], why))[0]

    def _layer(self, spec_layer: int | None) -> int:
        layer = spec_layer if spec_layer is not None else self.focus.layer
        if layer is None:
            raise Ask("Which layer? Say e.g. 'the top neuron of layer 3', or start with 'investigate layer 3 of "
                      "smollm2-135m'.")
        return layer

    async def _neuron(self, f: FollowUp) -> tuple[RunEntry, str]:
        """The run and the neuron id the sentence means."""
        spec = f.neuron or NeuronSpec(kind="focus")
        model = self._model(f)
        if spec.kind == "ordinal" and self.focus.listed_kind == "modes":
            spec = NeuronSpec(kind="focus")  # "the second one" after a list of modes: a mode of the same neuron
        if spec.kind == "ordinal":
            if self.focus.listed_kind != "neurons" or not self.focus.listed:
                raise Ask("The second what? No list of neurons was shown yet; name the neuron (L3/N344).")
            rank = spec.rank or 1
            if not -len(self.focus.listed) <= (rank - 1 if rank > 0 else rank) < len(self.focus.listed):
                raise Ask(f"The last list had {len(self.focus.listed)} neurons: {', '.join(self.focus.listed)}.")
            ref = self.focus.listed[rank - 1 if rank > 0 else rank]
            return await self._entry(model, _layer_of(ref), f"the neuron {ref}"), ref
        if spec.kind == "focus" and self.focus.neuron is None and self.focus.layer is None:
            raise Ask("Which neuron? Name one (L3/N344), or say 'the top neuron of layer 3'.")
        if spec.kind == "focus" and self.focus.neuron is not None:
            ref = self.focus.neuron
            return await self._entry(model, _layer_of(ref), f"the neuron {ref}"), ref
        if spec.kind in ("ref", "index"):
            layer = self._layer(spec.layer)
            ref = f"L{layer}/N{spec.index}"
            return await self._entry(model, layer, f"the neuron {ref}"), ref
        layer = self._layer(spec.layer)  # top / active / focus on a layer with no neuron yet
        entry = await self._entry(model, layer, f"the top neuron of layer {layer}")
        return entry, self._top(entry, layer, active=spec.kind == "active")

    def _top(self, entry: RunEntry, layer: int, *, active: bool = False) -> str:
        findings = self.session.context(entry).findings.all()
        if not active:
            ranked = [(f.value("rank", neuron=f.subject, default=1e9), f.subject) for f in findings
                      if f.kind == "polysemantic" and f.subject and _layer_of(f.subject) == layer]
            if ranked:
                return min(ranked)[1] or ""
        top = next((f for f in findings if f.kind == "top_neurons" and f.neurons
                    and _layer_of(f.neurons[0]) == layer), None)
        if top is None:
            raise Ask(f"Layer {layer} has no neuron statistics in this session yet.")
        return top.neurons[0]

    def _set_focus(self, model: str, ref: str | None = None, layer: int | None = None) -> None:
        focus = self.focus
        focus.model = model
        if ref is not None:
            if ref != focus.neuron:
                focus.mode = None
            focus.neuron, focus.layer = ref, _layer_of(ref)
        elif layer is not None:
            focus.layer = layer

    # ------------------------------------------------------------------------------------ neurons
    async def _describe(self, entry: RunEntry, ref: str) -> tuple[Any, Finding] | None:
        """describe_neuron's result and the finding that holds its numbers; None when the neuron was not among
        the analysed ones (nothing is recomputed for it)."""
        outcome = await self.session.call(entry, "describe_neuron", {"neuron": ref, "n_examples": 3})
        if not outcome.ok:
            return None
        result = outcome.result
        return result, self.session.ctx_for(entry).findings.get(result.finding_id)

    async def _top_examples(self, entry: RunEntry, ref: str, lead: str) -> Reply:
        """A neuron's strongest contexts, with an ``examples`` finding for its peak."""
        outcome = await self.session.call(entry, "neuron_examples", {"neuron": ref, "kind": "top", "n": 8})
        if not outcome.ok:
            raise Ask(outcome.error.line() if outcome.error else f"no examples of {ref}")
        examples = outcome.result.examples
        store = self.session.ctx_for(entry).findings
        fid = store.add(kind="examples", neurons=[ref], artifact="profile/examples.parquet", source="neuron_examples",
                        claim=f"The strongest activation of {ref} in the profile is {examples[0].value:.3g}.",
                        quantities=[Quantity(name="max", value=examples[0].value, neuron=ref)]) if examples else None
        text = lead + (f" Its strongest activation is {examples[0].value:.3g} [{fid}]; its top contexts:"
                       if fid else "")
        return Reply(text=text, data=[f"{e.value:8.3g}  {e.text}" for e in examples],
                     findings=store.all(), runs=[entry.run_dir])

    async def _explain(self, f: FollowUp) -> Reply:
        if f.neuron is not None and f.neuron.kind == "ordinal" and self.focus.listed_kind == "modes":
            return await self._examples(f)
        model = self._model(f)
        entry, ref = await self._neuron(f)
        described = await self._describe(entry, ref)
        self._set_focus(model, ref)
        if described is None:
            lead = f"{ref} was not among the neurons analysed for modes in its run."
            return await self._top_examples(entry, ref, lead)
        result, finding = described
        self.focus.shown("modes", [str(i) for i in range(1, len(result.modes) + 1)])
        findings, lead = [finding], ""
        if f.neuron is not None and f.neuron.kind == "top" and finding.verdict != "detected":
            layer = _layer_of(ref)
            summary = next((x for x in self.session.context(entry).findings.all() if x.kind == "polysemantic_summary"
                            and x.has("n_analysed", layer=layer)), None)
            if summary is not None:
                findings.append(summary)
                lead = (f"None of the {int(summary.value('n_analysed', layer=layer))} neurons analysed in layer "
                        f"{layer} is polysemantic [{summary.id}]; the most strongly activating one is {ref}.\n\n")
        return Reply(text=lead + explain_text(finding, ref), data=mode_examples(result), findings=findings,
                     runs=[entry.run_dir])

    def _mode_index(self, spec: ModeSpec | None, result: Any) -> int | None:
        """The 1-based mode the sentence means (None: all modes)."""
        if spec is None:
            return None
        if spec.kind == "focus":
            if self.focus.mode is None:
                raise Ask("Which mode? Say 'mode 2' or 'the second mode'.")
            index = self.focus.mode
        elif spec.kind == "index":
            index = spec.index or 1
        else:
            word = (spec.concept or "").lower()
            hits = [i for i, m in enumerate(result.modes, 1)
                    if word in _plain(m.label).lower() or word in (m.probe_concept or "").lower()
                    or any(word in _plain(t).lower().strip() for t in m.top_tokens)]
            if not hits:
                return None
            index = hits[0]
        if not 1 <= index <= len(result.modes):
            raise Ask(f"{result.neuron} has {len(result.modes)} mode(s); there is no mode {index}.")
        return index

    async def _examples(self, f: FollowUp) -> Reply:
        model = self._model(f)
        entry, ref = await self._neuron(f)
        self._set_focus(model, ref)
        spec = f.mode
        if spec is None and f.neuron is not None and f.neuron.kind == "ordinal" and self.focus.listed_kind == "modes":
            spec = ModeSpec(kind="index", index=f.neuron.rank)  # "the second one" after a list of modes
        described = await self._describe(entry, ref)
        if described is None and spec is None:
            return await self._top_examples(entry, ref, f"The strongest contexts of {ref}.")
        if described is None:
            raise Ask(f"{ref} was not among the neurons analysed for modes (the most promising of a quick screen "
                      "are); ask for its examples, or investigate with more neurons (--max-neurons).")
        result, finding = described
        index = self._mode_index(spec, result)
        if index is None:
            return await self._top_examples(entry, ref, f"No mode of {ref} matches that [{finding.id}].")
        self.focus.mode = index
        mode = result.modes[index - 1]
        text = (f"Mode {index} of {ref}, {_q(mode.label)}, holds {mode.share_text} of its activation mass "
                f"[{finding.id}]; its strongest contexts:")
        return Reply(text=text, data=[f"mode {index}: {e}" for e in mode.examples], findings=[finding],
                     runs=[entry.run_dir])

    async def _ablate(self, f: FollowUp) -> Reply:
        model = self._model(f)
        entry, ref = await self._neuron(f)
        described = await self._describe(entry, ref)
        result, finding = described if described is not None else (None, None)
        index = self._mode_index(f.mode or (ModeSpec(kind="focus") if self.focus.mode else None), result) \
            if result is not None else None
        if index is not None:
            args: dict[str, Any] = {"neuron": ref, "mode": index}
        elif f.mode is not None and f.mode.kind == "concept":
            args = {"neuron": ref, "contains": f.mode.concept}
        else:
            raise Ask(f"Ablate {ref} on which contexts? Say 'on mode 1', 'on the second mode' or 'on the <word> "
                      "examples'.")
        outcome = await self.session.call(entry, "ablate_neuron", args)
        if not outcome.ok:
            raise Ask(outcome.error.line() if outcome.error else "the ablation failed")
        a = outcome.result
        self._set_focus(model, ref)
        found = self.session.ctx_for(entry).findings.get(a.finding_id)
        if index is not None and result is not None:
            on = f"mode {index} ({_q(result.modes[index - 1].label)})"
        else:
            on = f"contexts holding {_q(a.selection)}"
        checked = [found] + ([finding] if finding is not None else [])
        where = f"contexts of its {on}" if index is not None else on
        text = (f"Zero-ablating {ref} on {a.n_contexts} {where} changes the model's loss by {a.effect:+.3g} nats per "
                f"token [{a.finding_id}] (positive: the model needs the neuron there).")
        return Reply(text=text, data=[f"{d:+8.3g}  {t}" for t, d in a.per_context], findings=checked,
                     runs=[entry.run_dir])

    async def _promotes(self, f: FollowUp) -> Reply:
        model = self._model(f)
        entry, ref = await self._neuron(f)
        ctx = self.session.ctx_for(entry)
        found = next((x for x in ctx.findings.all() if x.kind == "logit_effects" and x.subject == ref), None)
        if found is None:
            layer, index = ref_parts(ref)
            outcome = await self.session.call(entry, "logit_effects", {"layer": layer, "neurons": [index], "k": 8})
            if not outcome.ok:
                raise Ask(outcome.error.line() if outcome.error else "logit effects failed")
            found = ctx.findings.get(outcome.result.effects[0].finding_id)
        else:
            self.session.trace.event("reused", finding=found.id, run=entry.run_dir, what=f"logit effects of {ref}")
        self._set_focus(model, ref)
        return Reply(text=promotes_text(found, ref), findings=[found], runs=[entry.run_dir])

    async def _dashboard(self, f: FollowUp) -> Reply:
        from tools.figures import dashboard_page

        model = self._model(f)
        entry, ref = await self._neuron(f)
        ctx = self.session.ctx_for(entry)
        page = dashboard_page(ctx, ref)
        if page is None:
            outcome = await self.session.call(entry, "make_dashboard", {"neurons": [ref]})
            if not outcome.ok:
                raise Ask(outcome.error.line() if outcome.error else "the dashboard failed")
            page = dashboard_page(ctx, ref)
        else:
            self.session.trace.event("reused", run=entry.run_dir, what=f"dashboard page of {ref}")
        self._set_focus(model, ref)
        path = ctx.run.path_for(page or "figures/dashboard/index.html")
        return Reply(text=f"The dashboard page of {ref} opens from disk, with no network:", data=[path.as_uri()],
                     findings=ctx.findings.all(), runs=[entry.run_dir], figures=[str(path)])

    # ------------------------------------------------------------------------------------ layers
    async def _investigate(self, f: FollowUp) -> Reply:
        from agents import PlanError, parse_request

        try:
            plan = parse_request(f.text, default_model=self.focus.model or self.default_model)
        except PlanError as exc:
            raise Ask(str(exc)) from None
        missing = [x for x in plan.layers if self.session.run_for(plan.model, x) is None]

        async def run(m: str, ls: list[int], w: str, r: str | None) -> RunEntry:
            return await self.compute(m, ls, w, r, f.text if ls == plan.layers else None)

        entries = await self.session.ensure(plan.model, plan.layers, f.text, run)
        if len(entries) < len(plan.layers):
            raise Ask("The investigation did not finish (see above); ask again to resume it.")
        return self._layer_overview(plan.model, plan.layers, entries, already=not missing)

    def _layer_overview(self, model: str, layers: list[int], entries: list[RunEntry], *, already: bool) -> Reply:
        findings = [x for e in {e.run_dir: e for e in entries}.values() for x in self.session.context(e).findings.all()]
        detected: list[str] = []
        sentences = []
        for layer in layers:
            summary = next((x for x in findings if x.kind == "polysemantic_summary"
                            and x.has("n_analysed", layer=layer)), None)
            if summary is None:
                continue
            found = [r for r in summary.neurons if _layer_of(r) == layer]
            detected += found
            sentences.append(detection_sentence(summary, layer, found, findings))
        lead = "This session already holds " if already else "Done: "
        self._set_focus(model, detected[0] if detected else None, layers[0])
        if not detected:
            self.focus.neuron = None
        self.focus.shown("neurons", detected)
        text = lead + f"layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))}. " + " ".join(sentences)
        return Reply(text=text, findings=findings, runs=list(dict.fromkeys(e.run_dir for e in entries)))

    async def _compare(self, f: FollowUp) -> Reply:
        from workflows.compare import compare_layers

        model = self._model(f)
        layers = list(dict.fromkeys(([self.focus.layer] if self.focus.layer is not None and
                                     len(f.layers) < 2 else []) + f.layers))
        if len(layers) < 2:
            raise Ask("Compare which layers? Say 'compare with layer 4' after an investigation, or 'compare layers "
                      "3 and 4'.")
        entries = await self._entries(model, layers, f"compare layers {', '.join(map(str, layers))}")
        result = compare_layers(self.session, model, layers, entries)
        self.focus.shown("neurons", result.top_refs)
        self.focus.model = model
        return Reply(text=result.text, table=result.table, figures=result.figures, findings=[result.finding],
                     data=[f"figure: {p}" for p in result.figures], runs=[e.run_dir for e in entries])

    async def _report(self, f: FollowUp) -> Reply:
        from workflows.session_report import write_session_report

        paths = write_session_report(self.session)
        return Reply(text="The session report is written: every answer of this session, as checked, with its "
                          "runs and figures.", data=[str(p) for p in paths])


def mode_examples(result: Any, per_mode: int = 2) -> list[str]:
    return [f"mode {i}: {e}" for i, m in enumerate(result.modes, 1) for e in m.examples[:per_mode]]
