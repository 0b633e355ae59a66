"""The PLAN state: the request parsed into a plan (the CLI's flags win), the model loaded, the plan validated against
it; a tool-calling Planner may refine the plan, which is validated the same way.

Usage::

    step = await handle(run)        # run.state.plan is set, the manifest written; Step(State.CAPTURE)
"""

from __future__ import annotations

from typing import Any

from agents import ROLES, Plan, PlanError, extract_json, parse_request, refine_plan, validate_plan
from agents.scripted import layer_phrase
from agents.tasks import planner_task
from tools import Label, Quantity
from tools.findings import quantities_of
from workflows.controller.context import RequestRejected, RunContext, StateFailure, Step
from workflows.stateflow import State

__all__ = ["handle", "DEFAULT_MODEL"]

DEFAULT_MODEL = "smollm2-135m"


async def handle(run: RunContext) -> Step:
    """PLAN: a validated plan, then CAPTURE."""
    error = run.state.errors.pop(State.PLAN, "")
    draft = _with_options(run, _parsed(run))
    run.trace.event("plan_draft", plan=draft.model_dump(mode="json"))
    loaded = await run.tool("load_model", {"model": draft.model, "device": draft.device}, "planner")
    if not loaded.ok:
        assert loaded.error is not None
        raise RequestRejected(loaded.error.message)
    info = loaded.result
    run.state.model_info = info.model_dump(exclude={"headline"})
    plan = _validated(draft, info, draft.model)
    proposal = None
    if run.tool_calling:  # a capable LLM may refine the parsed plan
        plan, proposal = await _refined(run, plan, info, error)
    _adopt(run, plan, info)
    return Step(State.CAPTURE, agent="planner", proposal=proposal)


def _parsed(run: RunContext) -> Plan:
    """The stored plan of a resumed run, else the request parsed (no LLM)."""
    o, s = run.options, run.settings
    if run.state.plan is not None:
        return run.state.plan
    try:
        return parse_request(run.state.request, default_model=o.model or DEFAULT_MODEL,
                             max_tokens=o.max_tokens or s.max_tokens, max_neurons=o.max_neurons or s.max_neurons,
                             top_n=o.top_n or s.top_n)
    except PlanError as exc:
        raise RequestRejected(str(exc)) from None


def _with_options(run: RunContext, plan: Plan) -> Plan:
    """``plan`` with the explicit options (model, layers, corpus, sizes, device, seed), which win."""
    o = run.options
    update: dict[str, Any] = {name: value for name, value in (
        ("model", o.model), ("layers", list(o.layers) if o.layers else None), ("corpus", o.corpus),
        ("max_tokens", o.max_tokens), ("max_neurons", o.max_neurons), ("top_n", o.top_n)) if value}
    update["device"] = o.device or run.settings.device
    update["seed"] = o.seed
    try:
        return Plan.model_validate(plan.model_dump() | update)
    except ValueError as exc:
        raise RequestRejected(f"invalid option: {exc}") from None


def _validated(plan: Plan, info: Any, model_name: str) -> Plan:
    try:
        return validate_plan(plan, n_layers=info.n_layers, d_mlp=info.d_mlp, model_name=model_name)
    except PlanError as exc:
        raise RequestRejected(str(exc)) from None


async def _refined(run: RunContext, plan: Plan, info: Any, error: str) -> tuple[Plan, str | None]:
    """The Planner's refinement of ``plan`` (validated like the parsed plan), and its proposal. An unusable reply
    fails the state while retries remain; on the last try the parsed plan is kept, with a caveat."""
    turn = await run.turn(ROLES["planner"], planner_task(plan, run.state.model_info, error), run.facts(error=error))
    try:
        refined = _with_options(run, refine_plan(plan, extract_json(turn.text)))
        refined = validate_plan(refined, n_layers=info.n_layers, d_mlp=info.d_mlp, model_name=plan.model)
        if refined.model_dump() != plan.model_dump():
            refined.notes.append("refined by the Planner")
        return refined, turn.proposal
    except (ValueError, PlanError) as exc:
        if run.machine.retries.get(State.PLAN, 0) < run.settings.max_state_retries:
            raise StateFailure(f"the plan reply was not usable: {exc}") from None
        run.state.caveats.append(f"The Planner's refinement was not usable ({exc}); the parsed plan was used.")
        return plan, turn.proposal


def _adopt(run: RunContext, plan: Plan, info: Any) -> None:
    """Make ``plan`` the run's: its notes, the tools' limits, the trace, the manifest and a finding."""
    run.state.plan = plan
    run.state.method_notes = list(plan.notes)
    if run.uses_llm:
        run.limits["profile_corpus"] = {"max_tokens": plan.max_tokens}
        run.limits["detect_polysemantic"] = {"max_neurons": plan.max_neurons}
    run.trace.event("plan", plan=plan.model_dump(mode="json"))
    run.write_manifest()
    run.ctx.findings.add(
        kind="run", artifact="manifest.json", source="controller",
        claim=f"Plan: {plan.intent} {layer_phrase(plan.layers)} of {plan.model} ({info.n_layers} layers of "
              f"{info.d_mlp} neurons) on the {plan.corpus} corpus, up to {plan.max_tokens} tokens, the "
              f"{plan.max_neurons} most promising neurons of each layer (by a quick screen of all) analysed, the top "
              f"{plan.top_n} reported.",
        quantities=quantities_of({"n_layers": info.n_layers, "d_mlp": info.d_mlp or 0, "max_tokens": plan.max_tokens,
                                  "max_neurons": plan.max_neurons, "top_n": plan.top_n})
        + [Quantity(name="layer", value=layer, layer=layer) for layer in plan.layers],
        labels=[Label(name="model", text=plan.model), Label(name="corpus", text=plan.corpus)])
