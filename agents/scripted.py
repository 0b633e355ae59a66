"""The deterministic policy: no LLM, the same states and tools, prose from templates over findings.json.

Usage::

    runner = ScriptedRunner()
    turn = await runner.turn(ROLES["analyst"], task, TurnFacts(plan=plan, findings=store.all()))
    turn.text          # a narrative whose every number and neuron id comes from the findings' typed quantities

    scripted_narrative(TurnFacts(plan=plan, findings=findings))
    # 'We profiled 20,000 tokens from 512 documents at layer 6 [F002]. Of the 64 neurons analysed in layer 6 (the
    #  most promising of its 1,536 by a quick screen), 7 are polysemantic and 3 borderline [F005]. The strongest case
    #  is L6/N1233 (score 0.81, p = 0.005), whose 2 modes are “months” (55%) and “JSON keys” (40%) [F006]. ...'

The chat's answers come from here too (``explain_text``, ``promotes_text``, ``detection_sentence``): why a neuron is or
is not polysemantic, what it promotes, a layer's detection in a sentence.

Reproducible: the same findings give the same text. What CI uses (``--llm scripted``), and what a prose-only model's
report is built on (the model may only add sentences that pass the check).
"""

from __future__ import annotations

from collections.abc import Sequence

from agents.roles import Role
from agents.runner import AgentTurn, TurnFacts
from tools.findings import Finding

__all__ = ["ScriptedRunner", "scripted_narrative", "scripted_verdict", "layer_phrase", "mode_list", "plural",
           "explain_text", "promotes_text", "detection_sentence"]


def _num(value: float, digits: int = 3) -> str:
    """A number as the checker reads it back: integers with thousands separators, others with ``digits``
    significant digits."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.{digits}g}"


def plural(n: float, noun: str, many: str | None = None) -> str:
    """``plural(1, 'mode')`` -> ``'1 mode'``; ``plural(3, 'mode')`` -> ``'3 modes'``."""
    return f"{_num(n)} {noun if n == 1 else many or noun + 's'}"


def _is(n: float) -> str:
    return "is" if n == 1 else "are"


def _and(items: Sequence[str]) -> str:
    """``'a'``, ``'a and b'``, ``'a, b and c'``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" and {items[-1]}"


def layer_phrase(layers: Sequence[int]) -> str:
    if len(layers) == 1:
        return f"layer {layers[0]}"
    return "layers " + _and([str(x) for x in layers])


def mode_list(f: Finding) -> str:
    """``'“animals” (45%) and “code” (30%)'`` from a verdict finding's typed labels (a share in words that the
    label already says, such as 'found through the probes', is not said twice)."""
    ref = f.subject
    parts = []
    for i in f.mode_indices(ref):
        label, share = f.text("mode", neuron=ref, mode=i), f.text("share_text", neuron=ref, mode=i)
        parts.append(f"“{label}”" if share in label else f"“{label}” ({share})")
    return _and(parts)


def _where(f: Finding) -> str:
    """``'layer 6'`` for a layer-level finding (its site's name when the site is not a numbered layer)."""
    layers = sorted({q.layer for q in f.quantities if q.layer is not None})
    if layers:
        return layer_phrase(layers)
    sites = f.texts("site")
    return sites[0] if sites else "the layer"


def _score(f: Finding) -> float:
    return f.value("score", default=0.0)


def _stats(f: Finding) -> str:
    """``'score 0.81, p = 0.005'``."""
    return f"score {f.value('score'):.2f}, p = {_num(f.value('p_value'))}"


def _capture_sentence(findings: Sequence[Finding], layers: Sequence[int]) -> list[str]:
    capture = [f for f in findings if f.kind == "run" and f.has("n_tokens") and f.has("n_docs")]
    if not capture:
        return []
    c = capture[-1]
    where = f" at {layer_phrase(layers)}" if layers else ""
    return [f"We profiled {plural(c.value('n_tokens'), 'token')} from {plural(c.value('n_docs'), 'document')}"
            f"{where} [{c.id}]."]


