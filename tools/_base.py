"""The machinery every tool shares: the context a run's tools work in, the registry and the structured call.

Usage::

    ctx = ToolContext(RunFolder.create("runs", "demo"))
    outcome = call_tool(ctx, "load_model", {"model": "smollm2-135m"}, caller="planner")
    outcome.ok, outcome.result, outcome.error            # ModelInfo | None, ToolError | None
    outcome.for_llm()                                    # a compact JSON string (what an agent sees)

A tool is a plain typed function ``fn(ctx, args) -> result`` with pydantic ``args`` (bounds included) and a pydantic
result: a compact summary with artifact paths and finding ids, never raw tensors. Tools write only through
``ctx.run`` (atomic, confined to the run folder). Errors come back as a :class:`ToolError`; the controller decides
which of them stop the run.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from neuron_core.errors import ModelNotAvailableError, NeuronCoreError, RunFolderError, UnsupportedModelError
from neuron_core.store import RunFolder

if TYPE_CHECKING:
    from neuron_core import ModelInterface, NeuronProfile
    from tools.findings import FindingStore

__all__ = ["ToolContext", "ToolSpec", "ToolError", "ToolOutcome", "ToolCallRecord", "register", "TOOLS", "call_tool",
           "fence", "DATA_OPEN", "DATA_CLOSE", "StrictArgs", "tool_names"]

DATA_OPEN = "<data>"
DATA_CLOSE = "</data>"


def fence(text: str, limit: int = 400) -> str:
    """Corpus (or model-generated) text as data an agent must not obey: ``<data>…</data>``.

    The markers inside the text are broken up so quoted text can never close the fence early; long text is cut.
    """
    body = str(text).replace("\r", " ").replace("\n", " ")
    for marker in (DATA_OPEN, DATA_CLOSE, "<data", "</data"):
        body = body.replace(marker, marker.replace("<", "‹"))
    if len(body) > limit:
        body = body[: limit - 1] + "…"
    return f"{DATA_OPEN}{body}{DATA_CLOSE}"


class StrictArgs(BaseModel):
    """Base of tool arguments: unknown fields are an error (a model inventing arguments hears about it)."""

    model_config = ConfigDict(extra="forbid")


class ToolError(BaseModel):
    """A tool failure as the agent and the controller see it."""

    tool: str
    kind: str = Field(description="the exception's class name, e.g. UnknownSiteError, ValidationError")
    message: str
    recoverable: bool = Field(description="True when different arguments may succeed; False stops the state")

    def line(self) -> str:
        return f"{self.tool} failed ({self.kind}): {self.message}"


class ToolCallRecord(BaseModel):
    """One tool call for the trace."""

    tool: str
    caller: str
    args: dict[str, Any]
    ok: bool
    seconds: float
    summary: str
    result: str = ""
    error: ToolError | None = None


A = TypeVar("A", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True)
class ToolSpec(Generic[A, R]):
    """A registered tool: its name, the text an LLM reads, its argument and result types and the function."""

    name: str
    description: str
    args: type[A]
    result: type[R]
    fn: Callable[[ToolContext, A], R]


TOOLS: dict[str, ToolSpec[Any, Any]] = {}


def register(name: str, description: str, args: type[A], result: type[R]
             ) -> Callable[[Callable[[ToolContext, A], R]], Callable[[ToolContext, A], R]]:
    """Decorator: add ``fn(ctx, args) -> result`` to :data:`TOOLS` under ``name``."""

    def wrap(fn: Callable[[ToolContext, A], R]) -> Callable[[ToolContext, A], R]:
        if name in TOOLS:
            raise ValueError(f"tool {name!r} registered twice")
        TOOLS[name] = ToolSpec(name, description, args, result, fn)
        return fn

    return wrap


def tool_names() -> list[str]:
    return sorted(TOOLS)


@dataclass
class ToolContext:
    """What a run's tools share: the run folder, the loaded model, the profile, the detections, the findings.

    ``models`` may be filled beforehand (tests put tiny models there under a name); ``on_call`` receives a
    :class:`ToolCallRecord` after every call (the controller writes them to ``trace.jsonl``).
    """

    run: RunFolder
    device: str = "cpu"
    embedder: str = "auto"
    seed: int = 0
    n_null: int | None = None  # the detector's random context sets (None: the library's default)
    ablation: bool = True  # the detector measures each mode's loss change under zero-ablation
    models: dict[str, ModelInterface] = field(default_factory=dict)
    on_call: Callable[[ToolCallRecord], None] | None = None
    interface: ModelInterface | None = None
    profile: NeuronProfile | None = None
    detectors: dict[str, Any] = field(default_factory=dict)  # site -> PolysemanticDetector (this process only)
    detections: dict[str, list[Any]] = field(default_factory=dict)  # site -> every analysed PolysemanticNeuron
    logit: dict[str, Any] = field(default_factory=dict)  # "site/neuron" -> NeuronLogitEffects
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _findings: FindingStore | None = field(default=None, repr=False)

    @property
    def findings(self) -> FindingStore:
        if self._findings is None:
            from tools.findings import FindingStore

            self._findings = FindingStore(self.run)
        return self._findings

    def require_model(self) -> ModelInterface:
        if self.interface is None:
            raise NeuronCoreError("no model is loaded yet; call load_model first")
        return self.interface

    def require_profile(self) -> NeuronProfile:
        if self.profile is None:
            from neuron_core import NeuronProfile

            folder = self.run.path_for("profile")
            if (folder / "profile.json").exists():
                prof = NeuronProfile.load(folder)
                if prof.meta.get("complete"):
                    self.profile = prof
        if self.profile is None:
            raise NeuronCoreError("no profile yet; call profile_corpus first")
        return self.profile


class ToolOutcome(BaseModel):
    """The result of :func:`call_tool`: exactly one of ``result`` and ``error``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    tool: str
    ok: bool
    result: Any = None
    error: ToolError | None = None
    seconds: float = 0.0

    def for_llm(self, limit: int = 6000) -> str:
        """What an agent reads: the result (or the error) as compact JSON, cut at ``limit`` characters."""
        if self.ok:
            payload: Any = self.result.model_dump(mode="json") if isinstance(self.result, BaseModel) else self.result
        else:
            payload = {"error": self.error.model_dump() if self.error else "unknown"}
        text = json.dumps(payload, separators=(",", ":"), default=str)
        return text if len(text) <= limit else text[: limit - 20] + '..."(cut)"'


