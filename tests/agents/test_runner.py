"""The AutoGen adapter's tool wrapper and helpers: plan limits, structured errors, proposals, JSON replies."""

from __future__ import annotations

import asyncio
import json

import pytest
from autogen_core import CancellationToken

from agents.roles import ROLES, extract_json, parse_proposal, role_for_state, strip_proposal
from agents.runner import WorkbenchTool, run_in_thread
from neuron_core.store import RunFolder
from tools import TOOLS, ToolContext


def test_tool_wrapper_enforces_plan_limits_and_returns_structured_errors(tmp_path):
    calls = []
    ctx = ToolContext(RunFolder(tmp_path / "run"), on_call=calls.append)
    outcomes = []
    tool = WorkbenchTool(TOOLS["profile_corpus"], ctx, "capturer", outcomes, limits={"max_tokens": 5000})
    text = asyncio.run(tool.run_json({"layers": [1], "max_tokens": 900000}, CancellationToken()))
    error = json.loads(text)["error"]
    assert error["kind"] == "PlanLimit" and "at most 5000" in error["message"]
    assert not calls  # refused before the tool ran
    text = asyncio.run(tool.run_json({"layers": "six"}, CancellationToken()))  # invalid: reported, not raised
    assert json.loads(text)["error"]["kind"] == "ValidationError"
    assert [o.ok for o in outcomes] == [False, False] and calls[0].caller == "capturer"
    assert tool.schema["parameters"]["properties"]["max_tokens"]["maximum"] == 5_000_000


def test_run_in_thread_uses_one_worker_and_passes_errors():
    import threading

    async def go():
        a = await run_in_thread(lambda: threading.current_thread().name)
        b = await run_in_thread(lambda: threading.current_thread().name)
        with pytest.raises(ZeroDivisionError):
            await run_in_thread(lambda: 1 / 0)
        return a, b

    a, b = asyncio.run(go())
    assert a == b == "model-worker"


def test_roles_proposals_and_json():
    assert role_for_state("CRITIQUE").name == "critic"
    assert set(ROLES["visualizer"].tools) == {"make_figure", "make_dashboard", "read_findings"}
    assert "profile_corpus" not in ROLES["analyst"].tools  # each agent has only its own tools
    assert parse_proposal("ok\nNEXT: visualize\nNEXT: REPORT") == "REPORT" and parse_proposal("none") is None
    assert strip_proposal("Done.\nNEXT: ANALYZE") == "Done."
    assert extract_json('Sure:\n```json\n{"layers": [4]}\n```\nNEXT: CAPTURE') == {"layers": [4]}
    assert extract_json('changes {"top_n": 3} then') == {"top_n": 3}
    with pytest.raises(ValueError):
        extract_json("no json here {oops")
