"""StateFlow: the states of an investigation, the legal transitions, budgets and the trace. No LLM library here.

Usage::

    machine = StateMachine(max_revisions=2, max_retries=2, on_event=trace.event)
    machine.go(State.PLAN)                       # legal: done and recorded
    machine.propose(State.DONE, by="analyst")    # illegal from PLAN: refused, recorded, returns False
    machine.go(State.ERROR, reason="...")        # remembers the failed state; ERROR may only go back to it

    budget = BudgetTracker(Budget(max_llm_calls=60, max_llm_tokens=300_000, max_wall_seconds=1800))
    budget.before_llm_call()                     # raises BudgetExceeded when a limit is reached
    budget.after_llm_call(prompt_tokens, completion_tokens)

    trace = Trace(run, secrets=["sk-..."])       # trace.jsonl in the run folder; secrets are replaced by ***
    trace.event("tool_call", tool="profile_corpus", seconds=3.2)

States (docs/ARCHITECTURE.md): INIT → PLAN → CAPTURE → ANALYZE → VISUALIZE → CRITIQUE → (REVISE → ANALYZE,
bounded) → REPORT → DONE, plus ERROR (retry the failed state, bounded), FAILED (an error or an impossible
request) and STOPPED (a budget ran out or the LLM became unavailable: the run ends cleanly with a partial report).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from neuron_core.store import RunFolder

__all__ = ["State", "TRANSITIONS", "TERMINAL", "StateMachine", "IllegalTransition", "Budget", "BudgetTracker",
           "BudgetExceeded", "Trace", "legal_path", "redact"]


class State(StrEnum):
    INIT = "INIT"
    PLAN = "PLAN"
    CAPTURE = "CAPTURE"
    ANALYZE = "ANALYZE"
    VISUALIZE = "VISUALIZE"
    CRITIQUE = "CRITIQUE"
    REVISE = "REVISE"
    REPORT = "REPORT"
    DONE = "DONE"
    ERROR = "ERROR"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    def __str__(self) -> str:
        return self.value


S = State
_ENDINGS = {S.FAILED, S.STOPPED}
TRANSITIONS: dict[State, frozenset[State]] = {
    S.INIT: frozenset({S.PLAN} | _ENDINGS),
    S.PLAN: frozenset({S.CAPTURE, S.ERROR} | _ENDINGS),
    S.CAPTURE: frozenset({S.ANALYZE, S.ERROR} | _ENDINGS),
    S.ANALYZE: frozenset({S.VISUALIZE, S.ERROR} | _ENDINGS),
    S.VISUALIZE: frozenset({S.CRITIQUE, S.ERROR} | _ENDINGS),
    S.CRITIQUE: frozenset({S.REVISE, S.REPORT, S.ERROR} | _ENDINGS),
    S.REVISE: frozenset({S.ANALYZE} | _ENDINGS),
    S.REPORT: frozenset({S.DONE, S.ERROR} | _ENDINGS),
    # ERROR goes back to the state that failed (checked by the machine), or ends the run
    S.ERROR: frozenset({S.PLAN, S.CAPTURE, S.ANALYZE, S.VISUALIZE, S.CRITIQUE, S.REPORT} | _ENDINGS),
    S.DONE: frozenset(),
    S.FAILED: frozenset(),
    S.STOPPED: frozenset(),
}
TERMINAL = frozenset({S.DONE, S.FAILED, S.STOPPED})


class IllegalTransition(ValueError):  # noqa: N818 - named for what it is
    """A transition the table (or a bound) does not allow."""


def _as_state(value: State | str) -> State:
    try:
        return value if isinstance(value, State) else State(str(value).upper())
    except ValueError:
        raise IllegalTransition(f"{value!r} is not a state; states: {', '.join(s.value for s in State)}") from None


@dataclass
class StateMachine:
    """The controller's state: the table, the REVISE bound and the ERROR-retry bound. Every change is an event."""

    max_revisions: int = 2
    max_retries: int = 2
    on_event: Callable[..., None] | None = None
    state: State = State.INIT
    history: list[tuple[State, State]] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)
    revisions: int = 0
    retries: dict[State, int] = field(default_factory=dict)
    failed_state: State | None = None
    entered_at: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def why_not(self, target: State | str) -> str | None:
        """None when ``state -> target`` is legal now, else the reason."""
        try:
            to = _as_state(target)
        except IllegalTransition as exc:
            return str(exc)
        here = self.state
        if to not in TRANSITIONS[here]:
            allowed = ", ".join(sorted(s.value for s in TRANSITIONS[here])) or "none (terminal)"
            return f"{here} -> {to} is not a legal transition (from {here}: {allowed})"
        if to is S.REVISE and self.revisions >= self.max_revisions:
            return f"REVISE bound reached ({self.max_revisions} revisions)"
        if here is S.ERROR and to not in _ENDINGS and to is not self.failed_state:
            return f"ERROR may only retry the failed state {self.failed_state}, not {to}"
        if here is S.ERROR and to not in _ENDINGS and self.retries.get(to, 0) > self.max_retries:
            return f"retry bound reached for {to} ({self.max_retries} retries)"
        return None

    def go(self, target: State | str, *, by: str = "controller", reason: str = "") -> None:
        """Move to ``target`` or raise IllegalTransition (the controller's own moves must be legal)."""
        problem = self.why_not(target)
        if problem is not None:
            self._event("transition_refused", by=by, frm=self.state.value, to=str(target), reason=problem)
            raise IllegalTransition(problem)
        to = _as_state(target)
        here = self.state
        if to is S.REVISE:
            self.revisions += 1
        if to is S.ERROR:
            self.failed_state = here
            self.retries[here] = self.retries.get(here, 0) + 1
        self.history.append((here, to))
        self.state = to
        now = time.monotonic()
        seconds, self.entered_at = round(now - self.entered_at, 3), now
        self._event("transition", by=by, frm=here.value, to=to.value, reason=reason, seconds_in_state=seconds)

    def propose(self, target: State | str, *, by: str) -> bool:
        """An agent's proposal: taken when legal, else refused and recorded (the run goes on)."""
        problem = self.why_not(target)
        if problem is not None:
            self.refused.append({"by": by, "frm": self.state.value, "to": str(target), "reason": problem})
            self._event("transition_refused", by=by, frm=self.state.value, to=str(target), reason=problem)
            return False
        self.go(target, by=by)
        return True

    def can_retry(self, state: State) -> bool:
        """Is another try of ``state`` (after an ERROR) within the bound?"""
        return self.retries.get(state, 0) <= self.max_retries

    def _event(self, kind: str, **fields: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, **fields)