_UNRECOVERABLE = (ModelNotAvailableError, UnsupportedModelError, RunFolderError, MemoryError)


def _summary(result: Any, limit: int = 300) -> str:
    if isinstance(result, BaseModel):
        text = getattr(result, "headline", None)
        if isinstance(text, str) and text:
            return text[:limit]
        text = result.model_dump_json()
    else:
        text = str(result)
    return text[:limit]


def call_tool(ctx: ToolContext, name: str, args: dict[str, Any] | BaseModel | None = None, *,
              caller: str = "controller") -> ToolOutcome:
    """Validate ``args``, run the tool, time it, report it to ``ctx.on_call``; never raises for tool failures.

    Unknown tool names and invalid arguments come back as recoverable errors; errors about the world (the model is
    not available, a write outside the run folder, an internal bug) as unrecoverable ones.
    """
    start = time.perf_counter()
    raw: dict[str, Any] = (args.model_dump() if isinstance(args, BaseModel) else dict(args or {}))
    spec = TOOLS.get(name)
    error: ToolError | None = None
    result: Any = None
    if spec is None:
        error = ToolError(tool=name, kind="UnknownTool", recoverable=True,
                          message=f"no tool named {name!r}; tools: {', '.join(tool_names())}")
    else:
        try:
            parsed = spec.args.model_validate(raw)
            with ctx.lock:  # one tool at a time: tools share the model and the profile
                result = spec.fn(ctx, parsed)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'args'}: {e['msg']}" for e in exc.errors())
            error = ToolError(tool=name, kind="ValidationError", message=f"invalid arguments: {problems}",
                              recoverable=True)
        except _UNRECOVERABLE as exc:
            error = ToolError(tool=name, kind=type(exc).__name__, message=str(exc), recoverable=False)
        except NeuronCoreError as exc:
            error = ToolError(tool=name, kind=type(exc).__name__, message=str(exc), recoverable=True)
        except Exception as exc:  # noqa: BLE001 - reported with its traceback, and the controller stops on it
            tb = traceback.format_exc(limit=4).strip().splitlines()
            error = ToolError(tool=name, kind=type(exc).__name__, recoverable=False,
                              message=f"{exc} (at {tb[-3].strip() if len(tb) >= 3 else '?'})")
    seconds = time.perf_counter() - start
    outcome = ToolOutcome(tool=name, ok=error is None, result=result, error=error, seconds=round(seconds, 4))
    if ctx.on_call is not None:
        ctx.on_call(ToolCallRecord(tool=name, caller=caller, args=raw, ok=outcome.ok, seconds=outcome.seconds,
                                   summary=_summary(result) if error is None else error.line(),
                                   result=outcome.for_llm(limit=2000) if error is None else "", error=error))
    return outcome

