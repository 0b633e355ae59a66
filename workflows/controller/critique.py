"""The CRITIQUE state: every number and neuron of the narrative checked against the findings, then the Critic's
verdict. Failed claims go back to ANALYZE through REVISE (bounded); past the bound they are removed and listed among
the caveats.

Usage::

    step = await handle(run)        # run.state.critic_text set; Step(State.REVISE) or Step(State.REPORT)
"""

from __future__ import annotations

from agents import ROLES, strip_proposal
from agents.tasks import critic_task
from tools import check_claims, remove_sentences
from tools.claims import split_sentences
from workflows.controller.context import RunContext, Step
from workflows.stateflow import State

__all__ = ["handle", "VERDICT_SENTENCES"]

VERDICT_SENTENCES = 1  # sentences a prose-only model may add to the Critic's verdict


async def handle(run: RunContext) -> Step:
    """CRITIQUE: the check and the verdict, then REVISE (claims failed, revisions left) or REPORT."""
    state = run.state
    error = state.errors.pop(State.CRITIQUE, "")
    findings = run.ctx.findings.all()
    check = check_claims(state.narrative, findings, ignore=run.names())
    run.trace.event("claims_checked", n_sentences=check.n_sentences, n_checked=check.n_checked,
                    issues=[i.model_dump() for i in check.issues])
    prose_only = run.uses_llm and not run.tool_calling
    prefill = "Verdict: the draft" if prose_only else ""
    task = critic_task(state.narrative, check.feedback(), findings, error, prefill, brief=prose_only)
    turn = await run.turn(ROLES["critic"], task, run.facts(check=check))
    verdict = strip_proposal(turn.text)
    if prose_only:
        verdict = run.filtered(verdict, split_sentences(state.narrative), VERDICT_SENTENCES, "Critic").text
    elif run.uses_llm:
        verdict = run.checked(verdict, "Critic's verdict")
    summary = check.feedback().splitlines()[0]
    state.critic_text = f"Automatic check: {summary}\n\n{verdict}".strip()
    more = run.machine.revisions < run.settings.max_revisions
    if check.issues:
        if more:
            state.feedback = check.feedback()
            return Step(State.REVISE, agent="critic", proposal=turn.proposal)
        state.narrative, removed = remove_sentences(state.narrative, check.issues)
        for issue in check.issues:
            state.caveats.append(f"Removed from the summary after {run.machine.revisions} revision(s): "
                                 f"\"{issue.sentence}\" ({'; '.join(issue.problems)})")
        run.trace.event("claims_removed", sentences=removed)
        return Step(State.REPORT, agent="critic", proposal=turn.proposal)
    if turn.proposal == "REVISE" and more:
        state.feedback = f"The Critic asks for a revision: {verdict}"
    return Step(State.REPORT, agent="critic", proposal=turn.proposal,
                acceptable=frozenset({State.REVISE}) if more else frozenset())
