"""The chat's follow-ups with a tool-calling LLM: the Analyst answers through its tools, routed by layer.

Usage (the chat calls it)::

    reply = await llm_answer(chat, "why is L3/N344 polysemantic?")

The Analyst's prompt holds a short summary of what the session knows (runs, detected neurons, the focus), never the
whole history. Each tool call goes to the run of the layer it names; a layer the session lacks is computed first
(a scripted investigation), so the call succeeds. The answer's sentences pass the report's claim check against the
findings of the runs it touched; failing ones are removed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tools import ToolContext
from tools.findings import ref_parts
from workflows.answers import Reply

if TYPE_CHECKING:
    from workflows.chat import ChatSession

__all__ = ["llm_answer", "session_summary"]


def session_summary(chat: ChatSession) -> str:
    """What the session knows, in a few lines: runs by model and layer, each layer's detected neurons, the focus."""
    session = chat.session
    lines = []
    for r in session.state.runs:
        if r.status != "done":
            lines.append(f"- {r.model} layers {r.layers}: {r.status}")
            continue
        findings = session.context(r).findings.all()
        detected = [f for f in findings if f.kind == "polysemantic"][:5]
        tops = ", ".join(f"{f.subject} (score {f.value('score', neuron=f.subject):.2f}) [{f.id}]" for f in detected)
        lines.append(f"- {r.model} layers {r.layers}: detected {tops or 'none'}")
    focus = session.focus
    lines.append(f"Focus: model {focus.model}, layer {focus.layer}, neuron {focus.neuron}, mode {focus.mode}.")
    recent = session.state.answers[-2:]
    for a in recent:
        lines.append(f"Earlier: Q: {a.question} A: {a.text[:300]}")
    return "Session summary:\n" + "\n".join(lines)


def _layer_of(args: dict[str, Any]) -> int | None:
    if isinstance(args.get("neuron"), str):
        try:
            return ref_parts(args["neuron"])[0]
        except ValueError:
            return None
    layer = args.get("layer")
    return int(layer) if isinstance(layer, int) else None


async def llm_answer(chat: ChatSession, text: str) -> Reply:
    from agents import AutoGenRunner, GuardedClient, make_client
    from agents.roles import CHAT_ANALYST, strip_proposal
    from agents.runner import TurnFacts
    from workflows.stateflow import Budget, BudgetTracker

    session, settings = chat.session, chat.settings
    touched: dict[str, ToolContext] = {}
    focus = session.focus

    async def route(tool: str, args: dict[str, Any]) -> ToolContext:
        layer = _layer_of(args)
        model = focus.model or (session.models_known() or [""])[0]
        if layer is None:
            layer = focus.layer if focus.layer is not None else (session.layers_of(model) or [0])[0]
        entries = await session.ensure(model, [layer], f"the Analyst's {tool} call",
                                       lambda m, ls, w, r: chat._compute(m, ls, w, r, None))
        if not entries:
            raise ValueError(f"layer {layer} of {model} could not be computed")
        ctx = session.ctx_for(entries[0])
        touched[entries[0].run_dir] = ctx
        chat.view.note(f"  analyst: {tool} {args}"[:300], "dim")
        return ctx

    budget = BudgetTracker(Budget(settings.max_llm_calls, settings.max_llm_tokens, settings.max_wall_seconds))
    raw = chat.client if chat.client is not None else make_client(chat.choice, settings)
    assert raw is not None  # only the scripted backend has no client, and it never gets here
    guarded = GuardedClient(raw, before_call=budget.before_llm_call, after_call=budget.after_llm_call,
                            max_retries=settings.llm_max_retries, base_delay=settings.llm_retry_base_delay,
                            max_delay=settings.llm_retry_max_delay, on_event=session.trace.event)
    home = session.run_for(focus.model, focus.layer) if focus.model and focus.layer is not None else None
    ctx = session.ctx_for(home) if home else ToolContext(session.folder, models=session.models)
    runner = AutoGenRunner(guarded, ctx, name=chat.choice.backend, tool_calling=True,
                           max_tool_iterations=settings.max_tool_iterations, on_event=session.trace.event,
                           route=route)
    try:
        turn = await runner.turn(CHAT_ANALYST, f"{session_summary(chat)}\n\nQuestion: {text}", TurnFacts())
    finally:
        await guarded.close()
    _follow_focus(chat, turn.tool_calls)
    findings = [f for c in touched.values() for f in c.findings.all()] + session.findings.all()
    return chat.answerer.checked(Reply(text=strip_proposal(turn.text), findings=findings, runs=list(touched)))


def _follow_focus(chat: ChatSession, outcomes: list[Any]) -> None:
    """The neuron the Analyst looked at last becomes the focus ('it' in the next question)."""
    for outcome in reversed(outcomes):
        neuron = getattr(outcome.result, "neuron", None) if outcome.ok else None
        if isinstance(neuron, str):
            chat.session.focus.neuron, chat.session.focus.layer = neuron, ref_parts(neuron)[0]
            return
