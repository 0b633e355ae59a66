"""An in-process LLM: the bundled SmolLM2-135M-Instruct behind autogen's ChatCompletionClient interface.

Usage::

    client = LocalChatCompletionClient("smollm2-135m", max_new_tokens=120)
    result = await client.create([SystemMessage(content="Be brief."), UserMessage(content="Hi", source="user")])
    result.content, result.usage              # text, RequestUsage(prompt_tokens=..., completion_tokens=...)

It cannot call tools (``model_info["function_calling"]`` is False): the controller runs each state's tools and the
model only writes prose. Generation is greedy (reproducible), runs on the model worker thread so the event loop stays
free, and keeps only the last ``max_prompt_tokens`` of the prompt. A last line ``Begin with: TEXT`` in the last user
message is used as the start of the answer (a prefill): small models then keep to the facts they were given.
"""

from __future__ import annotations

import re
import threading
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Literal

import torch
from autogen_core import CancellationToken
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    ModelInfo,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel

from agents.worker import run_in_thread
from neuron_core import load_model

__all__ = ["LocalChatCompletionClient", "PREFILL_LINE"]

PREFILL_LINE = "Begin with: "
_PREFILL = re.compile(r"^Begin with: (.+)\s*\Z", re.M)

_INFO: ModelInfo = {"vision": False, "function_calling": False, "json_output": False, "family": "unknown",
                    "structured_output": False, "multiple_system_messages": False}


def _text(message: LLMMessage) -> tuple[str, str]:
    """(role, content) of one autogen message for a chat template."""
    if isinstance(message, SystemMessage):
        return "system", message.content
    if isinstance(message, UserMessage):
        content = message.content if isinstance(message.content, str) else " ".join(
            c for c in message.content if isinstance(c, str))
        return "user", content
    if isinstance(message, AssistantMessage):
        content = message.content if isinstance(message.content, str) else " ".join(
            f"[called {c.name}]" for c in message.content)
        return "assistant", content
    if isinstance(message, FunctionExecutionResultMessage):
        return "user", "\n".join(f"Result of {r.name}: {r.content}" for r in message.content)
    return "user", str(getattr(message, "content", ""))


class LocalChatCompletionClient(ChatCompletionClient):
    """SmolLM2 (or any local causal LM with a chat template) through transformers ``generate``."""

    def __init__(self, model: str = "smollm2-135m", *, max_new_tokens: int = 120, max_prompt_tokens: int = 1024,
                 device: str = "cpu", loaded: Any = None, num_threads: int | None = 1) -> None:
        self.model_name = model
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.device = device
        self._loaded = loaded  # a neuron_core LoadedModel, or None to load on first use
        # Token-by-token decoding of a small model is thousands of tiny ops: on a shared CPU each intra-op barrier
        # waits for a descheduled worker, and one thread was measured 15x faster than two (2.6 s vs 38 s).
        self.num_threads = num_threads
        self._lock = threading.Lock()
        self._total = RequestUsage(prompt_tokens=0, completion_tokens=0)
        self._last = RequestUsage(prompt_tokens=0, completion_tokens=0)

    def _model(self) -> Any:
        if self._loaded is None:
            self._loaded = load_model(self.model_name, device=self.device)
        return self._loaded

    def _chat(self, messages: Sequence[LLMMessage]) -> list[dict[str, str]]:
        chat: list[dict[str, str]] = []
        for message in messages:
            role, content = _text(message)
            if role == "system" and chat and chat[0]["role"] == "system":
                chat[0]["content"] += "\n\n" + content  # one system message: the template's expectation
            elif role == "system" and chat:
                chat.insert(0, {"role": "system", "content": content})
            elif chat and chat[-1]["role"] == role and role != "system":
                chat[-1]["content"] += "\n\n" + content
            else:
                chat.append({"role": role, "content": content})
        return chat

    def _encode(self, messages: Sequence[LLMMessage]) -> tuple[Any, str]:
        """(prompt ids [1, T], prefill): a last line ``Begin with: TEXT`` in the last message starts the answer."""
        lm = self._model()
        chat = self._chat(messages)
        prefill = ""
        if chat and chat[-1]["role"] == "user":
            m = _PREFILL.search(chat[-1]["content"])
            if m:
                prefill = m.group(1).strip()
        text = lm.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        ids = lm.tokenizer(text + prefill, return_tensors="pt", add_special_tokens=False)["input_ids"]
        return ids[:, -self.max_prompt_tokens:], prefill  # [1, T]: the end of the conversation matters most

    def _generate(self, messages: Sequence[LLMMessage]) -> tuple[str, int, int]:
        lm = self._model()
        with self._lock:
            old_threads = torch.get_num_threads()
            if self.num_threads is not None and lm.device.type == "cpu":
                torch.set_num_threads(self.num_threads)
            try:
                return self._generate_locked(lm, messages)
            finally:
                torch.set_num_threads(old_threads)

    def _generate_locked(self, lm: Any, messages: Sequence[LLMMessage]) -> tuple[str, int, int]:
        ids, prefill = self._encode(messages)
        ids = ids.to(lm.device)  # [1, T]
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.tokenizer.eos_token_id
        with torch.inference_mode():
            out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_new_tokens,
                                    do_sample=False, pad_token_id=pad)
        new = out[0, ids.shape[1]:]  # [n_new]
        text = (prefill + lm.tokenizer.decode(new, skip_special_tokens=True)).strip()
        return text, int(ids.shape[1]), int(new.shape[0])

    async def create(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = [],  # noqa: B006
                     tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
                     json_output: bool | type[BaseModel] | None = None, extra_create_args: Mapping[str, Any] = {},  # noqa: B006
                     cancellation_token: CancellationToken | None = None) -> CreateResult:
        if tools:
            raise ValueError("the local model cannot call tools; the controller runs them (prose-only mode)")
        text, n_prompt, n_new = await run_in_thread(self._generate, messages)
        usage = RequestUsage(prompt_tokens=n_prompt, completion_tokens=n_new)
        self._last = usage
        self._total = RequestUsage(prompt_tokens=self._total.prompt_tokens + n_prompt,
                                   completion_tokens=self._total.completion_tokens + n_new)
        finish: Literal["stop", "length"] = "length" if n_new >= self.max_new_tokens else "stop"
        return CreateResult(finish_reason=finish, content=text, usage=usage, cached=False)

    def create_stream(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = [],  # noqa: B006
                      tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
                      json_output: bool | type[BaseModel] | None = None, extra_create_args: Mapping[str, Any] = {},  # noqa: B006
                      cancellation_token: CancellationToken | None = None,
                      ) -> AsyncGenerator[str | CreateResult, None]:
        async def one() -> AsyncGenerator[str | CreateResult, None]:
            result = await self.create(messages, tools=tools, json_output=json_output)
            yield result.content if isinstance(result.content, str) else ""
            yield result

        return one()

    async def close(self) -> None:
        return None

    def actual_usage(self) -> RequestUsage:
        return self._last

    def total_usage(self) -> RequestUsage:
        return self._total

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:  # noqa: B006
        return int(self._encode(messages)[0].shape[1])

    def remaining_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:  # noqa: B006
        context = int(self._model().context_length or 2048)
        return max(0, context - self.count_tokens(messages) - self.max_new_tokens)

    @property
    def capabilities(self) -> Any:
        return _INFO

    @property
    def model_info(self) -> ModelInfo:
        return _INFO
