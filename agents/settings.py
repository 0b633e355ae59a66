"""Settings of the agent layer and the controller, from the environment or ``.env`` (see ``.env.example``).

Usage::

    settings = WorkbenchSettings()                       # NW_* variables, OPENAI_API_KEY, and .env
    settings = WorkbenchSettings(llm="scripted", max_llm_calls=10)
    settings.secrets()                                   # the values that must never reach a log or a trace

Secrets are ``SecretStr``: printing or dumping the settings shows ``**********``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["WorkbenchSettings", "Backend", "BACKENDS"]

Backend = Literal["auto", "openai", "openai-compatible", "local", "scripted"]
BACKENDS: tuple[str, ...] = ("auto", "openai", "openai-compatible", "local", "scripted")


class WorkbenchSettings(BaseSettings):
    """Every setting of an investigation run that does not come from the request itself."""

    model_config = SettingsConfigDict(env_prefix="NW_", env_file=".env", env_file_encoding="utf-8", extra="ignore",
                                      populate_by_name=True)

    # -- which LLM ----------------------------------------------------------------------------------------------
    llm: Backend = Field(default="auto", description="auto, openai, openai-compatible, local or scripted")
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "NW_OPENAI_API_KEY", "openai_api_key"),
        description="key of the OpenAI API (backend openai)")
    openai_model: str = Field(default="gpt-4o-mini", description="OpenAI model name (backend openai)")
    openai_base_url: str | None = Field(default=None, description="override the OpenAI endpoint (proxies)")
    llm_base_url: str | None = Field(default=None, description="base URL of an OpenAI-compatible server, e.g. "
                                     "http://localhost:11434/v1 (Ollama) or http://localhost:8000/v1 (vLLM)")
    llm_model: str | None = Field(default=None, description="model name on the OpenAI-compatible server")
    llm_api_key: SecretStr | None = Field(default=None, description="key for the OpenAI-compatible server, if any")
    llm_function_calling: bool = Field(default=True, description="the compatible server's model can call tools; "
                                       "False: the controller runs the tools and the model writes prose")
    local_model: str = Field(default="smollm2-135m", description="model of the local backend (in-process)")
    local_max_new_tokens: int = Field(default=120, ge=8, le=2048, description="tokens per local generation")
    local_max_prompt_tokens: int = Field(default=1024, ge=128, le=8192, description="prompt kept (last tokens)")

    # -- robustness ---------------------------------------------------------------------------------------------
    llm_timeout: float = Field(default=120.0, gt=0, description="seconds per LLM request")
    llm_max_reply_tokens: int = Field(default=1024, ge=16, le=32_768, description="most tokens an LLM reply may "
                                      "have (openai, openai-compatible; the local backend has its own cap)")
    llm_max_retries: int = Field(default=3, ge=0, le=10, description="retries of a failed LLM request (429, 5xx, "
                                 "connection) before the run stops with a partial report")
    llm_retry_base_delay: float = Field(default=1.0, ge=0, description="first backoff delay in seconds (doubles)")
    llm_retry_max_delay: float = Field(default=20.0, ge=0, description="longest backoff delay in seconds")
    max_tool_iterations: int = Field(default=8, ge=1, le=50, description="tool rounds per agent turn")

    # -- budgets ------------------------------------------------------------------------------------------------
    max_llm_calls: int = Field(default=60, ge=0, description="LLM requests per run")
    max_llm_tokens: int = Field(default=300_000, ge=0, description="prompt + completion tokens per run")
    max_wall_seconds: float = Field(default=1800.0, gt=0, description="wall-clock seconds per run")
    max_revisions: int = Field(default=2, ge=0, le=10, description="REVISE rounds after the Critic's check")
    max_state_retries: int = Field(default=2, ge=0, le=10, description="retries of a state after an ERROR")

    # -- investigation defaults ---------------------------------------------------------------------------------
    runs_dir: str = Field(default="runs", description="parent folder of the run folders")
    max_tokens: int = Field(default=20_000, ge=64, description="corpus tokens profiled when the request says not")
    max_neurons: int = Field(default=64, ge=1, description="neurons per layer the detector analyses in full (the "
                             "most promising of a quick screen of every neuron)")
    top_n: int = Field(default=5, ge=1, le=50, description="polysemantic neurons reported in detail")
    detector_n_null: int | None = Field(default=None, ge=10, le=5000, description="random context sets for the "
                                        "detector's p-value (None: the library's default)")
    detector_ablation: bool = Field(default=True, description="measure each mode's loss change under ablation")
    embedder: Literal["auto", "subject", "minilm", "hidden"] = Field(
        default="auto", description="context embedder of the detector (auto: the subject model's own reading)")
    device: str = Field(default="cpu", description="cpu, cuda, cuda:N or auto")
    torch_threads: int | None = Field(default=None, ge=1, le=256, description="torch intra-op threads for model "
                                      "work; None: 1 on machines with at most 2 cores, else torch's default")

    def secrets(self) -> list[str]:
        """Secret values (non-empty), to be redacted from anything written."""
        out = []
        for secret in (self.openai_api_key, self.llm_api_key):
            if secret is not None and secret.get_secret_value():
                out.append(secret.get_secret_value())
        return out
