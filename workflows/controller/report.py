"""The REPORT state: the narrative's last findings check (nothing unchecked gets out), then ``report.md`` and
``report.html``. A run that stops or fails writes a partial report the same way.

Usage::

    step = await handle(run)                 # report written, run.state.status 'done'; Step(State.DONE)
    write_partial(run, "partial")            # a stopped run's report (never raises: the trace says why not)
"""

from __future__ import annotations

import traceback
from typing import Literal

from tools import ReportInput, write_report
from workflows.controller.context import RunContext, Step
from workflows.controller.options import EXIT_OK
from workflows.stateflow import State

__all__ = ["handle", "write", "write_partial"]


async def handle(run: RunContext) -> Step:
    """REPORT: the checked narrative written out, then DONE."""
    run.state.narrative = run.checked(run.state.narrative, "summary")
    write(run, "complete")
    run.state.status, run.state.exit_code, run.state.reason = "done", EXIT_OK, "done"
    return Step(State.DONE)


def write_partial(run: RunContext, status: Literal["partial", "failed"]) -> None:
    """The report of a run that stopped or failed after it had a plan (the narrative checked first)."""
    if run.state.plan is None:
        return
    try:
        run.state.narrative = run.checked(run.state.narrative, "summary")
        write(run, status)
    except Exception as exc:  # noqa: BLE001 - the stop must still end cleanly; the trace says why
        run.trace.event("report_error", error=repr(exc), traceback=traceback.format_exc(limit=6))


def write(run: RunContext, status: Literal["complete", "partial", "failed"]) -> None:
    """``report.md`` and ``report.html`` from the run's state; the markdown's path goes into the state."""
    state, plan, choice = run.state, run.state.plan, run.choice
    assert plan is not None
    method = [f"Plan: {note}" for note in state.method_notes]
    method.append(f"Agents: {'tool-calling ' if run.tool_calling else ''}{choice.backend}; "
                  f"{run.machine.revisions} revision(s) after the Critic's check")
    inp = ReportInput(request=state.request, status=status, stop_reason=None if status == "complete" else state.reason,
                      model=plan.model, layers=plan.layers, corpus=plan.corpus, backend=choice.backend,
                      backend_reason=choice.reason, narrative=state.narrative, critic=state.critic_text,
                      caveats=list(dict.fromkeys(state.caveats)), method=method, top_n=plan.top_n,
                      revisions=run.machine.revisions)
    paths = write_report(run.ctx, inp)
    state.report_path = paths.markdown
    run.trace.event("report", markdown=paths.markdown, html=paths.html, status=status)