def _summary_sentence(s: Finding) -> str:
    n, n_poly, n_border, n_screened = (int(s.value(k, default=0)) for k in (
        "n_analysed", "n_polysemantic", "n_borderline", "n_screened"))
    where = _where(s)
    if n == 1:
        state = "polysemantic" if n_poly else "borderline" if n_border else "not polysemantic"
        return f"The single neuron analysed in {where} is {state} [{s.id}]."
    screen = f" (the most promising of its {_num(n_screened)} by a quick screen)" if n_screened > n else ""
    analysed = f"the {_num(n)} neurons analysed in {where}{screen}"
    if n_poly == 0 and n_border == 0:
        return f"None of {analysed} is polysemantic [{s.id}]."
    if n_poly == 0:
        verb = _is(n_border)
        return f"Of {analysed}, none is polysemantic and {_num(n_border)} {verb} borderline [{s.id}]."
    verb = _is(n_poly)
    border = f" and {_num(n_border)} borderline" if n_border else ""
    return f"Of {analysed}, {_num(n_poly)} {verb} polysemantic{border} [{s.id}]."


def _strongest_sentence(poly: Sequence[Finding]) -> list[str]:
    """The best detected neuron and its modes (nothing when none was detected: the summary said so)."""
    if not poly:
        return []
    top = poly[0]
    return [f"The strongest case is {top.subject} ({_stats(top)}), whose {plural(top.value('n_modes'), 'mode')} "
            f"{_is(top.value('n_modes'))} {mode_list(top)} [{top.id}]."]


def _verdict_sentences(poly: Sequence[Finding], others: Sequence[Finding], top_n: int) -> list[str]:
    out = [f"{f.subject} ({_stats(f)}) has {plural(f.value('n_modes'), 'mode')}: {mode_list(f)} [{f.id}]."
           for f in poly[1:top_n]]
    borderline = [f for f in others if f.verdict == "borderline"]
    if borderline:
        listed = _and([f"{f.subject} ({_stats(f)}) [{f.id}]" for f in borderline])
        it, verb = ("it", "is") if len(borderline) == 1 else ("them", "are")
        out.append(f"{listed} {verb} borderline: at this sample size the test can call {it} neither polysemantic "
                   "nor clean.")
    out += [f"{f.subject} does not pass the test ({_stats(f)}) [{f.id}]." for f in others
            if f.verdict == "not detected"]
    return out


def _layer_sentences(findings: Sequence[Finding], several: bool) -> list[str]:
    out: list[str] = []
    for f in [f for f in findings if f.kind == "top_neurons"][:2]:
        parts = [f"{r} (max {_num(f.value('max', neuron=r))})" for r in f.neurons[:3] if f.has("max", neuron=r)]
        of = f" of {_where(f)}" if several and _where(f) != "the layer" else ""
        if parts:
            out.append(f"The most strongly activating neurons{of} are {_and(parts)} [{f.id}].")
    for f in [f for f in findings if f.kind == "layer_summary"]:
        dead, dense = int(f.value("n_dead")), int(f.value("n_dense"))
        dead_text = "no neuron is dead" if dead == 0 else f"{plural(dead, 'neuron')} {_is(dead)} dead"
        dense_text = "none is dense" if dense == 0 else f"{_num(dense)} {_is(dense)} dense"
        out.append(f"In {_where(f)}, {dead_text} and {dense_text}; on average a neuron is active on "
                   f"{f.value('mean_frac_active'):.1%} of tokens [{f.id}].")
    logit = [f for f in findings if f.kind == "logit_effects" and f.subject][:4]
    if logit:
        verbs = "promotes and suppresses" if len(logit) == 1 else "promote and suppress"
        out.append(f"The tokens {_and([str(f.subject) for f in logit])} most {verbs} through the unembedding are "
                   f"listed under Other notable neurons [{', '.join(f.id for f in logit)}].")
    return out


