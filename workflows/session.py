"""A chat session's memory: its runs by model and layer, what the conversation is about, and its own folder.

Usage::

    session = Session.create("runs", options=RequestOptions(request="chat", max_tokens=3000))
    entry = await session.ensure("smollm2-135m", [3])          # a layer it has: no new run; else an investigation
    ctx = session.ctx_for(entry)                                 # that run's ToolContext (models stay loaded)
    findings = session.context(entry).findings.all()            # reading needs no model
    session.focus.neuron = "L3/N344"; session.save()
    session = Session.open("runs/20261207-101500-chat-session")  # --resume SESSION_DIR (or a single RUN_DIR)

The session folder holds ``session.json`` (runs, focus, answers), ``trace.jsonl`` (every turn: what was reused and
what was computed), its own ``findings.json`` (comparisons across runs) and the run folders it made. A layer the
session already has is never computed again: :meth:`Session.ensure` says ``reused`` in the trace instead.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from neuron_core.errors import CorruptRunFolderError, RunFolderError
from neuron_core.store import RunFolder, read_json_file
from tools import ToolContext, ToolOutcome, call_tool
from tools.findings import FindingStore
from workflows.stateflow import Trace

__all__ = ["Session", "SessionState", "RunEntry", "Focus", "AnswerRecord", "SESSION_FILE", "entry_of"]

SESSION_FILE = "session.json"


class RunEntry(BaseModel):
    """One run folder the session knows: its model, layers and how it ended."""

    run_dir: str
    model: str
    layers: list[int]
    status: Literal["done", "failed", "stopped"]
    request: str = ""
    computed_for: str = Field(default="", description="why the session made it (a request, a comparison, a tool)")


class Focus(BaseModel):
    """What the conversation is about now: what 'it', 'that mode' and 'the second one' refer to."""

    model: str | None = None
    layer: int | None = None
    neuron: str | None = None
    mode: int | None = None
    listed: list[str] = Field(default_factory=list, description="the last list shown (neuron ids or mode numbers)")
    listed_kind: Literal["neurons", "modes"] | None = None

    def shown(self, kind: Literal["neurons", "modes"], items: list[str]) -> None:
        """Remember the list just shown: 'the second one' refers to it."""
        self.listed, self.listed_kind = items, kind


class AnswerRecord(BaseModel):
    """One answered turn, as the session report shows it."""

    question: str
    intent: str
    text: str
    runs: list[str] = Field(default_factory=list)
    figures: list[str] = Field(default_factory=list)
    data: list[str] = Field(default_factory=list, description="quoted corpus data and paths shown with the answer")
    removed: list[str] = Field(default_factory=list, description="sentences the claim check took out")


class SessionState(BaseModel):
    version: int = 1
    created: str = Field(default_factory=lambda: _dt.datetime.now().isoformat(timespec="seconds"))
    runs: list[RunEntry] = Field(default_factory=list)
    focus: Focus = Field(default_factory=Focus)
    answers: list[AnswerRecord] = Field(default_factory=list)


class Session:
    """The memory of one chat: see the module docstring. ``compute(model, layers, why)`` makes a run for layers the
    session lacks (the chat passes a scripted investigation); models load once into ``models``."""

    def __init__(self, folder: RunFolder, state: SessionState, *, models: dict[str, Any] | None = None,
                 echo: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.folder = folder
        self.state = state
        self.models: dict[str, Any] = models if models is not None else {}
        self.trace = Trace(folder, echo=echo)
        self._contexts: dict[str, ToolContext] = {}
        self.ctx_options: dict[str, Any] = {}  # device, embedder, seed, n_null, ablation: as the runs had them
        self._findings: FindingStore | None = None

    # ---------------------------------------------------------------------------------------- folders
    @classmethod
    def create(cls, parent: str, *, models: dict[str, Any] | None = None,
               echo: Callable[[dict[str, Any]], None] | None = None) -> Session:
        folder = RunFolder.create(parent, slug="chat-session").lock()
        session = cls(folder, SessionState(), models=models, echo=echo)
        session.save()
        session.trace.event("session_start", folder=str(folder.root))
        return session

    @classmethod
    def open(cls, path: str, *, parent: str, models: dict[str, Any] | None = None,
             echo: Callable[[dict[str, Any]], None] | None = None) -> Session:
        """A saved session (``session.json``), or a single run folder wrapped in a new session under ``parent``."""
        root = Path(path)
        if (root / SESSION_FILE).is_file():
            state = SessionState.model_validate(read_json_file(root / SESSION_FILE, dict))
            session = cls(RunFolder(root).lock(), state, models=models, echo=echo)
            session.trace.event("session_resumed", runs=len(state.runs), answers=len(state.answers))
            return session
        folder = RunFolder.open(root)  # a run folder: its manifest must read
        entry = entry_of(str(folder.root))
        if entry is None:
            raise CorruptRunFolderError(f"{root / 'manifest.json'}: it holds no plan (model and layers); "
                                        "nothing to open")
        session = cls.create(parent, models=models, echo=echo)
        session.add_run(entry)
        session.state.focus = Focus(model=entry.model, layer=entry.layers[0])
        session.save()
        return session

    def save(self) -> None:
        self.folder.write_json(SESSION_FILE, self.state.model_dump(mode="json"))

    def close(self) -> None:
        self.folder.unlock()

    @property
    def root(self) -> Path:
        return self.folder.root

    @property
    def focus(self) -> Focus:
        return self.state.focus

    @property
    def findings(self) -> FindingStore:
        """The session's own findings (comparisons across runs)."""
        if self._findings is None:
            self._findings = FindingStore(self.folder)
        return self._findings

    # ---------------------------------------------------------------------------------------- memory
    def add_run(self, entry: RunEntry) -> RunEntry:
        self.state.runs = [r for r in self.state.runs if r.run_dir != entry.run_dir] + [entry]
        self._contexts.pop(entry.run_dir, None)
        self.save()
        return entry

    def run_for(self, model: str, layer: int) -> RunEntry | None:
        """The newest finished run of ``model`` that holds ``layer``."""
        done = [r for r in self.state.runs if r.model == model and layer in r.layers and r.status == "done"]
        return done[-1] if done else None

    def stopped_run(self, model: str, layers: list[int]) -> RunEntry | None:
        """A run for exactly these layers that was stopped (Ctrl-C, a budget): the next ask resumes it."""
        stopped = [r for r in self.state.runs if r.model == model and r.layers == layers and r.status == "stopped"]
        return stopped[-1] if stopped else None

    def layers_of(self, model: str) -> list[int]:
        return sorted({x for r in self.state.runs if r.model == model and r.status == "done" for x in r.layers})

    def models_known(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.state.runs))

    async def ensure(self, model: str, layers: list[int], why: str,
                     compute: Callable[[str, list[int], str, str | None], Any]) -> list[RunEntry]:
        """The runs that hold ``layers`` of ``model``: those the session has are reused (said in the trace), the
        missing ones computed together by ``compute(model, missing, why, resume_dir)`` (an awaitable giving a
        :class:`RunEntry`)."""
        have = {x: self.run_for(model, x) for x in layers}
        missing = [x for x, r in have.items() if r is None]
        reused = sorted({r.run_dir for r in have.values() if r is not None})
        if reused:
            self.trace.event("reused", model=model, layers=[x for x in layers if x not in missing], runs=reused,
                             why=why)
        if missing:
            stopped = self.stopped_run(model, missing)
            self.trace.event("compute", model=model, layers=missing, why=why,
                             resume=stopped.run_dir if stopped else None)
            entry = await compute(model, missing, why, stopped.run_dir if stopped else None)
            self.add_run(entry)
            self.trace.event("computed", model=model, layers=missing, run=entry.run_dir, status=entry.status)
            if entry.status != "done":
                return []
        return [r for x in layers if (r := self.run_for(model, x)) is not None]

    def context(self, entry: RunEntry) -> ToolContext:
        """The run's tool context (cached: a run's profile loads once), its model not loaded: enough to read its
        findings and artifacts, also when the model is not available on this machine."""
        ctx = self._contexts.get(entry.run_dir)
        if ctx is None:
            ctx = ToolContext(RunFolder(entry.run_dir), models=self.models, on_call=self._on_call, **self.ctx_options)
            self._contexts[entry.run_dir] = ctx
        return ctx

    def ctx_for(self, entry: RunEntry) -> ToolContext:
        """The run's tool context with its model attached (loaded on first use): for tools that run the model."""
        ctx = self.context(entry)
        if ctx.interface is None:
            if entry.model not in self.models:
                outcome = call_tool(ctx, "load_model", {"model": entry.model}, caller="chat")
                if not outcome.ok:
                    raise RunFolderError(outcome.error.line() if outcome.error else f"cannot load {entry.model}")
            ctx.interface = self.models.get(entry.model)
        return ctx

    def _on_call(self, record: Any) -> None:
        self.trace.event("tool_call", **record.model_dump(mode="json"))

    async def call(self, entry: RunEntry, tool: str, args: dict[str, Any]) -> ToolOutcome:
        """A tool call on one of the session's runs, on the model worker thread (so Ctrl-C reaches it at once); the
        session's trace records it."""
        from agents.worker import run_in_thread

        ctx = self.ctx_for(entry)
        return await run_in_thread(call_tool, ctx, tool, args, caller="chat")


def entry_of(run_dir: str, why: str = "") -> RunEntry | None:
    """A run folder as the session remembers it (None when its manifest holds no plan)."""
    manifest = read_json_file(Path(run_dir) / "manifest.json", dict)
    plan = manifest.get("plan") or {}
    if not plan.get("model") or not plan.get("layers"):
        return None
    status: Literal["done", "failed", "stopped"] = manifest["status"] if manifest.get("status") in (
        "done", "failed", "stopped") else "failed"
    return RunEntry(run_dir=str(Path(run_dir).resolve()), model=str(plan["model"]),
                    layers=[int(x) for x in plan["layers"]], status=status, request=str(manifest.get("request", "")),
                    computed_for=why)
