"""The controller: runs an investigation through the StateFlow states with one acting agent per state.

Usage::

    result = asyncio.run(Investigation(RunOptions(request="investigate layer 6 of smollm2-135m"),
                                       WorkbenchSettings(llm="scripted")).run())
    result.status, result.exit_code, result.report          # 'done', 0, 'runs/2026...-investigate-layer-6/report.md'

The controller owns the transitions (``workflows.stateflow``); agents propose, it decides. With a tool-calling LLM
the state's agent calls its own tools and the controller checks what the state must leave behind; with a prose-only
LLM (local, or a compatible server without tool calls) or the scripted policy, the controller runs the state's tools
with the plan's arguments and the agent only writes prose: the deterministic writer writes the narrative's facts, and a
prose-only model may add a sentence or two that pass the findings check and do not repeat (``agents.prose``). The
whole run is bounded by ``asyncio.wait_for`` (never a
CancellationToken during a tool call: autogen#7956); budgets stop it cleanly with a partial report.

This module is the run's lifecycle (set-up, the loop over the states, the endings) and the public surface; each state
has its own module in ``workflows/controller/`` (``capture.py`` is CAPTURE), and the run's state is one
:class:`~workflows.controller.run_state.RunState`, saved to ``state.json`` in the run folder after every step.

Exit codes: 0 done, 1 failed, 2 request rejected (impossible, unknown model, bad settings, a run folder that cannot
be used), 3 stopped (a budget ran out, or the LLM became unavailable) with a partial report, 130 interrupted (Ctrl-C),
resumable.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from agents import (
    AgentRunner,
    AutoGenRunner,
    GuardedClient,
    LLMUnavailable,
    ScriptedRunner,
    WorkbenchSettings,
    choose_backend,
    make_client,
)
from agents.worker import default_torch_threads, interrupt_worker, set_worker_threads
from neuron_core.store import RunFolder
from tools import ToolCallRecord, ToolContext
from workflows.controller import analyze, capture, critique, plan, report, revise, visualize
from workflows.controller.context import Fatal, RequestRejected, RunContext, StateFailure, Step
from workflows.controller.options import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_STOPPED,
    RequestOptions,
    RunOptions,
    RunResult,
    option_error,
)
from workflows.controller.run_state import RunState
from workflows.stateflow import Budget, BudgetExceeded, BudgetTracker, State, StateMachine, Trace

__all__ = ["Investigation", "RequestOptions", "RunOptions", "option_error", "RunResult", "EXIT_OK", "EXIT_FAILED",
           "EXIT_REJECTED", "EXIT_STOPPED", "EXIT_INTERRUPTED"]

HANDLERS: dict[State, Callable[[RunContext], Awaitable[Step]]] = {
    State.PLAN: plan.handle, State.CAPTURE: capture.handle, State.ANALYZE: analyze.handle,
    State.VISUALIZE: visualize.handle, State.CRITIQUE: critique.handle, State.REVISE: revise.handle,
    State.REPORT: report.handle}


class Investigation:
    """One run. ``models`` is a cache of loaded models by name, filled as models load (pass one dict to several runs
    to load each model once; tests put tiny models in it); ``client`` replaces the backend's raw LLM client."""

    def __init__(self, options: RunOptions, settings: WorkbenchSettings | None = None, *,
                 models: dict[str, Any] | None = None, client: Any = None, runner: AgentRunner | None = None,
                 echo: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.options = options
        self.settings = settings or WorkbenchSettings()
        self.models = models if models is not None else {}  # shared: loaded models stay for the next run
        self.raw_client = client
        self.runner = runner
        self.echo = echo
        self.folder: RunFolder | None = None  # locked once opened; unlocked when the run ends
        self.guarded: GuardedClient | None = None  # closed when the run ends
        self.run_ctx: RunContext | None = None  # everything else, once set up

    # ------------------------------------------------------------------------------------------ set-up
    def _setup(self) -> RunContext:
        """The run folder (new, or the one to resume), the tools' context, the trace, the state machine, the budget
        and the agents' runner. ValueError when the backend or the folder cannot be used."""
        s, o = self.settings, self.options
        choice = choose_backend(s, o.llm)
        set_worker_threads(s.torch_threads or default_torch_threads())
        state = self._open_resumed() if o.resume else self._open_new()
        assert self.folder is not None
        trace = Trace(self.folder, secrets=s.secrets(), echo=self.echo)
        ctx = ToolContext(self.folder, device=o.device or s.device, embedder=o.embedder or s.embedder, seed=o.seed,
                          n_null=s.detector_n_null, ablation=s.detector_ablation, models=self.models,
                          on_call=lambda record: _traced(trace, record))
        _ = ctx.findings  # a resumed run's findings.json is read (and checked) before anything is written
        budget = BudgetTracker(Budget(s.max_llm_calls, s.max_llm_tokens, s.max_wall_seconds))
        machine = StateMachine(max_revisions=s.max_revisions, max_retries=s.max_state_retries, on_event=trace.event)
        trace.event("run_start", request=state.request, backend=choice.backend, why=choice.reason,
                    tool_calling=choice.tool_calling, settings=s.model_dump(mode="json"))
        limits: dict[str, dict[str, float]] = {}
        if self.runner is None and not choice.uses_llm:
            self.runner = ScriptedRunner()
        elif self.runner is None:
            raw = self.raw_client if self.raw_client is not None else make_client(choice, s)
            assert raw is not None  # only the scripted backend has no client
            self.guarded = GuardedClient(raw, before_call=budget.before_llm_call, after_call=budget.after_llm_call,
                                         max_retries=s.llm_max_retries, base_delay=s.llm_retry_base_delay,
                                         max_delay=s.llm_retry_max_delay, on_event=trace.event)
            self.runner = AutoGenRunner(self.guarded, ctx, name=choice.backend, tool_calling=choice.tool_calling,
                                        max_tool_iterations=s.max_tool_iterations, on_event=trace.event,
                                        limits=limits)
        return RunContext(options=o, settings=s, state=state, folder=self.folder, ctx=ctx, trace=trace,
                          machine=machine, budget=budget, runner=self.runner, choice=choice, limits=limits)

    def _open_new(self) -> RunState:
        o = self.options
        self.folder = RunFolder.create(o.out or self.settings.runs_dir, slug=o.request[:60]).lock()
        return RunState(request=o.request)

    def _open_resumed(self) -> RunState:
        """The run folder to resume, checked before anything there changes: locked against a second process, its
        saved state and manifest readable (else a :class:`CorruptRunFolderError` that names the file), and the
        temporaries an interrupted write left behind removed. The run keeps its own request and plan."""
        self.folder = RunFolder.open(str(self.options.resume)).lock()
        saved = RunState.load(self.folder, default_request=self.options.request)
        self.folder.clean_temporaries()
        return saved.for_resume()

    # ------------------------------------------------------------------------------------------ the loop
    async def run(self) -> RunResult:
        """The whole run. Ctrl-C (the task cancelled by ``asyncio.run``) stops it cleanly: the model worker's job is
        interrupted and waited for, the manifest says ``stopped`` with how to resume, the trace gets its end record,
        and the result's exit code is 130."""
        try:
            run = self.run_ctx = self._setup()
        except ValueError as exc:  # a backend that cannot work as configured, a folder that cannot be used
            if self.folder is not None:
                self.folder.unlock()
            return RunResult(status="failed", exit_code=EXIT_REJECTED, reason=str(exc))
        try:
            await asyncio.wait_for(self._loop(run), timeout=self.settings.max_wall_seconds)
        except TimeoutError:
            self._stop(run, "wall_time", f"wall-time budget of {self.settings.max_wall_seconds:g}s exhausted")
        except asyncio.CancelledError:
            self._interrupted(run)
        finally:
            if self.guarded is not None:
                try:
                    await self.guarded.close()
                except Exception as exc:  # noqa: BLE001 - closing must not hide the run's result
                    run.trace.event("close_error", error=str(exc))
        try:
            return self._result(run)
        finally:
            run.folder.unlock()

    async def _loop(self, run: RunContext) -> None:
        machine = run.machine
        machine.go(State.PLAN, reason=f"backend {run.choice.backend}")
        while not machine.done:
            state = machine.state
            try:
                run.budget.check()
                self._advance(run, await HANDLERS[state](run))
            except BudgetExceeded as exc:
                self._stop(run, exc.which, str(exc))
            except LLMUnavailable as exc:
                self._stop(run, "llm", str(exc))
            except RequestRejected as exc:
                self._fail(run, str(exc), EXIT_REJECTED)
            except Fatal as exc:
                self._fail(run, str(exc), EXIT_FAILED)
            except StateFailure as exc:
                self._retry(run, state, exc)
            except Exception as exc:  # noqa: BLE001 - a bug: recorded with its traceback, the run fails cleanly
                run.trace.event("internal_error", state=state.value, error=repr(exc),
                                traceback=traceback.format_exc(limit=8))
                self._fail(run, f"internal error in {state}: {type(exc).__name__}: {exc}", EXIT_FAILED)
            run.save_state()

    def _retry(self, run: RunContext, state: State, exc: StateFailure) -> None:
        """ERROR, then ``state`` again with the error shown to its agent; the run fails past the retry bound."""
        run.state.errors[state] = str(exc)
        run.machine.go(State.ERROR, reason=str(exc))
        problem = run.machine.why_not(state)
        if problem is None:
            run.machine.go(state, reason="retry with the error shown to the agent")
        else:
            self._fail(run, f"{state} failed: {exc} ({problem})", EXIT_FAILED)

    def _advance(self, run: RunContext, step: Step) -> None:
        """To the state's next state, or to the agent's proposal where the state accepts it; an illegal proposal is
        refused and recorded, a legal one the state does not accept is overridden (and traced)."""
        machine = run.machine
        proposal = step.proposal
        if proposal and proposal != step.next.value:
            if proposal in {s.value for s in step.acceptable} and machine.propose(proposal, by=step.agent):
                return
            if proposal not in {s.value for s in step.acceptable}:
                problem = machine.why_not(proposal)
                if problem is not None:
                    machine.propose(proposal, by=step.agent)  # refused and recorded
                else:
                    run.trace.event("proposal_overridden", by=step.agent, frm=machine.state.value, to=proposal,
                                    reason=f"the controller goes to {step.next.value}")
        machine.go(step.next, by=step.agent if proposal == step.next.value else "controller")

    # ------------------------------------------------------------------------------------------ endings
    def _interrupted(self, run: RunContext) -> None:
        idle = interrupt_worker()
        run.trace.event("interrupt", worker_stopped=idle)
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # handled here: the caller (a campaign, the chat) goes on to its own clean end
        self._stop(run, "interrupt", f"interrupted (Ctrl-C); resume with: python -m workflows.run --resume "
                                     f"{run.folder.root}")
        run.state.exit_code = EXIT_INTERRUPTED

    def _stop(self, run: RunContext, which: str, message: str) -> None:
        run.state.reason = f"stopped: {message}"
        run.trace.event("stop", which=which, reason=message, budget=run.budget.snapshot())
        if not run.machine.done:
            run.machine.go(State.STOPPED, reason=message)
        report.write_partial(run, "partial")
        run.state.status, run.state.exit_code = "stopped", EXIT_STOPPED

    def _fail(self, run: RunContext, message: str, code: int) -> None:
        run.state.reason = message
        if not run.machine.done:
            run.machine.go(State.FAILED, reason=message)
        if run.ctx.profile is not None or run.ctx.findings.all():
            report.write_partial(run, "failed")
        run.state.status, run.state.exit_code = "failed", code

    def _result(self, run: RunContext) -> RunResult:
        state, machine = run.state, run.machine
        states = [a.value for a, _ in machine.history] + ([machine.state.value] if machine.history else [])
        run.trace.event("run_end", status=state.status, exit_code=state.exit_code, reason=state.reason,
                        budget=run.budget.snapshot(), report=state.report_path)
        run.write_manifest()
        run.save_state()
        return RunResult(status=state.status, exit_code=state.exit_code, reason=state.reason,
                         run_dir=str(run.folder.root), report=state.report_path, backend=run.choice.backend,
                         states=states)


def _traced(trace: Trace, record: ToolCallRecord) -> None:
    trace.event("tool_call", **record.model_dump(mode="json"))
