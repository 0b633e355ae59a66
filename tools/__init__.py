"""Typed tools over neuron_core: what agents (and people) call to investigate neurons.

Usage::

    from neuron_core.store import RunFolder
    from tools import ToolContext, call_tool

    ctx = ToolContext(RunFolder.create("runs", "demo"))
    call_tool(ctx, "load_model", {"model": "smollm2-135m"})
    call_tool(ctx, "profile_corpus", {"layers": [6], "max_tokens": 20000})
    out = call_tool(ctx, "detect_polysemantic", {"layer": 6, "max_neurons": 64})
    out.result.headline, out.result.finding_ids, ctx.findings.all()

Each tool is a plain function ``fn(ctx, args) -> result`` (pydantic in and out, arguments bounded), registered in
:data:`TOOLS` by name. Results are compact summaries with artifact paths and finding ids, never tensors; corpus text
in them is fenced as ``<data>…</data>``. Tools write only inside the run folder. Nothing here imports an LLM library.
"""

from tools import ablate, figures, model, neurons, polysemantic, record  # noqa: F401 - importing registers the tools
from tools._base import (
    DATA_CLOSE,
    DATA_OPEN,
    TOOLS,
    ToolCallRecord,
    ToolContext,
    ToolError,
    ToolOutcome,
    ToolSpec,
    call_tool,
    fence,
    tool_names,
)
from tools.claims import ClaimCheck, ClaimIssue, check_claims, remove_sentences
from tools.findings import Finding, FindingsDocument, FindingStore, Label, Quantity
from tools.report import ReportInput, write_report

__all__ = ["DATA_CLOSE", "DATA_OPEN", "TOOLS", "ClaimCheck", "ClaimIssue", "Finding", "FindingStore",
           "FindingsDocument", "Label", "Quantity", "ReportInput", "ToolCallRecord", "ToolContext", "ToolError",
           "ToolOutcome", "ToolSpec", "call_tool", "check_claims", "fence", "remove_sentences", "tool_names",
           "write_report"]
