"""What every state of the controller works with: :class:`RunContext`, the :class:`Step` a state returns, and the
failures a state may raise.

Usage (a state, see ``workflows/controller/capture.py``)::

    async def handle(run: RunContext) -> Step:
        error = run.state.errors.pop(State.CAPTURE, "")         # the failed try's error, shown to the agent
        await run.require("profile_corpus", args, "capturer")   # a tool failure fails the state or the run
        return Step(State.ANALYZE, agent="capturer")

``RunContext`` is made once per run by ``Investigation`` (``workflows.investigation``): the options and settings, the
run folder, the tools' context, the trace, the state machine, the budget, the agents' runner and the
:class:`~workflows.controller.run_state.RunState` that the states read and change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agents import AgentRunner, AgentTurn, AutoGenRunner, Choice, Role, TurnFacts, WorkbenchSettings
from agents.prose import ProseFilter, filter_prose
from agents.scripted import plural
from agents.worker import run_in_thread
from neuron_core.store import RunFolder
from tools import Finding, ToolContext, ToolOutcome, call_tool, check_claims, remove_sentences
from workflows.controller.options import RunOptions
from workflows.controller.run_state import RunState
from workflows.stateflow import BudgetTracker, State, StateMachine, Trace

__all__ = ["RunContext", "Step", "RequestRejected", "StateFailure", "Fatal", "NO_TOOLS_HINT"]

NO_TOOLS_HINT = " (if this model cannot call tools, set NW_LLM_FUNCTION_CALLING=false)"


class RequestRejected(Exception):  # noqa: N818
    """The request cannot be carried out (impossible layer, unknown model): the run ends before any capture."""


class StateFailure(Exception):  # noqa: N818
    """A recoverable failure of a state: ERROR, then a bounded retry with this message shown to the agent."""


class Fatal(Exception):  # noqa: N818
    """An unrecoverable failure (a tool error that retrying cannot fix)."""


@dataclass
class Step:
    """What a state's handler returns: the controller's next state and the agent's proposal (if any)."""

    next: State
    agent: str = "controller"
    proposal: str | None = None
    acceptable: frozenset[State] = field(default_factory=frozenset)


