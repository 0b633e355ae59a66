"""The agent layer: five agents (Planner, Capturer, Analyst, Visualizer, Critic), their prompts and LLM clients.

Usage::

    from agents import ROLES, WorkbenchSettings, choose_backend, make_client, GuardedClient, AutoGenRunner

    settings = WorkbenchSettings()                    # environment / .env
    choice = choose_backend(settings)                 # openai, openai-compatible, local or scripted (and why)
    runner = ScriptedRunner() if not choice.uses_llm else AutoGenRunner(GuardedClient(make_client(choice, settings)),
                                                                        ctx, name=choice.backend,
                                                                        tool_calling=choice.tool_calling)
    turn = await runner.turn(ROLES["analyst"], task, facts)

Agents are AutoGen ``AssistantAgent``s composed per turn (see ``agents.runner``); their only door to data is the
``tools`` package. The request parser (``agents.plan``) understands requests without any LLM.
"""

from agents.clients import Choice, GuardedClient, LLMUnavailable, choose_backend, local_available, make_client
from agents.plan import Plan, PlanError, parse_request, refine_plan, validate_plan
from agents.roles import DATA_RULE, ROLES, Role, extract_json, parse_proposal, role_for_state, strip_proposal
from agents.runner import AgentRunner, AgentTurn, AutoGenRunner, TurnFacts, WorkbenchTool, run_in_thread
from agents.scripted import ScriptedRunner, scripted_narrative, scripted_verdict
from agents.settings import BACKENDS, WorkbenchSettings

__all__ = ["BACKENDS", "DATA_RULE", "ROLES", "AgentRunner", "AgentTurn", "AutoGenRunner", "Choice", "GuardedClient",
           "LLMUnavailable", "Plan", "PlanError", "Role", "ScriptedRunner", "TurnFacts", "WorkbenchSettings",
           "WorkbenchTool", "choose_backend", "extract_json", "local_available", "make_client", "parse_proposal",
           "parse_request", "refine_plan", "role_for_state", "run_in_thread", "scripted_narrative",
           "scripted_verdict", "strip_proposal", "validate_plan"]
