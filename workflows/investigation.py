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

Exit codes: 0 done, 1 failed, 2 request rejected (impossible, unknown model, bad settings, a run folder that cannot
be used), 3 stopped (a budget ran out, or the LLM became unavailable) with a partial report, 130 interrupted (Ctrl-C),
resumable.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents import (
    ROLES,
    AgentRunner,
    AgentTurn,
    AutoGenRunner,
    Choice,
    GuardedClient,
    LLMUnavailable,
    Plan,
    PlanError,
    Role,
    ScriptedRunner,
    TurnFacts,
    WorkbenchSettings,
    choose_backend,
    extract_json,
    make_client,
    parse_request,
    refine_plan,
    run_in_thread,
    strip_proposal,
    validate_plan,
)
from agents.prose import ProseFilter, filter_prose
from agents.runner import default_torch_threads, interrupt_worker, set_worker_threads
from agents.scripted import layer_phrase, plural, scripted_narrative
from agents.tasks import analyst_task, capturer_task, critic_task, planner_task, visualizer_task
from neuron_core.errors import CorruptRunFolderError
from neuron_core.store import RunFolder
from tools import ReportInput, ToolCallRecord, ToolContext, ToolOutcome, call_tool, check_claims, remove_sentences
from tools.claims import split_sentences
from tools.figures import FIGURE_KINDS
from tools.findings import Label, Quantity, quantities_of, ref_parts
from tools.polysemantic import load_detections
from workflows.stateflow import Budget, BudgetExceeded, BudgetTracker, State, StateMachine, Trace

__all__ = ["Investigation", "RequestOptions", "RunOptions", "option_error", "RunResult", "EXIT_OK", "EXIT_FAILED",
           "EXIT_REJECTED", "EXIT_STOPPED", "EXIT_INTERRUPTED"]

EXIT_OK, EXIT_FAILED, EXIT_REJECTED, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEFAULT_MODEL = "smollm2-135m"
_NO_TOOLS_HINT = " (if this model cannot call tools, set NW_LLM_FUNCTION_CALLING=false)"
PROSE_SENTENCES = 2  # sentences a prose-only model may add to the deterministic narrative
VERDICT_SENTENCES = 1  # ... and to the Critic's verdict


class RequestRejected(Exception):  # noqa: N818
    """The request cannot be carried out (impossible layer, unknown model): the run ends before any capture."""


class StateFailure(Exception):  # noqa: N818
    """A recoverable failure of a state: ERROR, then a bounded retry with this message shown to the agent."""


class Fatal(Exception):  # noqa: N818
    """An unrecoverable failure (a tool error that retrying cannot fix)."""


class RequestOptions(BaseModel):
    """A request and the options that shape it, with their allowed ranges: one home for every entry point (the
    ``run`` flags, a campaign's entries, the chat). 0 and negative sizes are refused, never read as "unset"."""

    model_config = ConfigDict(extra="forbid")

    request: str = Field(min_length=1, max_length=4000)
    model: str | None = Field(default=None, min_length=1)
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1)
    corpus: str | None = Field(default=None, min_length=1)
    max_tokens: int | None = Field(default=None, ge=64, le=1_000_000_000, description="corpus tokens to profile")
    max_neurons: int | None = Field(default=None, ge=1, le=1_000_000, description="neurons per layer analysed")
    top_n: int | None = Field(default=None, ge=1, le=50, description="neurons reported in detail")
    llm: str | None = None
    device: str | None = None
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    embedder: Literal["auto", "subject", "minilm", "hidden"] | None = None


class RunOptions(RequestOptions):
    """What the CLI passes: the request and the explicit flags (which win over the parser and the Planner)."""

    out: str | None = Field(default=None, min_length=1)
    resume: str | None = Field(default=None, min_length=1)


def option_error(exc: ValidationError) -> str:
    """A validation error of :class:`RunOptions` as the user typed it: ``--max-tokens: must be >= 64 (got 0)``."""
    first = exc.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else "option"
    flag = name if name == "request" else "--" + name.replace("_", "-")
    got = f" (got {first['input']!r})" if "input" in first and not isinstance(first["input"], dict) else ""
    return f"{flag}: {first['msg']}{got}"


class RunResult(BaseModel):
    status: Literal["done", "failed", "stopped"]
    exit_code: int
    reason: str
    run_dir: str | None = None
    report: str | None = None
    backend: str = ""
    states: list[str] = []


