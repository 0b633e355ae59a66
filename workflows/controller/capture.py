"""The CAPTURE state: a streaming profile of the plan's layers over its corpus (``profile_corpus``), resumed from the
run folder when it holds one.

Usage::

    step = await handle(run)        # run.ctx.profile is set, a finding records its size; Step(State.ANALYZE)

A tool-calling Capturer calls ``profile_corpus`` itself (:func:`_by_capturer`); otherwise the controller calls it
with the plan's arguments (:func:`_by_controller`).
"""

from __future__ import annotations

from agents import ROLES, Plan
from agents.tasks import capturer_task
from tools.findings import quantities_of
from workflows.controller.context import NO_TOOLS_HINT, RunContext, StateFailure, Step
from workflows.stateflow import State

__all__ = ["handle"]


async def handle(run: RunContext) -> Step:
    """CAPTURE: the plan's layers profiled, then ANALYZE."""
    plan = run.state.plan
    assert plan is not None
    error = run.state.errors.pop(State.CAPTURE, "")
    proposal = None
    if run.tool_calling:
        proposal = await _by_capturer(run, plan, error)
    if not run.tool_calling:  # also when the Capturer turned out unable to call tools
        await _by_controller(run, plan)
    prof = run.ctx.profile
    assert prof is not None
    run.ctx.findings.add(
        kind="run", artifact="profile/profile.json", source="profile_corpus",
        claim=f"Profiled {prof.n_tokens} tokens from {int(prof.meta.get('n_docs', 0))} documents of the "
              f"{prof.meta.get('corpus')} corpus.",
        quantities=quantities_of({"n_tokens": prof.n_tokens, "n_docs": int(prof.meta.get("n_docs", 0))}))
    return Step(State.ANALYZE, agent="capturer", proposal=proposal)


async def _by_capturer(run: RunContext, plan: Plan, error: str) -> str | None:
    """The Capturer's turn; the state fails unless the plan's layers were profiled (or tools were switched off)."""
    turn = await run.turn(ROLES["capturer"], capturer_task(plan, error), run.facts(error=error))
    prof = run.ctx.profile
    if (prof is None or set(prof.site_names) != set(run.sites())) \
            and not run.prose_instead_of_tools(turn, State.CAPTURE):
        last = next((o.error.line() for o in reversed(turn.tool_calls) if o.error), "")
        raise StateFailure("the planned layers were not profiled (call profile_corpus with the plan's "
                           f"layers){'; last tool error: ' + last if last else ''}{NO_TOOLS_HINT}")
    return turn.proposal


async def _by_controller(run: RunContext, plan: Plan) -> None:
    args = {"layers": plan.layers, "corpus": plan.corpus, "max_tokens": plan.max_tokens,
            "batch_size": plan.batch_size}
    await run.require("profile_corpus", args, "capturer")
