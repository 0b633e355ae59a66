"""Settings, backend choice and the guard around every LLM request (against a fake server on loopback)."""

from __future__ import annotations

import asyncio
import time

import pytest
from autogen_core.models import UserMessage

from agents.clients import Choice, GuardedClient, LLMUnavailable, choose_backend, make_client
from agents.settings import WorkbenchSettings
from tests.agents.fake_openai import FakeOpenAI, Reply

ENV = ("OPENAI_API_KEY", "NW_OPENAI_API_KEY", "NW_LLM", "NW_LLM_BASE_URL", "NW_LLM_MODEL", "NW_LLM_API_KEY")


@pytest.fixture
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_settings_from_environment_and_env_file(clean_env, tmp_path):
    clean_env.setenv("OPENAI_API_KEY", "sk-from-env-123456789")
    clean_env.setenv("NW_MAX_LLM_CALLS", "7")
    env_file = tmp_path / ".env"
    env_file.write_text("NW_LLM_MODEL=llama3.1\nNW_MAX_REVISIONS=1\n")
    s = WorkbenchSettings(_env_file=env_file)
    assert s.openai_api_key.get_secret_value() == "sk-from-env-123456789"
    assert (s.max_llm_calls, s.llm_model, s.max_revisions) == (7, "llama3.1", 1)
    assert "sk-from-env" not in repr(s) and "sk-from-env" not in s.model_dump_json()
    assert s.secrets() == ["sk-from-env-123456789"]


def test_auto_choice_order(clean_env):
    s = WorkbenchSettings(_env_file=None)
    local = choose_backend(s)
    assert local.backend == "local" and "auto" in local.reason and not local.tool_calling
    s = WorkbenchSettings(_env_file=None, llm_base_url="http://127.0.0.1:9/v1", llm_model="m")
    assert choose_backend(s).backend == "openai-compatible"
    s = WorkbenchSettings(_env_file=None, openai_api_key="sk-x", llm_base_url="http://127.0.0.1:9/v1", llm_model="m")
    assert choose_backend(s) == Choice("openai", "auto: OPENAI_API_KEY is set", True)
    s = WorkbenchSettings(_env_file=None, local_model="/no/such/model")
    assert choose_backend(s).backend == "scripted"
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        choose_backend(WorkbenchSettings(_env_file=None), "openai")
    with pytest.raises(ValueError, match="NW_LLM_BASE_URL"):
        choose_backend(WorkbenchSettings(_env_file=None), "openai-compatible")
    assert make_client(Choice("scripted", "", False), WorkbenchSettings(_env_file=None)) is None


def _client(server, settings=None):
    s = settings or WorkbenchSettings(_env_file=None, llm_base_url=server.url, llm_model="fake",
                                      llm_api_key="sk-test-key-0123456789")
    return make_client(choose_backend(s, "openai-compatible"), s)


def _ask(guarded):
    return asyncio.run(guarded.create([UserMessage(content="hi", source="user")]))


def test_guard_retries_429_and_500_with_backoff_then_succeeds():
    statuses = [429, 500, 503]

    def policy(body, server):
        n = len(server.requests)
        return Reply(status=statuses[n - 1], retry_after="0") if n <= len(statuses) else Reply(content="hello")

    events = []
    with FakeOpenAI(policy) as server:
        guarded = GuardedClient(_client(server), max_retries=3, base_delay=0.05, max_delay=1.0,
                                on_event=lambda kind, **f: events.append((kind, f)))
        start = time.perf_counter()
        result = _ask(guarded)
        elapsed = time.perf_counter() - start
        assert result.content == "hello" and len(server.requests) == 4
        headers = {k.lower(): v for k, v in server.headers[0].items()}
        assert headers["authorization"] == "Bearer sk-test-key-0123456789"
    retries = [f for k, f in events if k == "llm_retry"]
    assert [r["delay"] for r in retries] == [0.05, 0.1, 0.2]  # exponential backoff
    assert elapsed >= 0.35
    assert [k for k, _ in events][-1] == "llm_call"


def test_guard_gives_up_after_bounded_retries():
    with FakeOpenAI(lambda body, server: Reply(status=500)) as server:
        guarded = GuardedClient(_client(server), max_retries=2, base_delay=0.01)
        with pytest.raises(LLMUnavailable, match="3 times"):
            _ask(guarded)
        assert len(server.requests) == 3


def test_guard_does_not_retry_a_bad_key():
    with FakeOpenAI(lambda body, server: Reply(status=401)) as server:
        guarded = GuardedClient(_client(server), max_retries=5, base_delay=0.01)
        with pytest.raises(LLMUnavailable, match="401"):
            _ask(guarded)
        assert len(server.requests) == 1


def test_guard_lets_a_budget_stop_propagate():
    class StopError(Exception):
        pass

    calls = []

    def before():
        calls.append(1)
        if len(calls) > 1:
            raise StopError("budget")

    tokens = []
    with FakeOpenAI(lambda body, server: Reply(content="ok", tokens=(11, 4))) as server:
        guarded = GuardedClient(_client(server), before_call=before, after_call=lambda p, c: tokens.append(p + c))
        _ask(guarded)
        with pytest.raises(StopError):
            _ask(guarded)
        assert len(server.requests) == 1 and tokens == [15]


def test_env_example_documents_every_setting():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    for name in WorkbenchSettings.model_fields:
        env = "OPENAI_API_KEY" if name == "openai_api_key" else f"NW_{name.upper()}"
        assert env in text, env
