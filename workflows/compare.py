"""Layers side by side: the detected share, the scores and the top neurons of each, as a finding, a table and a figure.

Usage::

    result = compare_layers(session, "smollm2-135m", [3, 4], entries)   # entries: the runs that hold the layers
    result.text, result.table, result.figures, result.finding            # checked prose cites result.finding

The comparison is recorded in the session's own ``findings.json`` (kind ``comparison``), its numbers copied from the
runs' findings with the layer or neuron they are of, so the prose about it passes the same claim check as a report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tools import Finding
from tools.findings import Label, Quantity, quantities_of, ref_parts
from workflows.session import RunEntry, Session

__all__ = ["Comparison", "compare_layers", "LayerFacts"]

TOP = 3


@dataclass
class LayerFacts:
    layer: int
    n_analysed: int
    n_polysemantic: int
    n_borderline: int
    n_screened: int = 0  # neurons the detector's screen scored to pick the analysed ones (0: no screen)
    top: list[tuple[str, float, int]] = field(default_factory=list)  # (neuron id, score, modes), best first
    scores: list[float] = field(default_factory=list)  # every analysed neuron's score
    detected_scores: list[float] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.n_polysemantic / self.n_analysed if self.n_analysed else 0.0

    @property
    def is_rate(self) -> bool:
        """Whether ``share`` estimates the layer's rate: not when a screen picked the most promising neurons."""
        return self.n_screened <= self.n_analysed

    @property
    def analysed_text(self) -> str:
        screen = f" (the most promising of its {self.n_screened:,} by a quick screen)" if not self.is_rate else ""
        return f"{self.n_polysemantic} of {self.n_analysed} analysed neurons{screen}"


@dataclass
class Comparison:
    text: str
    table: tuple[list[str], list[list[str]]]
    figures: list[str]
    finding: Finding
    top_refs: list[str]


def _facts(session: Session, entry: RunEntry, layer: int) -> LayerFacts:
    import pandas as pd

    ctx = session.ctx_for(entry)
    findings = ctx.findings.all()
    summary = next(f for f in findings if f.kind == "polysemantic_summary"
                   and f.has("n_analysed", layer=layer))
    top = []
    for f in findings:
        ref = f.subject
        if f.kind == "polysemantic" and ref and ref_parts(ref)[0] == layer:
            top.append((f.value("rank", neuron=ref, default=1e9), ref, f.value("score", neuron=ref),
                        int(f.value("n_modes", neuron=ref))))
    facts = LayerFacts(layer, int(summary.value("n_analysed", layer=layer)),
                       int(summary.value("n_polysemantic", layer=layer)),
                       int(summary.value("n_borderline", layer=layer, default=0)),
                       int(summary.value("n_screened", layer=layer, default=0)),
                       top=[(ref, score, n) for _, ref, score, n in sorted(top)[:TOP]])
    path = ctx.run.path_for("tables/polysemantic.parquet")
    if path.exists():
        frame = pd.read_parquet(path)
        rows = frame[[ref_parts(r)[0] == layer for r in frame["ref"]]]
        facts.scores = [float(x) for x in rows["score"]]
        facts.detected_scores = [float(x) for x in rows[rows["verdict"] == "detected"]["score"]]
    return facts


def _record(session: Session, model: str, layers: list[LayerFacts]) -> Finding:
    quantities: list[Quantity] = []
    labels = [Label(name="model", text=model)]
    for lf in layers:
        counts = {"n_analysed": lf.n_analysed, "n_polysemantic": lf.n_polysemantic, "n_borderline": lf.n_borderline}
        counts |= {"share": round(lf.share, 6)} if lf.is_rate else {"n_screened": lf.n_screened}
        quantities += quantities_of(counts, layer=lf.layer)
        for rank, (ref, score, n_modes) in enumerate(lf.top, 1):
            quantities += quantities_of({"score": score, "n_modes": n_modes, "rank": rank}, neuron=ref)
    neurons = [ref for lf in layers for ref, _, _ in lf.top]
    claim = "; ".join(f"layer {lf.layer}: {lf.analysed_text} polysemantic" for lf in layers)
    fid = session.findings.add(kind="comparison", claim=f"Compared {model}: {claim}.", neurons=neurons,
                               quantities=quantities, labels=labels, artifact="session.json", source="compare")
    return session.findings.get(fid)


def _figure(session: Session, model: str, layers: list[LayerFacts]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"L{lf.layer}" for lf in layers]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), gridspec_kw={"width_ratios": [1, 2]})
    left.bar(names, [100 * lf.share for lf in layers], color="#4c72b0")
    left.set_ylabel("detected polysemantic (% of analysed)")
    screened = not all(lf.is_rate for lf in layers)
    left.set_title("detected share" + (" (screened: not a layer's rate)" if screened else ""), fontsize=9)
    import numpy as np

    jitter = np.random.default_rng(0)
    for i, lf in enumerate(layers):
        right.scatter(i + jitter.uniform(-0.12, 0.12, len(lf.scores)), lf.scores, s=10, alpha=0.35, color="#7f7f7f",
                      label="analysed" if i == 0 else None)
        right.scatter([i] * len(lf.detected_scores), lf.detected_scores, s=22, color="#c44e52",
                      label="detected" if i == 0 else None)
        for rank, (ref, score, _) in enumerate(lf.top):
            right.annotate(ref, (i, score), xytext=(14, -10 * rank), textcoords="offset points", fontsize=7,
                           arrowprops={"arrowstyle": "-", "color": "#aaaaaa", "lw": 0.5})
    right.set_xticks(range(len(layers)), names)
    right.set_ylabel("polysemanticity score")
    right.set_title("scores of the analysed neurons")
    right.legend(loc="lower right", fontsize=7)
    fig.suptitle(f"{model}: layers {', '.join(str(lf.layer) for lf in layers)}")
    fig.tight_layout()
    relative = "figures/compare_" + "_".join(names) + ".png"
    path = session.folder.path_for(relative)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _prose(layers: list[LayerFacts], fid: str) -> str:
    lines = [f"Layer {lf.layer}: {lf.analysed_text} are polysemantic" + (f" ({lf.share:.0%})" if lf.is_rate else "")
             + f", {lf.n_borderline} borderline [{fid}]." for lf in layers]
    side = []
    for lf in layers:
        tops = ", ".join(f"{ref} (score {score:.2f}, {n} modes)" for ref, score, n in lf.top)
        side.append(f"layer {lf.layer}: {tops}" if tops else f"layer {lf.layer}: none detected")
    return " ".join(lines) + "\n\nTop neurons side by side [" + fid + "]: " + "; ".join(side) + "."


def compare_layers(session: Session, model: str, layers: list[int], entries: list[RunEntry]) -> Comparison:
    facts = [_facts(session, entry, layer) for layer, entry in zip(layers, entries)]
    finding = _record(session, model, facts)
    figure = _figure(session, model, facts)
    header = ["layer", "analysed", "polysemantic", "share", "borderline", "top neurons (score, modes)"]
    rows = [[str(lf.layer), str(lf.n_analysed) + (f" of {lf.n_screened:,}" if not lf.is_rate else ""),
             str(lf.n_polysemantic), f"{lf.share:.0%}" if lf.is_rate else "–", str(lf.n_borderline),
             ", ".join(f"{ref} ({score:.2f}, {n})" for ref, score, n in lf.top) or "–"] for lf in facts]
    return Comparison(text=_prose(facts, finding.id), table=(header, rows), figures=[figure], finding=finding,
                      top_refs=[ref for lf in facts for ref, _, _ in lf.top])
