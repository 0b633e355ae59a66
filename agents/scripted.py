"""The deterministic policy: no LLM, the same states and tools, prose from templates over findings.json.

Usage::

    runner = ScriptedRunner()
    turn = await runner.turn(ROLES["analyst"], task, TurnFacts(plan=plan, findings=store.all()))
    turn.text          # a narrative whose every number and neuron id comes from the findings

Reproducible: the same findings give the same text. What CI uses (``--llm scripted``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agents.roles import Role
from agents.runner import AgentTurn, TurnFacts

__all__ = ["ScriptedRunner", "scripted_narrative", "scripted_verdict", "layer_phrase", "mode_list"]


def _num(value: float, digits: int = 3) -> str:
    """A number as the checker reads it back: integers plainly, others with ``digits`` significant digits."""
    if float(value).is_integer():
        return f"{int(value)}"
    return f"{value:.{digits}g}"


def layer_phrase(layers: Sequence[int]) -> str:
    if len(layers) == 1:
        return f"layer {layers[0]}"
    return "layers " + ", ".join(str(x) for x in layers[:-1]) + f" and {layers[-1]}"


def mode_list(f: Any) -> str:
    """"'animals' (45%), 'code' (30%)" from a polysemantic finding's claim (labels as the claim quotes them)."""
    claim = f.claim
    start = claim.find("modes: ")
    text = claim[start + len("modes: "):].rstrip(".") if start >= 0 else ""
    return text


def scripted_narrative(facts: TurnFacts) -> str:
    findings = list(facts.findings)
    by_kind: dict[str, list[Any]] = {}
    for f in findings:
        by_kind.setdefault(f.kind, []).append(f)
    plan = facts.plan
    paragraphs: list[str] = []
    first: list[str] = []
    capture = [f for f in by_kind.get("run", []) if "n_tokens" in f.numbers]
    if capture:
        c = capture[-1]
        first.append(f"We profiled {_num(c.numbers['n_tokens'])} tokens from {_num(c.numbers['n_docs'])} documents "
                     f"at {layer_phrase(plan.layers)} of the model [{c.id}].")
    for s in by_kind.get("polysemantic_summary", []):
        n_poly = int(s.numbers["n_polysemantic"])
        label = s.claim.split(" in ", 1)[1].split(",", 1)[0] if " in " in s.claim else "the layer"
        verb = "is" if n_poly == 1 else "are"
        first.append(f"Of the {_num(s.numbers['n_analysed'])} most active neurons analysed in {label}, {n_poly} "
                     f"{verb} polysemantic [{s.id}].")
    poly = sorted(by_kind.get("polysemantic", []), key=lambda f: -f.numbers.get("score", 0.0))
    if poly:
        top = poly[0]
        ref = top.neurons[0]
        n = top.numbers
        first.append(f"The strongest case is {ref} (score {n['score']:.2f}, p = {_num(n['p_value'])}, "
                     f"z = {n['z_score']:.2f}), whose {int(n['n_modes'])} modes are {mode_list(top)} [{top.id}].")
    elif by_kind.get("polysemantic_summary"):
        first.append("None of the analysed neurons passed the polysemanticity test on this corpus.")
    if first:
        paragraphs.append(" ".join(first))
    second: list[str] = []
    top_n = plan.top_n if plan is not None else 5
    for f in poly[1:top_n]:
        n = f.numbers
        second.append(f"{f.neurons[0]} (score {n['score']:.2f}, p = {_num(n['p_value'])}) has "
                      f"{int(n['n_modes'])} modes: {mode_list(f)} [{f.id}].")
    for f in by_kind.get("neuron_verdict", []):
        n = f.numbers
        second.append(f"{f.neurons[0]} does not pass the test (score {n['score']:.2f}, p = {_num(n['p_value'])}) "
                      f"[{f.id}].")
    if second:
        paragraphs.append(" ".join(second))
    third: list[str] = []
    for f in by_kind.get("top_neurons", [])[:2]:
        refs = f.neurons[:3]
        parts = [f"{r} (max {_num(f.numbers[f'{r} max'])})" for r in refs if f"{r} max" in f.numbers]
        if parts:
            third.append("The most strongly activating neurons are " + ", ".join(parts) + f" [{f.id}].")
    for f in by_kind.get("layer_summary", []):
        n = f.numbers
        where = f.claim.split(":", 1)[0].replace("Layer ", "")
        third.append(f"In {where}, {int(n['n_dead'])} neurons are dead and {int(n['n_dense'])} dense, and a "
                     f"neuron is active on {n['mean_frac_active']:.1%} of tokens on average [{f.id}].")
    logit = by_kind.get("logit_effects", [])
    if logit:
        third.append(f"The tokens the strongest neurons promote and suppress are listed below "
                     f"[{', '.join(f.id for f in logit[:4])}].")
    if third:
        paragraphs.append(" ".join(third))
    return "\n\n".join(paragraphs) or "No analysis produced findings."


def scripted_verdict(facts: TurnFacts) -> tuple[str, str]:
    """(verdict, proposal) from the automatic check."""
    check = facts.check
    if check is None:
        return "There was no draft to check.", "REPORT"
    if check.ok:
        return ("Every sentence of the draft that states a number, a neuron id or a layer matches findings.json; "
                "the draft is supported.", "REPORT")
    bad = "; ".join(f'"{i.sentence}" ({", ".join(i.problems)})' for i in check.issues)
    return f"Some sentences state what findings.json does not hold: {bad}. They must be corrected.", "REVISE"


class ScriptedRunner:
    """A deterministic stand-in for every agent: it never calls tools (the controller runs them)."""

    name = "scripted"
    tool_calling = False

    async def turn(self, role: Role, task: str, facts: TurnFacts) -> AgentTurn:
        if role.name == "analyst":
            text, proposal = scripted_narrative(facts), "VISUALIZE"
        elif role.name == "critic":
            text, proposal = scripted_verdict(facts)
        elif role.name == "planner":
            text, proposal = "{}", "CAPTURE"
        elif role.name == "capturer":
            text, proposal = "Profiled the planned layers.", "ANALYZE"
        else:
            text, proposal = "Drew the planned figures.", "CRITIQUE"
        return AgentTurn(role=role.name, text=f"{text}\nNEXT: {proposal}", proposal=proposal)
