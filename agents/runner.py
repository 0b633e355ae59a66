"""The thin AutoGen adapter: one agent turn = one ``AssistantAgent.run`` with the role's prompt and only its tools.

Usage::

    runner = AutoGenRunner(guarded_client, ctx, tool_calling=True, on_event=trace.event)
    turn = await runner.turn(ROLES["capturer"], "Profile layers [6] of ...", facts)
    turn.text, turn.proposal, turn.tool_calls            # final text, 'ANALYZE', [ToolOutcome, ...]

Why our own loop over the agents and not a SelectorGroupChat: the controller owns the transition table, the budgets
and the bounds, and must never cancel a turn through a CancellationToken while a tool runs (autogen#7956). A fresh
agent per turn keeps each prompt short and state-specific; the controller passes what the agent needs in the task
(plan, tool results, the Critic's feedback, the error of a failed try). Swapping AutoGen out means rewriting this
file only: tools are plain functions (``tools.call_tool``), roles are data (``agents.roles``).

Tools run on the model worker thread (``agents.worker``), one at a time. ``run_in_thread``, ``interrupt_worker``,
``set_worker_threads`` and ``default_torch_threads`` are re-exported here for the callers that import them from here.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.messages import TextMessage, ToolCallRequestEvent, ToolCallSummaryMessage
from autogen_core import CancellationToken
from autogen_core.tools import BaseTool
from pydantic import BaseModel

from agents.clients import GuardedClient
from agents.prose import reply_loop
from agents.roles import Role, parse_proposal
from agents.worker import default_torch_threads, interrupt_worker, run_in_thread, set_worker_threads
from tools import TOOLS, ToolContext, ToolError, ToolOutcome, ToolSpec, call_tool

__all__ = ["AgentTurn", "TurnFacts", "AgentRunner", "AutoGenRunner", "WorkbenchTool", "run_in_thread",
           "set_worker_threads", "default_torch_threads", "interrupt_worker"]

Route = Callable[[str, dict[str, Any]], Awaitable[ToolContext]]  # (tool name, arguments) -> the context to call in


@dataclass
class TurnFacts:
    """Structured facts for a turn: what the scripted policy writes from (LLM turns read the task text instead)."""

    plan: Any = None
    findings: list[Any] = field(default_factory=list)
    check: Any = None
    draft: str = ""
    feedback: str = ""
    error: str = ""
    model: str = ""
    corpus: str = ""


class AgentTurn(BaseModel):
    role: str
    text: str
    proposal: str | None = None
    tool_calls: list[ToolOutcome] = []
    seconds: float = 0.0
    looped: str | None = None  # the phrase the reply looped on (the text is cut where the loop began)


class AgentRunner(Protocol):
    """What the controller needs from a backend: one turn of a role."""

    name: str
    tool_calling: bool

    async def turn(self, role: Role, task: str, facts: TurnFacts) -> AgentTurn: ...


class WorkbenchTool(BaseTool[BaseModel, str]):  # type: ignore[type-var]  # results go to the model as text
    """A registered tool as an AutoGen tool, bound to one run's context and one caller, with the plan's limits."""

    def __init__(self, spec: ToolSpec[Any, Any], ctx: ToolContext, caller: str, outcomes: list[ToolOutcome],
                 limits: dict[str, float] | None = None, route: Route | None = None) -> None:
        super().__init__(spec.args, str, spec.name, spec.description)
        self.spec, self.ctx, self.caller, self.outcomes = spec, ctx, caller, outcomes
        self.limits = limits or {}
        self.route = route

    async def run(self, args: BaseModel, cancellation_token: CancellationToken) -> str:
        return await self._call(args.model_dump())

    async def run_json(self, args: Any, cancellation_token: CancellationToken, call_id: str | None = None) -> Any:
        # Validation happens in call_tool, so invalid arguments come back to the model as a structured error
        # (and reach the trace) instead of an exception inside AutoGen.
        return await self._call(dict(args))

    async def _call(self, raw: dict[str, Any]) -> str:
        over = [f"{k}={raw[k]} (the plan allows at most {cap})" for k, cap in self.limits.items()
                if isinstance(raw.get(k), (int, float)) and raw[k] > cap]
        ctx, kind, refused = self.ctx, "PlanLimit", ("refused: " + ", ".join(over)) if over else ""
        if not refused and self.route is not None:
            try:
                ctx = await self.route(self.name, raw)
            except Exception as exc:  # noqa: BLE001 - the model reads why, and may try otherwise
                kind, refused = "Unavailable", " ".join(str(exc).split())
        if refused:
            outcome = ToolOutcome(tool=self.name, ok=False, error=ToolError(
                tool=self.name, kind=kind, recoverable=True, message=refused))
        else:
            outcome = await run_in_thread(call_tool, ctx, self.name, raw, caller=self.caller)
        self.outcomes.append(outcome)
        return outcome.for_llm()


def _content(value: Any, limit: int = 2000) -> Any:
    if isinstance(value, str):
        return value[:limit]
    if isinstance(value, list):
        return [_content(v, limit // max(1, len(value))) for v in value]
    if isinstance(value, BaseModel):
        return _content(value.model_dump(mode="json"), limit)
    if isinstance(value, dict):
        return {k: _content(v, limit) for k, v in value.items()}
    return value


class AutoGenRunner:
    """Runs turns with AutoGen ``AssistantAgent``s (composed per turn, never subclassed). ``route`` picks the tool
    context per call (a chat session routes each call to the run of the layer it names)."""

    def __init__(self, client: GuardedClient, ctx: ToolContext, *, name: str, tool_calling: bool,
                 max_tool_iterations: int = 8, on_event: Callable[..., None] | None = None,
                 limits: dict[str, dict[str, float]] | None = None, route: Route | None = None) -> None:
        self.route = route
        self.client = client
        self.ctx = ctx
        self.name = name
        self.tool_calling = tool_calling
        self.max_tool_iterations = max_tool_iterations
        self.on_event = on_event
        self.limits = limits if limits is not None else {}

    def _event(self, kind: str, **fields: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, **fields)

    async def turn(self, role: Role, task: str, facts: TurnFacts) -> AgentTurn:
        outcomes: list[ToolOutcome] = []
        tools: list[Any] = [WorkbenchTool(TOOLS[n], self.ctx, role.name, outcomes, self.limits.get(n), self.route)
                            for n in role.tools] if self.tool_calling else []
        agent = AssistantAgent(role.name, self.client.for_agent(role.name), tools=tools or None,
                               system_message=role.system, description=role.description,
                               max_tool_iterations=self.max_tool_iterations, reflect_on_tool_use=False)
        self._event("message", agent="controller", to=role.name, type="task", content=task[:4000])
        start = time.perf_counter()
        result = await agent.run(task=task)
        seconds = round(time.perf_counter() - start, 3)
        text = ""
        allowed = set(role.tools) if self.tool_calling else set()
        for message in result.messages:
            if isinstance(message, ToolCallRequestEvent):
                for call in message.content:
                    if call.name not in allowed:
                        self._event("tool_refused", agent=role.name, tool=call.name,
                                    reason=f"not among {role.name}'s tools: {', '.join(sorted(allowed)) or 'none'}")
            if getattr(message, "source", None) == "user":
                continue
            usage = getattr(message, "models_usage", None)
            self._event("message", agent=role.name, type=type(message).__name__,
                        content=_content(getattr(message, "content", None)),
                        tokens=None if usage is None else usage.prompt_tokens + usage.completion_tokens)
            if isinstance(message, TextMessage) and message.source == role.name:
                text = message.content
            elif isinstance(message, ToolCallSummaryMessage):
                text = ""  # the tool rounds ran out before the agent wrote its answer
        loop = reply_loop(text)
        if loop is not None:
            self._event("reply_loop", agent=role.name, phrase=loop[0], cut_at=loop[1], length=len(text))
            text = text[: loop[1]].rstrip()
        return AgentTurn(role=role.name, text=text, proposal=parse_proposal(text), tool_calls=outcomes,
                         seconds=seconds, looped=loop[0] if loop else None)
