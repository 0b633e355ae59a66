"""The in-process LLM client (SmolLM2-135M-Instruct through transformers), behind autogen's interface."""

from __future__ import annotations

import asyncio

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_core.models import SystemMessage, UserMessage

from agents.local import LocalChatCompletionClient


@pytest.fixture(scope="module")
def client(smollm):
    return LocalChatCompletionClient(max_new_tokens=24, loaded=smollm)


def test_generates_greedily_with_usage_and_prefill(client):
    messages = [SystemMessage(content="You restate facts."),
                UserMessage(content="Fact: layer 6 has 3 dead neurons.\nRestate it.\nBegin with: In layer 6,",
                            source="user")]
    first = asyncio.run(client.create(messages))
    second = asyncio.run(client.create(messages))
    assert isinstance(first.content, str) and first.content.startswith("In layer 6,")
    assert first.content == second.content  # greedy: reproducible
    assert 0 < first.usage.completion_tokens <= 24 and first.usage.prompt_tokens > 10
    assert client.total_usage().completion_tokens == first.usage.completion_tokens * 2
    assert client.model_info["function_calling"] is False
    assert client.count_tokens(messages) == first.usage.prompt_tokens


def test_refuses_tools_and_works_inside_an_assistant_agent(client):
    from autogen_core.tools import FunctionTool

    def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(ValueError, match="cannot call tools"):
        asyncio.run(client.create([UserMessage(content="hi", source="user")],
                                  tools=[FunctionTool(add, description="add")]))
    agent = AssistantAgent("analyst", client, system_message="Answer in one sentence.")
    result = asyncio.run(agent.run(task="Say hello.\nBegin with: Hello"))
    assert result.messages[-1].source == "analyst" and result.messages[-1].content.startswith("Hello")