def legal_path(pairs: Iterable[tuple[str, str]]) -> bool:
    """Is a recorded sequence of (from, to) transitions legal, contiguous, from INIT to a terminal state?"""
    seq = [(_as_state(a), _as_state(b)) for a, b in pairs]
    if not seq or seq[0][0] is not S.INIT or seq[-1][1] not in TERMINAL:
        return False
    failed: State | None = None
    for i, (a, b) in enumerate(seq):
        if i and seq[i - 1][1] is not a:
            return False
        if b not in TRANSITIONS[a]:
            return False
        if b is S.ERROR:
            failed = a
        if a is S.ERROR and b not in _ENDINGS and b is not failed:
            return False
    return True


# ------------------------------------------------------------------------------------------------------ budgets
class BudgetExceeded(RuntimeError):  # noqa: N818 - reads as an event
    """A budget ran out; the run stops cleanly with a partial report."""

    def __init__(self, which: str, message: str) -> None:
        super().__init__(message)
        self.which = which


@dataclass(frozen=True)
class Budget:
    max_llm_calls: int = 60
    max_llm_tokens: int = 300_000
    max_wall_seconds: float = 1800.0


class BudgetTracker:
    """Counts LLM requests and tokens and watches the clock; raises BudgetExceeded at a limit."""

    def __init__(self, budget: Budget, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self.clock = clock
        self.start = clock()
        self.calls = 0
        self.tokens = 0

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start

    def check(self) -> None:
        b = self.budget
        if self.elapsed > b.max_wall_seconds:
            raise BudgetExceeded("wall_time", f"wall-time budget of {b.max_wall_seconds:g}s exhausted "
                                              f"({self.elapsed:.1f}s)")
        if self.tokens >= b.max_llm_tokens > 0 or (b.max_llm_tokens == 0 and self.tokens > 0):
            raise BudgetExceeded("llm_tokens", f"LLM token budget of {b.max_llm_tokens} exhausted ({self.tokens} "
                                               "tokens used)")

    def before_llm_call(self) -> None:
        self.check()
        if self.calls >= self.budget.max_llm_calls:
            raise BudgetExceeded("llm_calls", f"LLM call budget of {self.budget.max_llm_calls} exhausted")
        self.calls += 1

    def after_llm_call(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.tokens += int(prompt_tokens) + int(completion_tokens)
        if self.tokens > self.budget.max_llm_tokens:
            raise BudgetExceeded("llm_tokens", f"LLM token budget of {self.budget.max_llm_tokens} exhausted "
                                               f"({self.tokens} tokens used)")

    def snapshot(self) -> dict[str, Any]:
        return {"llm_calls": self.calls, "llm_tokens": self.tokens, "seconds": round(self.elapsed, 2),
                "limits": {"llm_calls": self.budget.max_llm_calls, "llm_tokens": self.budget.max_llm_tokens,
                           "wall_seconds": self.budget.max_wall_seconds}}


# -------------------------------------------------------------------------------------------------------- trace
_KEY_PATTERN = re.compile(r"\b(sk-[A-Za-z0-9_\-]{8,}|Bearer\s+[A-Za-z0-9_\-.]{8,})")


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _KEY_PATTERN.sub("***", text)


class Trace:
    """``trace.jsonl``: one JSON object per line (time, seconds since start, kind, fields); secrets redacted."""

    FILE = "trace.jsonl"

    def __init__(self, run: RunFolder, secrets: Iterable[str] = (), echo: Callable[[dict[str, Any]], None] | None
                 = None) -> None:
        self.run = run
        self.secrets = [s for s in secrets if s]
        self.start = time.monotonic()
        self.echo = echo
        self.counts: dict[str, int] = {}

    def event(self, kind: str, **fields: Any) -> None:
        record = {"t": _dt.datetime.now().isoformat(timespec="milliseconds"),
                  "elapsed": round(time.monotonic() - self.start, 3), "kind": kind, **fields}
        line = redact(json.dumps(record, default=str), self.secrets)
        clean = json.loads(line)
        self.run.append_jsonl(self.FILE, clean)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.echo is not None:
            self.echo(clean)

    def read(self) -> list[dict[str, Any]]:
        path = self.run.path_for(self.FILE)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