@dataclass
class Step:
    """What a state's handler returns: the controller's next state and the agent's proposal (if any)."""

    next: State
    agent: str = "controller"
    proposal: str | None = None
    acceptable: frozenset[State] = field(default_factory=frozenset)


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
        self.runner: AgentRunner | None = runner
        self.echo = echo
        self.choice: Choice | None = None
        self.plan: Plan | None = None
        self.model_info: dict[str, Any] = {}
        self.narrative = ""
        self.critic_text = ""
        self.feedback = ""
        self.caveats: list[str] = []
        self.method_notes: list[str] = []
        self.errors: dict[State, str] = {}
        self.report_path: str | None = None
        self.reason = ""
        self.status: Literal["done", "failed", "stopped"] = "failed"
        self.exit_code = EXIT_FAILED
        self.figures_done: set[tuple[str, int | None, str | None]] = set()
        self.limits: dict[str, dict[str, float]] = {}
        self.visualized_at = -1
        self.guarded: GuardedClient | None = None

    # ------------------------------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        s, o = self.settings, self.options
        self.choice = choose_backend(s, o.llm)
        set_worker_threads(s.torch_threads or default_torch_threads())
        self.folder = self._open_resumed() if o.resume else RunFolder.create(o.out or s.runs_dir,
                                                                              slug=o.request[:60]).lock()
        self.ctx = ToolContext(self.folder, device=o.device or s.device, embedder=o.embedder or s.embedder, seed=o.seed,
                               n_null=s.detector_n_null, ablation=s.detector_ablation, models=self.models,
                               on_call=self._on_tool)
        _ = self.ctx.findings  # a resumed run's findings.json is read (and checked) before anything is written
        self.trace = Trace(self.folder, secrets=s.secrets(), echo=self.echo)
        self.budget = BudgetTracker(Budget(s.max_llm_calls, s.max_llm_tokens, s.max_wall_seconds))
        self.machine = StateMachine(max_revisions=s.max_revisions, max_retries=s.max_state_retries,
                                    on_event=self.trace.event)
        self.trace.event("run_start", request=o.request, backend=self.choice.backend, why=self.choice.reason,
                         tool_calling=self.choice.tool_calling, settings=s.model_dump(mode="json"))
        if self.runner is None:
            if not self.choice.uses_llm:
                self.runner = ScriptedRunner()
            else:
                raw = self.raw_client if self.raw_client is not None else make_client(self.choice, s)
                assert raw is not None  # only the scripted backend has no client
                self.guarded = GuardedClient(raw, before_call=self.budget.before_llm_call,
                                             after_call=self.budget.after_llm_call, max_retries=s.llm_max_retries,
                                             base_delay=s.llm_retry_base_delay, max_delay=s.llm_retry_max_delay,
                                             on_event=self.trace.event)
                self.runner = AutoGenRunner(self.guarded, self.ctx, name=self.choice.backend,
                                            tool_calling=self.choice.tool_calling,
                                            max_tool_iterations=s.max_tool_iterations, on_event=self.trace.event,
                                            limits=self.limits)

    def _open_resumed(self) -> RunFolder:
        """The run folder to resume, checked before anything there changes: locked against a second process, its
        manifest and stored plan readable (else a :class:`CorruptRunFolderError` that names the file), and the
        temporaries an interrupted write left behind removed."""
        folder = RunFolder.open(str(self.options.resume)).lock()
        manifest = folder.read_json("manifest.json", dict)
        stored_plan = manifest.get("plan")
        if stored_plan:
            try:
                self.plan = Plan.model_validate(stored_plan)
            except ValidationError as exc:
                folder.unlock()
                raise CorruptRunFolderError(f"{folder.root / 'manifest.json'}: its plan is not valid "
                                            f"({exc.errors()[0]['msg']}). Nothing was changed") from None
        if manifest.get("request"):
            self.options.request = str(manifest["request"])  # the resumed run's own request
        folder.clean_temporaries()
        return folder

    def _on_tool(self, record: ToolCallRecord) -> None:
        self.trace.event("tool_call", **record.model_dump(mode="json"))

    @property
    def uses_llm(self) -> bool:
        return isinstance(self.runner, AutoGenRunner)

    @property
    def tool_calling(self) -> bool:
        return bool(self.runner is not None and self.runner.tool_calling)

    # ------------------------------------------------------------------------------------------ the loop
    async def run(self) -> RunResult:
        """The whole run. Ctrl-C (the task cancelled by ``asyncio.run``) stops it cleanly: the model worker's job is
        interrupted and waited for, the manifest says ``stopped`` with how to resume, the trace gets its end record,
        and the result's exit code is 130."""
        try:
            self._setup()
        except ValueError as exc:  # a backend that cannot work as configured, a folder that cannot be used
            if getattr(self, "folder", None) is not None:
                self.folder.unlock()
            return RunResult(status="failed", exit_code=EXIT_REJECTED, reason=str(exc))
        try:
            await asyncio.wait_for(self._loop(), timeout=self.settings.max_wall_seconds)
        except TimeoutError:
            self._stop("wall_time", f"wall-time budget of {self.settings.max_wall_seconds:g}s exhausted")
        except asyncio.CancelledError:
            self._interrupted()
        finally:
            if self.guarded is not None:
                try:
                    await self.guarded.close()
                except Exception as exc:  # noqa: BLE001 - closing must not hide the run's result
                    self.trace.event("close_error", error=str(exc))
        try:
            return self._result()
        finally:
            self.folder.unlock()

    def _interrupted(self) -> None:
        idle = interrupt_worker()
        self.trace.event("interrupt", worker_stopped=idle)
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # handled here: the caller (a campaign, the chat) goes on to its own clean end
        self._stop("interrupt", f"interrupted (Ctrl-C); resume with: python -m workflows.run --resume "
                                f"{self.folder.root}")
        self.exit_code = EXIT_INTERRUPTED

    def _result(self) -> RunResult:
        states = [a.value for a, _ in self.machine.history] + ([self.machine.state.value] if self.machine.history
                                                               else [])
        self.trace.event("run_end", status=self.status, exit_code=self.exit_code, reason=self.reason,
                         budget=self.budget.snapshot(), report=self.report_path)
        self._manifest()
        return RunResult(status=self.status, exit_code=self.exit_code, reason=self.reason,
                         run_dir=str(self.folder.root), report=self.report_path,
                         backend=self.choice.backend if self.choice else "", states=states)

    async def _loop(self) -> None:
        machine = self.machine
        machine.go(State.PLAN, reason=f"backend {self.choice.backend if self.choice else '?'}")
        handlers = {State.PLAN: self._plan, State.CAPTURE: self._capture, State.ANALYZE: self._analyze,
                    State.VISUALIZE: self._visualize, State.CRITIQUE: self._critique, State.REVISE: self._revise,
                    State.REPORT: self._report}
        while not machine.done:
            state = machine.state
            try:
                self.budget.check()
                step = await handlers[state]()
                self._advance(step)
            except BudgetExceeded as exc:
                self._stop(exc.which, str(exc))
            except LLMUnavailable as exc:
                self._stop("llm", str(exc))
            except RequestRejected as exc:
                self._fail(str(exc), EXIT_REJECTED)
            except Fatal as exc:
                self._fail(str(exc), EXIT_FAILED)
            except StateFailure as exc:
                self.errors[state] = str(exc)
                machine.go(State.ERROR, reason=str(exc))
                problem = machine.why_not(state)
                if problem is None:
                    machine.go(state, reason="retry with the error shown to the agent")
                else:
                    self._fail(f"{state} failed: {exc} ({problem})", EXIT_FAILED)
            except Exception as exc:  # noqa: BLE001 - a bug: recorded with its traceback, the run fails cleanly
                self.trace.event("internal_error", state=state.value, error=repr(exc),
                                 traceback=traceback.format_exc(limit=8))
                self._fail(f"internal error in {state}: {type(exc).__name__}: {exc}", EXIT_FAILED)

    def _advance(self, step: Step) -> None:
        machine = self.machine
        proposal = step.proposal
        if proposal and proposal != step.next.value:
            if proposal in {s.value for s in step.acceptable} and machine.propose(proposal, by=step.agent):
                return
            if proposal not in {s.value for s in step.acceptable}:
                problem = machine.why_not(proposal)
                if problem is not None:
                    machine.propose(proposal, by=step.agent)  # refused and recorded
                else:
                    self.trace.event("proposal_overridden", by=step.agent, frm=machine.state.value, to=proposal,
                                     reason=f"the controller goes to {step.next.value}")
        machine.go(step.next, by=step.agent if proposal == step.next.value else "controller")

    # ------------------------------------------------------------------------------------------ endings
    def _checked(self, text: str, where: str) -> str:
        """``text`` without sentences that fail the findings check (each listed among the caveats)."""
        if not text.strip():
            return text
        check = check_claims(text, self.ctx.findings.all(), ignore=self._names())
        clean, removed = remove_sentences(text, check.issues)
        for issue in check.issues:
            self.caveats.append(f"Removed from the {where}: \"{issue.sentence}\" ({'; '.join(issue.problems)})")
        return clean

    def _partial_report(self, status: Literal["partial", "failed"]) -> None:
        if self.plan is None:
            return
        try:
            self.narrative = self._checked(self.narrative, "summary")
            self._write_report(status)
        except Exception as exc:  # noqa: BLE001 - the stop must still end cleanly; the trace says why
            self.trace.event("report_error", error=repr(exc), traceback=traceback.format_exc(limit=6))

    def _stop(self, which: str, message: str) -> None:
        self.reason = f"stopped: {message}"
        self.trace.event("stop", which=which, reason=message, budget=self.budget.snapshot())
        if not self.machine.done:
            self.machine.go(State.STOPPED, reason=message)
        self._partial_report("partial")
        self.status, self.exit_code = "stopped", EXIT_STOPPED

    def _fail(self, message: str, code: int) -> None:
        self.reason = message
        if not self.machine.done:
            self.machine.go(State.FAILED, reason=message)
        if self.ctx.profile is not None or self.ctx.findings.all():
            self._partial_report("failed")
        self.status, self.exit_code = "failed", code

    def _manifest(self) -> None:
        plan = self.plan.model_dump(mode="json") if self.plan else None
        model_hash = None
        if self.ctx.interface is not None:
            try:
                model_hash = self.ctx.interface.loaded.weights_hash()
            except Exception as exc:  # noqa: BLE001 - a manifest without a hash is still a manifest
                model_hash = f"unavailable: {exc}"
        self.folder.write_manifest(request=self.options.request, plan=plan, backend=self.choice.backend if self.choice
                                else None, backend_reason=self.choice.reason if self.choice else None,
                                model=self.model_info or None, model_hash=model_hash, seed=self.options.seed,
                                status=self.status, exit_code=self.exit_code, reason=self.reason,
                                states=[b.value for _, b in self.machine.history],
                                refused_transitions=self.machine.refused, revisions=self.machine.revisions,
                                budget=self.budget.snapshot(), report=self.report_path)

    # ------------------------------------------------------------------------------------------ helpers
    def _names(self) -> list[str]:
        names = [self.plan.model if self.plan else "", self.options.model or ""]
        if self.ctx.profile is not None:
            names += [str(self.ctx.profile.meta.get("model", "")), str(self.ctx.profile.meta.get("corpus", ""))]
        if self.plan is not None:
            names.append(self.plan.corpus)
        return [n for n in names if n]

    def _facts(self, **extra: Any) -> TurnFacts:
        return TurnFacts(plan=self.plan, findings=self.ctx.findings.all(), model=self.plan.model if self.plan else "",
                         **extra)

    async def _turn(self, role: Role, task: str, facts: TurnFacts) -> AgentTurn:
        """One turn of ``role``'s agent (the AutoGen adapter traces its own messages; the scripted policy's here)."""
        assert self.runner is not None
        turn = await self.runner.turn(role, task, facts)
        if not self.uses_llm:
            self.trace.event("message", agent=role.name, type="scripted", content=turn.text[:4000])
        state = self.machine.state
        retries_left = self.machine.retries.get(state, 0) < self.settings.max_state_retries
        # a looped turn fails (and is retried) while retries remain; the last try goes on with the cut reply, so the
        # state's own fallback applies. A prose-only turn's loop is left out by the prose filter instead.
        if turn.looped and self.tool_calling and retries_left:
            raise StateFailure(f"the {role.name}'s reply looped on \"{turn.looped}\" and was cut; answer once, "
                               "briefly")
        return turn

    def _prose_instead_of_tools(self, turn: AgentTurn, state: State) -> bool:
        """A tool-calling model that answers a state with prose and no tool call, on its retry too, cannot use
        tools: the controller runs the tools from here on (as with NW_LLM_FUNCTION_CALLING=false) and the report's
        Method says so. Returns whether it switched."""
        if turn.tool_calls or self.machine.retries.get(state, 0) < 1 or not isinstance(self.runner, AutoGenRunner):
            return False
        self.runner.tool_calling = False
        note = (f"The model answered {state.value} with prose and no tool call twice; the controller ran the tools "
                "for the rest of the run, and the model only wrote prose (set NW_LLM_FUNCTION_CALLING=false to "
                "start that way).")
        self.method_notes.append(note)
        self.trace.event("tool_calling_off", state=state.value, reason=note)
        return True

    async def _tool(self, name: str, args: dict[str, Any], caller: str) -> ToolOutcome:
        return await run_in_thread(call_tool, self.ctx, name, args, caller=caller)

    async def _require(self, name: str, args: dict[str, Any], caller: str) -> Any:
        """Run a tool for the state; its failure fails the state (recoverable) or the run (unrecoverable)."""
        outcome = await self._tool(name, args, caller)
        if outcome.ok:
            return outcome.result
        assert outcome.error is not None
        if outcome.error.recoverable:
            raise StateFailure(outcome.error.line())
        raise Fatal(outcome.error.line())

    def _sites(self) -> list[str]:
        assert self.plan is not None and self.ctx.interface is not None
        return [self.ctx.interface.resolve(layer).name for layer in self.plan.layers]

    # ------------------------------------------------------------------------------------------ states
    async def _plan(self) -> Step:
        o, s = self.options, self.settings
        error = self.errors.pop(State.PLAN, "")
        try:
            draft = self.plan or parse_request(o.request, default_model=o.model or DEFAULT_MODEL,
                                               max_tokens=o.max_tokens or s.max_tokens,
                                               max_neurons=o.max_neurons or s.max_neurons, top_n=o.top_n or s.top_n)
        except PlanError as exc:
            raise RequestRejected(str(exc)) from None
        draft = self._overrides(draft)
        self.trace.event("plan_draft", plan=draft.model_dump(mode="json"))
        loaded = await self._tool("load_model", {"model": draft.model, "device": draft.device}, "planner")
        if not loaded.ok:
            assert loaded.error is not None
            raise RequestRejected(loaded.error.message)
        info = loaded.result
        self.model_info = info.model_dump(exclude={"headline"})
        try:
            plan = validate_plan(draft, n_layers=info.n_layers, d_mlp=info.d_mlp, model_name=draft.model)
        except PlanError as exc:
            raise RequestRejected(str(exc)) from None
        proposal = None
        if self.tool_calling:  # a capable LLM may refine the parsed plan; the result is validated the same way
            turn = await self._turn(ROLES["planner"], planner_task(plan, self.model_info, error),
                                    self._facts(error=error))
            proposal = turn.proposal
            try:
                refined = refine_plan(plan, extract_json(turn.text))
                refined = self._overrides(refined)
                refined = validate_plan(refined, n_layers=info.n_layers, d_mlp=info.d_mlp, model_name=plan.model)
                if refined.model_dump() != plan.model_dump():
                    refined.notes.append("refined by the Planner")
                plan = refined
            except (ValueError, PlanError) as exc:
                if self.machine.retries.get(State.PLAN, 0) < self.settings.max_state_retries:
                    raise StateFailure(f"the plan reply was not usable: {exc}") from None
                self.caveats.append(f"The Planner's refinement was not usable ({exc}); the parsed plan was used.")
        self.plan = plan
        self.method_notes = list(plan.notes)
        if self.uses_llm:
            self.limits["profile_corpus"] = {"max_tokens": plan.max_tokens}
            self.limits["detect_polysemantic"] = {"max_neurons": plan.max_neurons}
        self.trace.event("plan", plan=plan.model_dump(mode="json"))
        self._manifest()
        self.ctx.findings.add(
            kind="run", artifact="manifest.json", source="controller",
            claim=f"Plan: {plan.intent} {layer_phrase(plan.layers)} of {plan.model} ({info.n_layers} layers of "
                  f"{info.d_mlp} neurons) on the {plan.corpus} corpus, up to {plan.max_tokens} tokens, the "
                  f"{plan.max_neurons} most active neurons of each layer analysed, the top {plan.top_n} reported.",
            quantities=quantities_of({"n_layers": info.n_layers, "d_mlp": info.d_mlp or 0,
                                      "max_tokens": plan.max_tokens, "max_neurons": plan.max_neurons,
                                      "top_n": plan.top_n})
            + [Quantity(name="layer", value=layer, layer=layer) for layer in plan.layers],
            labels=[Label(name="model", text=plan.model), Label(name="corpus", text=plan.corpus)])
        return Step(State.CAPTURE, agent="planner", proposal=proposal)

    def _overrides(self, plan: Plan) -> Plan:
        o = self.options
        update: dict[str, Any] = {}
        if o.model:
            update["model"] = o.model
        if o.layers:
            update["layers"] = list(o.layers)
        if o.corpus:
            update["corpus"] = o.corpus
        if o.max_tokens:
            update["max_tokens"] = o.max_tokens
        if o.max_neurons:
            update["max_neurons"] = o.max_neurons
        if o.top_n:
            update["top_n"] = o.top_n
        update["device"] = o.device or self.settings.device
        update["seed"] = o.seed
        try:
            return Plan.model_validate(plan.model_dump() | update)
        except ValueError as exc:
            raise RequestRejected(f"invalid option: {exc}") from None

    async def _capture(self) -> Step:
        plan = self.plan
        assert plan is not None
        error = self.errors.pop(State.CAPTURE, "")
        args = {"layers": plan.layers, "corpus": plan.corpus, "max_tokens": plan.max_tokens,
                "batch_size": plan.batch_size}
        proposal = None
        if self.tool_calling:
            turn = await self._turn(ROLES["capturer"], capturer_task(plan, error), self._facts(error=error))
            proposal = turn.proposal
            prof = self.ctx.profile
            if (prof is None or set(prof.site_names) != set(self._sites())) \
                    and not self._prose_instead_of_tools(turn, State.CAPTURE):
                last = next((o.error.line() for o in reversed(turn.tool_calls) if o.error), "")
                raise StateFailure("the planned layers were not profiled (call profile_corpus with the plan's "
                                   f"layers){'; last tool error: ' + last if last else ''}{_NO_TOOLS_HINT}")
        if not self.tool_calling:
            await self._require("profile_corpus", args, "capturer")
        prof = self.ctx.profile
        assert prof is not None
        self.ctx.findings.add(
            kind="run", artifact="profile/profile.json", source="profile_corpus",
            claim=f"Profiled {prof.n_tokens} tokens from {int(prof.meta.get('n_docs', 0))} documents of the "
                  f"{prof.meta.get('corpus')} corpus.",
            quantities=quantities_of({"n_tokens": prof.n_tokens, "n_docs": int(prof.meta.get("n_docs", 0))}))
        return Step(State.ANALYZE, agent="capturer", proposal=proposal)

    async def _run_analyses(self) -> None:
        """The controller's ANALYZE tools (prose-only and scripted backends); skips what is already done."""
        plan = self.plan
        assert plan is not None
        explain = plan.neuron_pairs()
        for layer, site in zip(plan.layers, self._sites(), strict=True):
            if "neuron_stats" in plan.analyses and not any(layer in f.layers()
                                                           for f in self.ctx.findings.by_kind("layer_summary")):
                await self._require("neuron_stats", {"layer": layer, "top": min(8, plan.top_n + 3)}, "analyst")
            wanted = [n for lay, n in explain if lay == layer]
            if "polysemantic" in plan.analyses and site not in load_detections(self.ctx):
                args: dict[str, Any] = {"layer": layer, "max_neurons": plan.max_neurons, "top_n": plan.top_n}
                if wanted:
                    args["neurons"] = wanted
                await self._require("detect_polysemantic", args, "analyst")
            if "logit_effects" in plan.analyses and not self.ctx.logit:
                neurons = list(dict.fromkeys(wanted + self._notable_neurons(layer, site)))[:12]
                if neurons and self.ctx.interface is not None and self.ctx.interface.loaded.is_causal_lm:
                    await self._require("logit_effects", {"layer": layer, "neurons": neurons, "k": 8}, "analyst")

    def _notable_neurons(self, layer: int, site: str) -> list[int]:
        """A layer's detected polysemantic neurons (best first, the plan's top_n) and its 3 most active ones."""
        assert self.plan is not None
        detected = sorted((v for v in load_detections(self.ctx).get(site, []) if v.verdict == "detected"),
                          key=lambda v: -v.score)
        top = [ref_parts(r)[1] for f in self.ctx.findings.by_kind("top_neurons") for r in f.neurons
               if ref_parts(r)[0] == layer][:3]
        return [v.neuron for v in detected[: self.plan.top_n]] + top

    async def _analyze(self) -> Step:
        plan = self.plan
        assert plan is not None
        error = self.errors.pop(State.ANALYZE, "")
        role = ROLES["analyst"]
        revising = bool(self.feedback)
        if self.tool_calling:
            task = analyst_task(plan, self.ctx.findings.all(), tool_calling=True, draft=self.narrative if revising
                                else "", feedback=self.feedback, error=error)
            turn = await self._turn(role, task, self._facts(error=error))
            missing = []
            if "polysemantic" in plan.analyses:
                missing += [f"detect_polysemantic(layer={layer})" for layer, site in zip(plan.layers, self._sites(),
                                                                                         strict=True)
                            if site not in load_detections(self.ctx)]
            if "neuron_stats" in plan.analyses and not self.ctx.findings.by_kind("layer_summary"):
                missing.append("neuron_stats")
            if missing and not self._prose_instead_of_tools(turn, State.ANALYZE):
                raise StateFailure("the analyses were not completed; still to call: " + ", ".join(missing)
                                   + _NO_TOOLS_HINT)
            text = strip_proposal(turn.text)
            if not text and self.tool_calling:
                raise StateFailure("the Analyst wrote no narrative (end the turn with the narrative as text)")
            proposal = turn.proposal
        if not self.tool_calling:
            await self._run_analyses()
            facts = self._facts(draft=self.narrative, feedback=self.feedback, error=error)
            if self.uses_llm:
                text, proposal = await self._prose_narrative(facts, error)
            else:
                turn = await self._turn(role, "", facts)
                text, proposal = strip_proposal(turn.text), turn.proposal
        self.narrative = text
        self.feedback = ""
        self.trace.event("narrative", draft=text[:6000], revision=self.machine.revisions)
        return Step(State.VISUALIZE, agent="analyst", proposal=proposal)

    async def _prose_narrative(self, facts: TurnFacts, error: str) -> tuple[str, str | None]:
        """A prose-only model's narrative: the deterministic writer's, plus what the model adds that passes the
        check and does not repeat (the model never writes a fact alone)."""
        assert self.plan is not None
        base = scripted_narrative(facts)
        task = analyst_task(self.plan, facts.findings, tool_calling=False, error=error, prefill=self._prefill(),
                            summary=base)
        turn = await self._turn(ROLES["analyst"], task, facts)
        added = self._filtered(strip_proposal(turn.text), split_sentences(base), PROSE_SENTENCES, "Analyst")
        return (f"{base}\n\n{added.text}" if added.kept else base), turn.proposal

    def _filtered(self, text: str, earlier: list[str], limit: int, who: str) -> ProseFilter:
        """A prose-only model's sentences that may go into the report; the others are traced and counted."""
        added = filter_prose(text, self.ctx.findings.all(), earlier=earlier, ignore=self._names(),
                             max_sentences=limit)
        self.trace.event("prose_filtered", agent=who.lower(), kept=added.kept,
                         dropped=[d.model_dump() for d in added.dropped])
        if added.dropped:
            reasons = sorted({d.reason for d in added.dropped})
            written = plural(len(added.kept) + len(added.dropped), "sentence")
            self.caveats.append(f"Of the {written} the {who}'s model wrote, {len(added.dropped)} "
                                f"{'was' if len(added.dropped) == 1 else 'were'} left out ({', '.join(reasons)}; "
                                "see trace.jsonl).")
        return added

    def _prefill(self) -> str:
        """Start of a small model's addition, anchored on the strongest neuron (the local backend continues it)."""
        assert self.plan is not None
        poly = sorted(self.ctx.findings.by_kind("polysemantic"), key=lambda f: -f.value("score", default=0.0))
        if poly and poly[0].subject:
            return f"Taken together, {poly[0].subject}"
        return f"Taken together, the neurons of {layer_phrase(self.plan.layers)}"

    async def _visualize(self) -> Step:
        plan = self.plan
        assert plan is not None
        error = self.errors.pop(State.VISUALIZE, "")
        if "figures" not in plan.analyses and "dashboard" not in plan.analyses:
            return Step(State.CRITIQUE)
        n_findings = len(self.ctx.findings)
        if self.tool_calling and self.visualized_at == n_findings:
            self.trace.event("skipped", state="VISUALIZE", reason="no new findings since the figures were made")
            return Step(State.CRITIQUE)
        self.visualized_at = n_findings
        if self.tool_calling:
            turn = await self._turn(ROLES["visualizer"], visualizer_task(plan, self.ctx.findings.all(), error),
                                    self._facts(error=error))
            pngs = list(self.folder.path_for("figures").glob("*.png"))
            dashboard = self.folder.path_for("figures/dashboard/index.html").exists()
            if pngs and ("dashboard" not in plan.analyses or dashboard):
                return Step(State.CRITIQUE, agent="visualizer", proposal=turn.proposal)
            if not self._prose_instead_of_tools(turn, State.VISUALIZE):
                raise StateFailure("the figures were not made: " + ("no figure; " if not pngs else "")
                                   + ("no dashboard (call make_dashboard)" if not dashboard else "")
                                   + _NO_TOOLS_HINT)
        for kind, layer, neuron in self._figure_list():
            if (kind, layer, neuron) in self.figures_done:
                continue
            args = {k: v for k, v in (("layer", layer), ("neuron", neuron)) if v is not None}
            if kind == "dashboard":
                outcome = await self._tool("make_dashboard", {"max_pages": max(8, 2 * plan.top_n)}, "visualizer")
            else:
                outcome = await self._tool("make_figure", {"kind": kind, **args}, "visualizer")
            self.figures_done.add((kind, layer, neuron))
            if not outcome.ok:
                assert outcome.error is not None
                if not outcome.error.recoverable:
                    raise Fatal(outcome.error.line())
                self.caveats.append(f"Figure {kind} was not drawn: {outcome.error.message}")
        return Step(State.CRITIQUE, agent="visualizer")

    def _figure_list(self) -> list[tuple[str, int | None, str | None]]:
        plan = self.plan
        assert plan is not None
        out: list[tuple[str, int | None, str | None]] = []
        poly = sorted(self.ctx.findings.by_kind("polysemantic"), key=lambda f: -f.value("score", default=0.0))
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
            if self.ctx.logit:
                out.append(("logit_effects", None, None))
        if "dashboard" in plan.analyses:
            out.append(("dashboard", None, None))
        assert all(k in FIGURE_KINDS or k == "dashboard" for k, _, _ in out)
        return out

    async def _critique(self) -> Step:
        plan = self.plan
        assert plan is not None
        error = self.errors.pop(State.CRITIQUE, "")
        findings = self.ctx.findings.all()
        check = check_claims(self.narrative, findings, ignore=self._names())
        self.trace.event("claims_checked", n_sentences=check.n_sentences, n_checked=check.n_checked,
                         issues=[i.model_dump() for i in check.issues])
        prefill = "Verdict: the draft" if self.uses_llm and not self.tool_calling else ""
        prose_only = self.uses_llm and not self.tool_calling
        task = critic_task(self.narrative, check.feedback(), findings, error, prefill, brief=prose_only)
        turn = await self._turn(ROLES["critic"], task, self._facts(check=check))
        verdict = strip_proposal(turn.text)
        if prose_only:
            verdict = self._filtered(verdict, split_sentences(self.narrative), VERDICT_SENTENCES, "Critic").text
        elif self.uses_llm:
            verdict = self._checked(verdict, "Critic's verdict")
        summary = check.feedback().splitlines()[0]
        self.critic_text = f"Automatic check: {summary}\n\n{verdict}".strip()
        more = self.machine.revisions < self.settings.max_revisions
        if check.issues:
            if more:
                self.feedback = check.feedback()
                return Step(State.REVISE, agent="critic", proposal=turn.proposal)
            self.narrative, removed = remove_sentences(self.narrative, check.issues)
            for issue in check.issues:
                self.caveats.append(f"Removed from the summary after {self.machine.revisions} revision(s): "
                                    f"\"{issue.sentence}\" ({'; '.join(issue.problems)})")
            self.trace.event("claims_removed", sentences=removed)
            return Step(State.REPORT, agent="critic", proposal=turn.proposal)
        if turn.proposal == "REVISE" and more:
            self.feedback = f"The Critic asks for a revision: {verdict}"
        return Step(State.REPORT, agent="critic", proposal=turn.proposal,
                    acceptable=frozenset({State.REVISE}) if more else frozenset())

    async def _revise(self) -> Step:
        self.trace.event("revise", round=self.machine.revisions, feedback=self.feedback[:4000])
        return Step(State.ANALYZE, agent="critic")

    async def _report(self) -> Step:
        self.narrative = self._checked(self.narrative, "summary")  # the last word: nothing unchecked gets out
        self._write_report("complete")
        self.status, self.exit_code, self.reason = "done", EXIT_OK, "done"
        return Step(State.DONE)

    def _write_report(self, status: Literal["complete", "partial", "failed"]) -> None:
        plan = self.plan
        assert plan is not None
        method = [f"Plan: {note}" for note in self.method_notes]
        if self.choice is not None:
            method.append(f"Agents: {'tool-calling ' if self.tool_calling else ''}{self.choice.backend}; "
                          f"{self.machine.revisions} revision(s) after the Critic's check")
        inp = ReportInput(request=self.options.request, status=status,
                          stop_reason=None if status == "complete" else self.reason, model=plan.model,
                          layers=plan.layers, corpus=plan.corpus, backend=self.choice.backend if self.choice else "",
                          backend_reason=self.choice.reason if self.choice else "", narrative=self.narrative,
                          critic=self.critic_text, caveats=list(dict.fromkeys(self.caveats)), method=method,
                          top_n=plan.top_n, revisions=self.machine.revisions)
        from tools import write_report

        paths = write_report(self.ctx, inp)
        self.report_path = paths.markdown
        self.trace.event("report", markdown=paths.markdown, html=paths.html, status=status)