def scripted_narrative(facts: TurnFacts) -> str:
    """The report's summary from the findings alone: what was profiled, how many neurons are polysemantic (and
    borderline), the strongest case and its modes, the other cases, then the layer's statistics."""
    findings: list[Finding] = list(facts.findings)
    plan = facts.plan
    layers = list(plan.layers) if plan is not None else sorted({x for f in findings for x in f.layers()})
    top_n = plan.top_n if plan is not None else 5
    summaries = [f for f in findings if f.kind == "polysemantic_summary"]
    poly = sorted((f for f in findings if f.kind == "polysemantic"), key=lambda f: -_score(f))
    others = sorted((f for f in findings if f.kind == "neuron_verdict"), key=lambda f: -_score(f))
    first = _capture_sentence(findings, layers) + [_summary_sentence(s) for s in summaries]
    first += _strongest_sentence(poly)
    paragraphs = [" ".join(part) for part in (first, _verdict_sentences(poly, others, top_n),
                                               _layer_sentences(findings, several=len(layers) > 1)) if part]
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


# ---------------------------------------------------------------------------------------- chat answers
def _q(text: str) -> str:
    return f"“{text}”"


def _verdict_finding(findings: Sequence[Finding], ref: str) -> Finding | None:
    return next((f for f in findings if f.kind in ("polysemantic", "neuron_verdict") and f.subject == ref), None)


def explain_text(finding: Finding, ref: str) -> str:
    """Why a neuron is (or is not) polysemantic, every number from its verdict finding."""
    fid = finding.id
    n_modes = int(finding.value("n_modes", neuron=ref))
    verdict = {"detected": "is polysemantic", "borderline": "is borderline (the test cannot settle it at this "
               "sample size)"}.get(finding.verdict or "", "is not polysemantic by the test")
    first = (f"{ref} {verdict} [{fid}]: score {finding.value('score', neuron=ref):.2f}, "
             f"p = {finding.value('p_value', neuron=ref):.3g}, {n_modes} mode{'s' if n_modes != 1 else ''}.")
    if n_modes < 2:
        return first + f" Its strongest contexts form one group for {ref} [{fid}], so there is nothing to separate."
    why = (f"The test clusters the strongest contexts of {ref} by meaning and compares how far apart the groups are "
           f"(separation {finding.value('separation', neuron=ref):.2f}) with random sets of the layer's contexts: "
           f"a random set scores as high with p = {finding.value('p_value', neuron=ref):.3g} "
           f"(z = {finding.value('z_score', neuron=ref):.2f}) [{fid}].")
    modes = []
    for i in finding.mode_indices(ref):
        label, share = finding.text("mode", neuron=ref, mode=i), finding.text("share_text", neuron=ref, mode=i)
        sentence = f"Mode {i} of {ref}, {_q(label)}, holds {share} of its activation mass"
        if finding.has("effect", neuron=ref, mode=i):
            effect = finding.value("effect", neuron=ref, mode=i)
            sentence += f"; zeroing the neuron there changes the loss by {effect:+.3g} nats per token"
        modes.append(sentence + f" [{fid}].")
    return "\n\n".join([first + " " + why, " ".join(modes)])


def promotes_text(found: Finding, ref: str) -> str:
    def side(name: str) -> str:
        tokens = found.texts(name, neuron=ref)
        values = [q.value for q in found.quantities_for(name, neuron=ref)]
        return ", ".join(f"{_q(t)} ({v:+.3g})" for t, v in zip(tokens, values))

    return (f"Through the unembedding, {ref} most promotes {side('promoted')} and most suppresses "
            f"{side('suppressed')} (logit changes) [{found.id}].")


def detection_sentence(summary: Finding, layer: int, found: list[str], findings: list[Finding]) -> str:
    n_an = int(summary.value("n_analysed", layer=layer))
    n_poly = int(summary.value("n_polysemantic", layer=layer))
    n_screened = int(summary.value("n_screened", layer=layer, default=0))
    screen = f" (the most promising of its {_num(n_screened)} by a quick screen)" if n_screened > n_an else ""
    sentence = (f"Of {n_an} neurons analysed in layer {layer}{screen}, {n_poly} {_is(n_poly)} polysemantic "
                f"[{summary.id}]")
    if not found:
        return sentence + "."
    top = _verdict_finding(findings, found[0])
    if top is None:
        return sentence + "."
    return (sentence + f"; the top one is {found[0]} (score {top.value('score', neuron=found[0]):.2f}, "
            f"{int(top.value('n_modes', neuron=found[0]))} modes) [{top.id}].")


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
