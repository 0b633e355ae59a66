"""The REVISE state: the Critic's feedback is recorded and the run goes back to ANALYZE, which revises the narrative
with it (``run.state.feedback``). The state machine bounds the number of revisions.

Usage::

    step = await handle(run)        # Step(State.ANALYZE)
"""

from __future__ import annotations

from workflows.controller.context import RunContext, Step
from workflows.stateflow import State

__all__ = ["handle"]


async def handle(run: RunContext) -> Step:
    """REVISE: back to ANALYZE."""
    run.trace.event("revise", round=run.machine.revisions, feedback=run.state.feedback[:4000])
    return Step(State.ANALYZE, agent="critic")
