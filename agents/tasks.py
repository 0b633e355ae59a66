"""The task text each agent gets in each state (the system prompt is the role's; this is the user turn).

Usage::

    planner_task(plan, model_info, error="")
    capturer_task(plan)
    analyst_task(plan, findings, tool_calling=True, draft="", feedback="")
    visualizer_task(plan, findings)
    critic_task(draft, check_feedback, findings)

Findings are shown with their claims fenced (``<data>…</data>``): a claim may carry corpus tokens. The error of a
failed try (ERROR state) is shown to the agent that retries.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from agents.plan import REFINABLE, Plan
from tools import fence
from tools.findings import Finding

__all__ = ["planner_task", "capturer_task", "analyst_task", "visualizer_task", "critic_task", "findings_block",
           "key_findings", "PREFILL"]

PREFILL = "Begin with: "


def _error(error: str) -> str:
    return f"\n\nYour previous try failed: {error}\nFix this and try again." if error else ""


def _quantities(f: Finding, limit: int = 12) -> str:
    """``'score=0.8149 (L6/N12), share=0.45 (L6/N12 mode 1)'``: each number with what it is of."""
    return ", ".join(f"{q.name}={q.value:.4g} ({q.where})" for q in f.quantities[:limit])


def findings_block(findings: Sequence[Finding], limit: int = 40) -> str:
    lines = []
    for f in list(findings)[:limit]:
        verdict = f" verdict: {f.verdict};" if f.verdict else ""
        lines.append(f"[{f.id}] ({f.kind}) {fence(f.claim, 400)}{verdict} numbers: {_quantities(f)}")
    if len(findings) > limit:
        lines.append(f"... and {len(findings) - limit} more (read_findings)")
    return "\n".join(lines) or "(no findings yet)"


def key_findings(findings: Sequence[Finding], limit: int = 6) -> list[Finding]:
    """The few findings a small model can write about: the polysemantic ones (best first), then the summaries."""
    poly = sorted((f for f in findings if f.kind in ("polysemantic", "neuron_verdict")),
                  key=lambda f: -f.value("score", default=0.0))
    rest = [f for f in findings if f.kind in ("polysemantic_summary", "top_neurons", "layer_summary")]
    return (poly[:3] + rest)[:limit]


def _plan_json(plan: Plan) -> str:
    keep = ("intent", "model", "layers", "neurons", "corpus", "max_tokens", "max_neurons", "top_n", "analyses")
    return json.dumps({k: v for k, v in plan.model_dump().items() if k in keep})


def planner_task(plan: Plan, model_info: dict[str, Any], error: str = "") -> str:
    return (f"User request: {fence(plan.request, 600)}\n"
            f"Draft plan (parsed from the request): {_plan_json(plan)}\n"
            f"Model facts: {json.dumps(model_info)}\n"
            f"Fields you may change: {', '.join(REFINABLE)}. Layers must lie in 0-{model_info.get('n_layers', 1) - 1}. "
            "Reply with one JSON object of changes ({} keeps the draft), then 'NEXT: CAPTURE'." + _error(error))


def capturer_task(plan: Plan, error: str = "") -> str:
    args = {"layers": plan.layers, "corpus": plan.corpus, "max_tokens": plan.max_tokens,
            "batch_size": plan.batch_size}
    return (f"Plan: {_plan_json(plan)}\nCall profile_corpus with {json.dumps(args)}. max_tokens may not exceed "
            f"{plan.max_tokens}." + _error(error))


def analyst_task(plan: Plan, findings: Sequence[Finding], *, tool_calling: bool, draft: str = "",
                 feedback: str = "", error: str = "", prefill: str = "", summary: str = "") -> str:
    """``summary``: for a prose-only model, the deterministic narrative it may add a sentence or two to."""
    if tool_calling:
        steps = [f"neuron_stats(layer={layer}) and detect_polysemantic(layer={layer}, max_neurons="
                 f"{plan.max_neurons}, top_n={plan.top_n}" + (
                     f", neurons={[n for (lay, n) in plan.neuron_pairs() if lay == layer]}"
                     if any(lay == layer for lay, _ in plan.neuron_pairs()) else "") + ")"
                 for layer in plan.layers]
        head = (f"Plan: {_plan_json(plan)}\nRun " + "; ".join(steps) + ". Then logit_effects for the top "
                "polysemantic neurons and describe_neuron for the strongest one, and write the narrative.")
        if draft or feedback:
            head = (f"Plan: {_plan_json(plan)}\nThe analyses are done. Findings so far:\n{findings_block(findings)}\n"
                    "Revise your narrative.")
    elif summary:
        head = (f"Findings of an investigation of {plan.model} (every number you may use is here):\n"
                f"{findings_block(key_findings(findings))}\n\nThe report's summary, written from these findings:\n"
                f"{fence(summary, 3000)}\n\nAdd one or two sentences to it: what the strongest neuron's modes have "
                "in common or how they differ. Do not repeat the summary. A sentence that states a number names its "
                "neuron (like L6/N12) or cites its finding (like [F003]), and the number is that neuron's.")
    else:
        head = (f"Findings of an investigation of {plan.model} (every number you may use is here):\n"
                f"{findings_block(key_findings(findings))}\n\nWrite a short paragraph (three sentences) for the "
                "report: what the strongest polysemantic neuron responds to and what else stands out. Keep every "
                "number and neuron id exactly as written, cite finding ids like [F003].")
    if draft:
        head += f"\n\nYour previous draft:\n{fence(draft, 3000)}"
    if feedback:
        head += f"\n\nThe Critic's check found problems; rewrite the draft without them:\n{feedback}"
    tail = _error(error)
    if prefill and not tool_calling:
        tail += f"\n{PREFILL}{prefill}"
    return head + tail


def visualizer_task(plan: Plan, findings: Sequence[Finding], error: str = "") -> str:
    poly = [f.subject for f in findings if f.kind == "polysemantic" and f.subject]
    logit = any(f.kind == "logit_effects" for f in findings)
    return (f"Plan: {_plan_json(plan)}\nPolysemantic neurons (best first): {', '.join(poly[:10]) or 'none'}\n"
            f"Logit effects computed: {'yes' if logit else 'no'}\nMake the figures and the dashboard." + _error(error))


def critic_task(draft: str, check_feedback: str, findings: Sequence[Finding], error: str = "", prefill: str = "",
                brief: bool = False) -> str:
    """``brief``: without the findings list (for small prose-only models, which only comment on the check)."""
    listing = "" if brief else f"\n\nFindings:\n{findings_block(findings, limit=25)}"
    text = (f"The Analyst's draft:\n{fence(draft, 4000)}\n\nAutomatic check against findings.json:\n"
            f"{check_feedback}{listing}\n\nWrite your verdict.")
    text += _error(error)
    if prefill:
        text += f"\n{PREFILL}{prefill}"
    return text
