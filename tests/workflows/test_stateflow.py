"""The framework-agnostic state machine: legal transitions, refusals, bounds, budgets, the trace."""

from __future__ import annotations

import json

import pytest

from neuron_core.store import RunFolder
from workflows.stateflow import (
    TERMINAL,
    TRANSITIONS,
    Budget,
    BudgetExceeded,
    BudgetTracker,
    IllegalTransition,
    State,
    StateMachine,
    Trace,
    legal_path,
    redact,
)

S = State


def test_happy_path_is_legal_and_recorded():
    events = []
    m = StateMachine(on_event=lambda kind, **f: events.append((kind, f)))
    for s in (S.PLAN, S.CAPTURE, S.ANALYZE, S.VISUALIZE, S.CRITIQUE, S.REPORT, S.DONE):
        m.go(s)
    assert m.done and m.state is S.DONE
    assert legal_path([(a.value, b.value) for a, b in m.history])
    assert [f["to"] for k, f in events if k == "transition"][-1] == "DONE"


@pytest.mark.parametrize("frm,to", [(S.PLAN, S.ANALYZE), (S.CAPTURE, S.REPORT), (S.ANALYZE, S.DONE),
                                    (S.REVISE, S.CRITIQUE), (S.INIT, S.CAPTURE)])
def test_illegal_proposals_are_refused_and_recorded(frm, to):
    events = []
    m = StateMachine(on_event=lambda kind, **f: events.append((kind, f)))
    m.state = frm
    assert m.propose(to, by="analyst") is False
    assert m.state is frm  # nothing moved
    assert m.refused and m.refused[-1]["by"] == "analyst" and m.refused[-1]["to"] == to.value
    assert events[-1][0] == "transition_refused"
    with pytest.raises(IllegalTransition):
        m.go(to)


def test_unknown_state_is_refused():
    m = StateMachine()
    assert m.propose("CELEBRATE", by="critic") is False
    assert "not a state" in m.refused[-1]["reason"]


def test_revise_is_bounded():
    m = StateMachine(max_revisions=2)
    for s in (S.PLAN, S.CAPTURE, S.ANALYZE, S.VISUALIZE, S.CRITIQUE):
        m.go(s)
    for _ in range(2):
        assert m.propose(S.REVISE, by="critic")
        for s in (S.ANALYZE, S.VISUALIZE, S.CRITIQUE):
            m.go(s)
    assert m.propose(S.REVISE, by="critic") is False
    assert "REVISE bound" in m.refused[-1]["reason"]
    m.go(S.REPORT)
    m.go(S.DONE)
    assert m.revisions == 2


def test_error_retries_only_the_failed_state_and_is_bounded():
    m = StateMachine(max_retries=2)
    m.go(S.PLAN)
    m.go(S.CAPTURE)
    m.go(S.ERROR, reason="boom")
    assert m.why_not(S.ANALYZE) is not None  # not the failed state
    assert m.why_not(S.PLAN) is not None
    m.go(S.CAPTURE)
    m.go(S.ERROR)
    m.go(S.CAPTURE)  # second retry: still within the bound
    m.go(S.ERROR)
    assert "retry bound" in (m.why_not(S.CAPTURE) or "")
    m.go(S.FAILED)
    assert m.done
    assert legal_path([(a.value, b.value) for a, b in m.history])


def test_every_non_terminal_state_can_stop_or_fail():
    for state, targets in TRANSITIONS.items():
        if state in TERMINAL:
            assert not targets
        else:
            assert {S.FAILED, S.STOPPED} <= targets


def test_legal_path_rejects_gaps_and_bad_retries():
    assert not legal_path([("INIT", "PLAN"), ("CAPTURE", "ANALYZE")])
    assert not legal_path([("INIT", "PLAN"), ("PLAN", "ERROR"), ("ERROR", "CAPTURE"), ("CAPTURE", "FAILED")])
    assert not legal_path([("INIT", "PLAN")])  # does not end
    assert legal_path([("INIT", "PLAN"), ("PLAN", "STOPPED")])


def test_budget_tracker_limits():
    clock = [0.0]
    b = BudgetTracker(Budget(max_llm_calls=2, max_llm_tokens=100, max_wall_seconds=10), clock=lambda: clock[0])
    b.before_llm_call()
    b.after_llm_call(30, 10)
    b.before_llm_call()
    with pytest.raises(BudgetExceeded) as calls:
        b.before_llm_call()
    assert calls.value.which == "llm_calls"
    with pytest.raises(BudgetExceeded) as tokens:
        b.after_llm_call(50, 20)
    assert tokens.value.which == "llm_tokens"
    b2 = BudgetTracker(Budget(max_wall_seconds=5), clock=lambda: clock[0])
    clock[0] = 6.0
    with pytest.raises(BudgetExceeded) as wall:
        b2.check()
    assert wall.value.which == "wall_time"
    assert b.snapshot()["llm_calls"] == 2


def test_trace_redacts_secrets(tmp_path):
    run = RunFolder(tmp_path / "run")
    trace = Trace(run, secrets=["hunter2-very-secret"])
    trace.event("llm_call", text="the key is hunter2-very-secret", header="Bearer abcdefghijklmnop",
                other="sk-proj-ABCDEFGHIJKLMN")
    raw = (tmp_path / "run" / "trace.jsonl").read_text()
    assert "hunter2" not in raw and "abcdefghijklmnop" not in raw and "ABCDEFGHIJKLMN" not in raw
    record = json.loads(raw)
    assert record["kind"] == "llm_call" and "***" in record["text"]
    assert redact("x sk-abcdefghijkl y", []) == "x *** y"