@dataclass
class RunContext:
    """One run's wiring (fixed once the run is set up) and its :class:`RunState` (changed by the states)."""

    options: RunOptions
    settings: WorkbenchSettings
    state: RunState
    folder: RunFolder
    ctx: ToolContext
    trace: Trace
    machine: StateMachine
    budget: BudgetTracker
    runner: AgentRunner
    choice: Choice
    limits: dict[str, dict[str, float]] = field(default_factory=dict)  # the plan's caps on tool arguments

    @property
    def uses_llm(self) -> bool:
        return isinstance(self.runner, AutoGenRunner)

    @property
    def tool_calling(self) -> bool:
        """Does the agent call the state's tools (else the controller runs them and the agent writes prose)?"""
        return bool(self.runner.tool_calling)

    # -------------------------------------------------------------------------------------------- agents
    def facts(self, **extra: Any) -> TurnFacts:
        plan = self.state.plan
        return TurnFacts(plan=plan, findings=self.ctx.findings.all(), model=plan.model if plan else "", **extra)

    async def turn(self, role: Role, task: str, facts: TurnFacts) -> AgentTurn:
        """One turn of ``role``'s agent (the AutoGen adapter traces its own messages; the scripted policy's here)."""
        turn = await self.runner.turn(role, task, facts)
        if not self.uses_llm:
            self.trace.event("message", agent=role.name, type="scripted", content=turn.text[:4000])
        retries_left = self.machine.retries.get(self.machine.state, 0) < self.settings.max_state_retries
        # a looped turn fails (and is retried) while retries remain; the last try goes on with the cut reply, so the
        # state's own fallback applies. A prose-only turn's loop is left out by the prose filter instead.
        if turn.looped and self.tool_calling and retries_left:
            raise StateFailure(f"the {role.name}'s reply looped on \"{turn.looped}\" and was cut; answer once, "
                               "briefly")
        return turn

    def prose_instead_of_tools(self, turn: AgentTurn, state: State) -> bool:
        """A tool-calling model that answers a state with prose and no tool call, on its retry too, cannot use
        tools: the controller runs the tools from here on (as with NW_LLM_FUNCTION_CALLING=false) and the report's
        Method says so. Returns whether it switched."""
        if turn.tool_calls or self.machine.retries.get(state, 0) < 1 or not isinstance(self.runner, AutoGenRunner):
            return False
        self.runner.tool_calling = False
        note = (f"The model answered {state.value} with prose and no tool call twice; the controller ran the tools "
                "for the rest of the run, and the model only wrote prose (set NW_LLM_FUNCTION_CALLING=false to "
                "start that way).")
        self.state.method_notes.append(note)
        self.trace.event("tool_calling_off", state=state.value, reason=note)
        return True

    # --------------------------------------------------------------------------------------------- tools
    async def tool(self, name: str, args: dict[str, Any], caller: str) -> ToolOutcome:
        """Run a tool on the model worker thread; its outcome (ok or a structured error) comes back."""
        return await run_in_thread(call_tool, self.ctx, name, args, caller=caller)

    async def require(self, name: str, args: dict[str, Any], caller: str) -> Any:
        """Run a tool for the state; its failure fails the state (recoverable) or the run (unrecoverable)."""
        outcome = await self.tool(name, args, caller)
        if outcome.ok:
            return outcome.result
        assert outcome.error is not None
        if outcome.error.recoverable:
            raise StateFailure(outcome.error.line())
        raise Fatal(outcome.error.line())

    def sites(self) -> list[str]:
        """The neuron sites of the plan's layers."""
        assert self.state.plan is not None and self.ctx.interface is not None
        return [self.ctx.interface.resolve(layer).name for layer in self.state.plan.layers]

    def polysemantic_findings(self) -> list[Finding]:
        """The polysemantic-neuron findings, strongest first."""
        return sorted(self.ctx.findings.by_kind("polysemantic"), key=lambda f: -f.value("score", default=0.0))

    # ------------------------------------------------------------------------------------------- checks
    def names(self) -> list[str]:
        """Model and corpus names: words of the prose that the findings check does not read as claims."""
        plan = self.state.plan
        names = [plan.model if plan else "", self.options.model or ""]
        if self.ctx.profile is not None:
            names += [str(self.ctx.profile.meta.get("model", "")), str(self.ctx.profile.meta.get("corpus", ""))]
        if plan is not None:
            names.append(plan.corpus)
        return [n for n in names if n]

    def checked(self, text: str, where: str) -> str:
        """``text`` without sentences that fail the findings check (each listed among the caveats)."""
        if not text.strip():
            return text
        check = check_claims(text, self.ctx.findings.all(), ignore=self.names())
        clean, _ = remove_sentences(text, check.issues)
        for issue in check.issues:
            self.state.caveats.append(f"Removed from the {where}: \"{issue.sentence}\" ({'; '.join(issue.problems)})")
        return clean

    def filtered(self, text: str, earlier: list[str], limit: int, who: str) -> ProseFilter:
        """A prose-only model's sentences that may go into the report; the others are traced and counted."""
        added = filter_prose(text, self.ctx.findings.all(), earlier=earlier, ignore=self.names(),
                             max_sentences=limit)
        self.trace.event("prose_filtered", agent=who.lower(), kept=added.kept,
                         dropped=[d.model_dump() for d in added.dropped])
        if added.dropped:
            reasons = sorted({d.reason for d in added.dropped})
            written = plural(len(added.kept) + len(added.dropped), "sentence")
            self.state.caveats.append(f"Of the {written} the {who}'s model wrote, {len(added.dropped)} "
                                      f"{'was' if len(added.dropped) == 1 else 'were'} left out "
                                      f"({', '.join(reasons)}; see trace.jsonl).")
        return added

    # ------------------------------------------------------------------------------------------ records
    def save_state(self) -> None:
        """``state.json`` (see :class:`RunState`)."""
        self.state.save(self.folder)

    def write_manifest(self) -> None:
        """``manifest.json``: the request, plan, versions, model hash, seed, states, budget and how the run ended."""
        state, machine = self.state, self.machine
        model_hash = None
        if self.ctx.interface is not None:
            try:
                model_hash = self.ctx.interface.loaded.weights_hash()
            except Exception as exc:  # noqa: BLE001 - a manifest without a hash is still a manifest
                model_hash = f"unavailable: {exc}"
        self.folder.write_manifest(request=state.request, plan=state.plan.model_dump(mode="json") if state.plan
                                   else None, backend=self.choice.backend, backend_reason=self.choice.reason,
                                   model=state.model_info or None, model_hash=model_hash, seed=self.options.seed,
                                   status=state.status, exit_code=state.exit_code, reason=state.reason,
                                   states=[b.value for _, b in machine.history], refused_transitions=machine.refused,
                                   revisions=machine.revisions, budget=self.budget.snapshot(),
                                   report=state.report_path)
