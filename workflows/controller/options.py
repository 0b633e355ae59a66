"""What a run is asked to do and what it returns: options with their allowed ranges, the result and the exit codes.

Public through ``workflows.investigation`` (import them from there)::

    options = RunOptions(request="investigate layer 6 of smollm2-135m", max_tokens=20_000)
    RunOptions(request="x", top_n=0)              # ValidationError; option_error(exc) -> '--top-n: ... (got 0)'
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["RequestOptions", "RunOptions", "option_error", "RunResult", "Status", "EXIT_OK", "EXIT_FAILED",
           "EXIT_REJECTED", "EXIT_STOPPED", "EXIT_INTERRUPTED"]

EXIT_OK, EXIT_FAILED, EXIT_REJECTED, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
Status = Literal["done", "failed", "stopped"]


class RequestOptions(BaseModel):
    """A request and the options that shape it, with their allowed ranges: one home for every entry point (the
    ``run`` flags, a campaign's entries, the chat). 0 and negative sizes are refused, never read as "unset"."""

    model_config = ConfigDict(extra="forbid")

    request: str = Field(min_length=1, max_length=4000)
    model: str | None = Field(default=None, min_length=1)
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1)
    corpus: str | None = Field(default=None, min_length=1)
    max_tokens: int | None = Field(default=None, ge=64, le=1_000_000_000, description="corpus tokens to profile")
    max_neurons: int | None = Field(default=None, ge=1, le=1_000_000, description="neurons per layer analysed")
    top_n: int | None = Field(default=None, ge=1, le=50, description="neurons reported in detail")
    llm: str | None = None
    device: str | None = None
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    embedder: Literal["auto", "subject", "minilm", "hidden"] | None = None


class RunOptions(RequestOptions):
    """What the CLI passes: the request and the explicit flags (which win over the parser and the Planner)."""

    out: str | None = Field(default=None, min_length=1)
    resume: str | None = Field(default=None, min_length=1)


def option_error(exc: ValidationError) -> str:
    """A validation error of :class:`RunOptions` as the user typed it: ``--max-tokens: must be >= 64 (got 0)``."""
    first = exc.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else "option"
    flag = name if name == "request" else "--" + name.replace("_", "-")
    got = f" (got {first['input']!r})" if "input" in first and not isinstance(first["input"], dict) else ""
    return f"{flag}: {first['msg']}{got}"


class RunResult(BaseModel):
    status: Status
    exit_code: int
    reason: str
    run_dir: str | None = None
    report: str | None = None
    backend: str = ""
    states: list[str] = []
