"""The ANALYZE state: neuron statistics, polysemantic detection and logit effects for the plan's layers, and the
Analyst's narrative (a first draft, or a revision with the Critic's feedback).

Usage::

    step = await handle(run)        # findings added, run.state.narrative written; Step(State.VISUALIZE)

A tool-calling Analyst calls the tools and writes the narrative (:func:`_by_analyst`); otherwise the controller runs
what is not done yet (:func:`_run_analyses`), the deterministic writer writes the narrative, and a prose-only model
may add a sentence or two that pass the findings check (:func:`_by_controller`).
"""

from __future__ import annotations

from typing import Any

from agents import ROLES, Plan, TurnFacts, strip_proposal
from agents.scripted import layer_phrase, scripted_narrative
from agents.tasks import analyst_task
from tools.claims import split_sentences
from tools.findings import ref_parts
from tools.polysemantic import load_detections
from workflows.controller.context import NO_TOOLS_HINT, RunContext, StateFailure, Step
from workflows.stateflow import State

__all__ = ["handle", "PROSE_SENTENCES"]

PROSE_SENTENCES = 2  # sentences a prose-only model may add to the deterministic narrative


async def handle(run: RunContext) -> Step:
    """ANALYZE: the analyses done and the narrative written, then VISUALIZE."""
    plan = run.state.plan
    assert plan is not None
    error = run.state.errors.pop(State.ANALYZE, "")
    text, proposal = "", None
    if run.tool_calling:
        text, proposal = await _by_analyst(run, plan, error)
    if not run.tool_calling:  # also when the Analyst turned out unable to call tools: its reply is not used
        text, proposal = await _by_controller(run, error)
    run.state.narrative = text
    run.state.feedback = ""
    run.trace.event("narrative", draft=text[:6000], revision=run.machine.revisions)
    return Step(State.VISUALIZE, agent="analyst", proposal=proposal)


async def _by_analyst(run: RunContext, plan: Plan, error: str) -> tuple[str, str | None]:
    """The Analyst's turn: the state fails unless the planned analyses are done and a narrative was written."""
    state = run.state
    task = analyst_task(plan, run.ctx.findings.all(), tool_calling=True, draft=state.narrative if state.feedback
                        else "", feedback=state.feedback, error=error)
    turn = await run.turn(ROLES["analyst"], task, run.facts(error=error))
    missing = []
    if "polysemantic" in plan.analyses:
        detections = load_detections(run.ctx)
        missing += [f"detect_polysemantic(layer={layer})" for layer, site in zip(plan.layers, run.sites(), strict=True)
                    if site not in detections]
    if "neuron_stats" in plan.analyses and not run.ctx.findings.by_kind("layer_summary"):
        missing.append("neuron_stats")
    if missing and not run.prose_instead_of_tools(turn, State.ANALYZE):
        raise StateFailure("the analyses were not completed; still to call: " + ", ".join(missing) + NO_TOOLS_HINT)
    text = strip_proposal(turn.text)
    if not text and run.tool_calling:
        raise StateFailure("the Analyst wrote no narrative (end the turn with the narrative as text)")
    return text, turn.proposal


async def _by_controller(run: RunContext, error: str) -> tuple[str, str | None]:
    """The controller's analyses, then the narrative: the scripted writer's, or a prose-only model's addition."""
    await _run_analyses(run)
    facts = run.facts(draft=run.state.narrative, feedback=run.state.feedback, error=error)
    if run.uses_llm:
        return await _prose_narrative(run, facts, error)
    turn = await run.turn(ROLES["analyst"], "", facts)
    return strip_proposal(turn.text), turn.proposal


async def _run_analyses(run: RunContext) -> None:
    """The controller's ANALYZE tools (prose-only and scripted backends); skips what is already done."""
    plan = run.state.plan
    assert plan is not None
    explain = plan.neuron_pairs()
    for layer, site in zip(plan.layers, run.sites(), strict=True):
        if "neuron_stats" in plan.analyses and not any(layer in f.layers()
                                                       for f in run.ctx.findings.by_kind("layer_summary")):
            await run.require("neuron_stats", {"layer": layer, "top": min(8, plan.top_n + 3)}, "analyst")
        wanted = [n for lay, n in explain if lay == layer]
        if "polysemantic" in plan.analyses and site not in load_detections(run.ctx):
            args: dict[str, Any] = {"layer": layer, "max_neurons": plan.max_neurons, "top_n": plan.top_n}
            if wanted:
                args["neurons"] = wanted
            await run.require("detect_polysemantic", args, "analyst")
        if "logit_effects" in plan.analyses and not run.ctx.logit:
            neurons = list(dict.fromkeys(wanted + _notable_neurons(run, plan, layer, site)))[:12]
            if neurons and run.ctx.interface is not None and run.ctx.interface.loaded.is_causal_lm:
                await run.require("logit_effects", {"layer": layer, "neurons": neurons, "k": 8}, "analyst")


def _notable_neurons(run: RunContext, plan: Plan, layer: int, site: str) -> list[int]:
    """A layer's detected polysemantic neurons (best first, the plan's top_n) and its 3 most active ones."""
    detected = sorted((v for v in load_detections(run.ctx).get(site, []) if v.verdict == "detected"),
                      key=lambda v: -v.score)
    top = [ref_parts(r)[1] for f in run.ctx.findings.by_kind("top_neurons") for r in f.neurons
           if ref_parts(r)[0] == layer][:3]
    return [v.neuron for v in detected[: plan.top_n]] + top


async def _prose_narrative(run: RunContext, facts: TurnFacts, error: str) -> tuple[str, str | None]:
    """A prose-only model's narrative: the deterministic writer's, plus what the model adds that passes the
    check and does not repeat (the model never writes a fact alone)."""
    plan = run.state.plan
    assert plan is not None
    base = scripted_narrative(facts)
    task = analyst_task(plan, facts.findings, tool_calling=False, error=error, prefill=_prefill(run, plan),
                        summary=base)
    turn = await run.turn(ROLES["analyst"], task, facts)
    added = run.filtered(strip_proposal(turn.text), split_sentences(base), PROSE_SENTENCES, "Analyst")
    return (f"{base}\n\n{added.text}" if added.kept else base), turn.proposal


def _prefill(run: RunContext, plan: Plan) -> str:
    """Start of a small model's addition, anchored on the strongest neuron (the local backend continues it)."""
    poly = run.polysemantic_findings()
    if poly and poly[0].subject:
        return f"Taken together, {poly[0].subject}"
    return f"Taken together, the neurons of {layer_phrase(plan.layers)}"
