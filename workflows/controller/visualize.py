"""The VISUALIZE state: the plan's figures (PNG + HTML) and the neuron dashboard.

Usage::

    step = await handle(run)        # figures/ filled; Step(State.CRITIQUE)

A tool-calling Visualizer makes the figures itself (:func:`_by_visualizer`; skipped when no finding came since its
last turn); otherwise the controller draws :func:`figure_list`, each figure once per run (:func:`_by_controller`).
A figure that fails to draw is a caveat, not a failure (unless the error is unrecoverable).
"""

from __future__ import annotations

from agents import ROLES, Plan
from agents.tasks import visualizer_task
from tools.figures import FIGURE_KINDS
from workflows.controller.context import NO_TOOLS_HINT, Fatal, RunContext, StateFailure, Step
from workflows.controller.run_state import FigureKey
from workflows.stateflow import State

__all__ = ["handle", "figure_list"]


async def handle(run: RunContext) -> Step:
    """VISUALIZE: the figures made, then CRITIQUE."""
    plan = run.state.plan
    assert plan is not None
    error = run.state.errors.pop(State.VISUALIZE, "")
    if "figures" not in plan.analyses and "dashboard" not in plan.analyses:
        return Step(State.CRITIQUE)
    n_findings = len(run.ctx.findings)
    if run.tool_calling and run.state.visualized_at == n_findings:
        run.trace.event("skipped", state="VISUALIZE", reason="no new findings since the figures were made")
        return Step(State.CRITIQUE)
    run.state.visualized_at = n_findings
    if run.tool_calling:
        step = await _by_visualizer(run, plan, error)
        if step is not None:
            return step
    await _by_controller(run, plan)  # also when the Visualizer turned out unable to call tools
    return Step(State.CRITIQUE, agent="visualizer")


async def _by_visualizer(run: RunContext, plan: Plan, error: str) -> Step | None:
    """The Visualizer's turn: its Step when the figures (and the dashboard, if planned) exist; None when it cannot
    call tools (the controller draws them); else the state fails."""
    turn = await run.turn(ROLES["visualizer"], visualizer_task(plan, run.ctx.findings.all(), error),
                          run.facts(error=error))
    pngs = list(run.folder.path_for("figures").glob("*.png"))
    dashboard = run.folder.path_for("figures/dashboard/index.html").exists()
    if pngs and ("dashboard" not in plan.analyses or dashboard):
        return Step(State.CRITIQUE, agent="visualizer", proposal=turn.proposal)
    if not run.prose_instead_of_tools(turn, State.VISUALIZE):
        raise StateFailure("the figures were not made: " + ("no figure; " if not pngs else "")
                           + ("no dashboard (call make_dashboard)" if not dashboard else "") + NO_TOOLS_HINT)
    return None


async def _by_controller(run: RunContext, plan: Plan) -> None:
    for kind, layer, neuron in figure_list(run, plan):
        if (kind, layer, neuron) in run.state.figures_done:
            continue
        args = {k: v for k, v in (("layer", layer), ("neuron", neuron)) if v is not None}
        if kind == "dashboard":
            outcome = await run.tool("make_dashboard", {"max_pages": max(8, 2 * plan.top_n)}, "visualizer")
        else:
            outcome = await run.tool("make_figure", {"kind": kind, **args}, "visualizer")
        run.state.figures_done.append((kind, layer, neuron))
        if not outcome.ok:
            assert outcome.error is not None
            if not outcome.error.recoverable:
                raise Fatal(outcome.error.line())
            run.state.caveats.append(f"Figure {kind} was not drawn: {outcome.error.message}")


def figure_list(run: RunContext, plan: Plan) -> list[FigureKey]:
    """The figures the plan asks for, as (kind, layer, neuron ref): per layer a heatmap (and a highlight where a
    neuron is polysemantic), sparsity, mode shares, the focus neurons' tokens and histograms, logit effects, the
    dashboard."""
    out: list[FigureKey] = []
    poly = run.polysemantic_findings()
    if "figures" in plan.analyses:
        for layer in plan.layers:
            out.append(("heatmap", layer, None))
            if any(layer in f.layers() for f in poly):
                out.append(("highlight", layer, None))
        out.append(("sparsity", None, None))
        if poly:
            out.append(("mode_shares", None, None))
        focus = [f.subject for f in poly[:1] if f.subject] + list(plan.neurons)
        for ref in dict.fromkeys(focus):
            out += [("token_activations", None, ref), ("histogram", None, ref)]
        if run.ctx.logit:
            out.append(("logit_effects", None, None))
    if "dashboard" in plan.analyses:
        out.append(("dashboard", None, None))
    assert all(k in FIGURE_KINDS or k == "dashboard" for k, _, _ in out)
    return out
