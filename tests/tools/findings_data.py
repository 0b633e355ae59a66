"""Findings for the claim, writer and prose tests: a small fixed set, and a realistic run's set built through the
tools' own recorders (the shapes a real run writes)."""

from __future__ import annotations

from neuron_core.analysis.types import Mode, PolysemanticNeuron
from neuron_core.store import RunFolder
from tools.findings import Finding, FindingStore, Label, Quantity, quantities_of
from tools.neurons import NeuronRow, record_layer_stats, record_logit_effects
from tools.polysemantic import record_detection

SITE = "blocks.6.mlp.hook_post"
ART = "tables/polysemantic.parquet"
NONSENSE = ("This suggests that L6 neurons are highly responsive to the polysemantic score of 1.00, indicating that "
            "L6 neurons are highly responsive to the polysemantic score of 3.")


def demo_findings() -> list[Finding]:
    """The findings behind the sentence `make demo` wrote: L6/N1233 with score 1.00 and 3 modes."""
    ref = "L6/N1233"
    return [
        Finding(id="F001", kind="run", claim="Profiled 20000 tokens from 1068 documents.", artifact="profile",
                source="profile_corpus", quantities=quantities_of({"n_tokens": 20000, "n_docs": 1068})),
        Finding(id="F002", kind="polysemantic_summary", claim="Of 64 neurons analysed in L6, 9 are polysemantic.",
                artifact="t", source="d", neurons=[ref],
                quantities=quantities_of({"n_analysed": 64, "n_polysemantic": 9, "n_borderline": 2}, layer=6)),
        Finding(id="F005", kind="polysemantic", claim="L6/N1233 is polysemantic.", artifact="t", source="d",
                neurons=[ref], verdict="detected",
                quantities=quantities_of({"score": 1.0, "p_value": 0.005, "n_modes": 3, "z_score": 7.2}, neuron=ref)
                + [Quantity(name="share", value=v, neuron=ref, mode=i) for i, v in enumerate((0.5, 0.3, 0.2), 1)],
                labels=[Label(name="mode", text=t, neuron=ref, mode=i)
                        for i, t in enumerate(("months", "JSON keys", "code 3.5"), 1)]),
    ]


def small_findings() -> list[Finding]:
    return [
        Finding(id="F001", kind="run", claim="Plan: investigate layer 6 of smollm2-135m.", artifact="manifest.json",
                source="controller", quantities=quantities_of({"n_layers": 30, "d_mlp": 1536, "max_tokens": 20000})
                + [Quantity(name="layer", value=6, layer=6)]),
        Finding(id="F002", kind="run", claim="Profiled 20000 tokens from 1072 documents.", artifact="profile",
                source="profile_corpus", quantities=quantities_of({"n_tokens": 20000, "n_docs": 1072})),
        Finding(id="F003", kind="polysemantic", claim="L6/N12 is polysemantic with 3 modes: “animals” (45%), "
                "“code 3.5” (30%).", artifact=ART, source="detect_polysemantic", neurons=["L6/N12"],
                verdict="detected",
                quantities=quantities_of({"score": 0.8149, "p_value": 0.00498, "n_modes": 3}, neuron="L6/N12")
                + [Quantity(name="share", value=0.4537, neuron="L6/N12", mode=1),
                   Quantity(name="share", value=0.30, neuron="L6/N12", mode=2)],
                labels=[Label(name="mode", text="animals", neuron="L6/N12", mode=1),
                        Label(name="mode", text="code 3.5", neuron="L6/N12", mode=2)]),
        Finding(id="F004", kind="polysemantic", claim="L6/N99 is polysemantic.", artifact=ART,
                source="detect_polysemantic", neurons=["L6/N99"], verdict="detected",
                quantities=quantities_of({"score": 0.61, "n_modes": 2}, neuron="L6/N99")),
        Finding(id="F005", kind="layer_summary", claim="Layer L6: 1536 neurons.",
                artifact="tables/neuron_stats.parquet", source="neuron_stats",
                quantities=quantities_of({"mean_frac_active": 0.1234, "n_dead": 0}, layer=6)),
    ]


def verdict(neuron: int, score: float, p: float, modes: list[Mode], kind: str = "detected",
            z: float = 6.5, separation: float = 0.62) -> PolysemanticNeuron:
    return PolysemanticNeuron(site=SITE, neuron=neuron, score=score, p_value=p, z_score=z, n_modes=len(modes),
                              separation=separation, modes=modes, summary="", verdict=kind)


def _mode(label: str, share: float, top_share: float | None = None, effect: float | None = None,
          probes: bool = False, n: int = 20) -> Mode:
    return Mode(label=label, share=share, top_share=top_share, effect=effect, found_by_probes=probes, n_examples=n,
                probe_concept=label if not label.startswith("tokens") else None,
                probe_similarity=0.41 if not label.startswith("tokens") else None)


def realistic_results() -> list[PolysemanticNeuron]:
    """A layer of 64 analysed neurons: 7 detected, 3 borderline, the rest not detected."""
    detected = [
        verdict(1233, 0.8149, 0.00498, [_mode("months", 0.55, 0.61, 0.0213), _mode("JSON keys", 0.40, 0.33, 0.0041)]),
        verdict(87, 0.7712, 0.00498, [_mode("tokens 'bill'/'to'", 0.713, 0.52), _mode("french_words ('le')", 0.287,
                0.22), _mode("tokens 'CH'/'al'", 0.0, 0.26, n=4),
                _mode("urls ('http'), found through the probes", 0.0, 0.0, probes=True, n=6)]),
        verdict(402, 0.7034, 0.00995, [_mode("numbers 2.5 and up", 0.62), _mode("legal terms", 0.38)]),
        verdict(950, 0.6651, 0.0149, [_mode("weekdays", 0.51), _mode("chemistry", 0.29), _mode("sports", 0.2)]),
        verdict(14, 0.6123, 0.0199, [_mode("code", 0.7), _mode("emotions", 0.3)]),
        verdict(1501, 0.5987, 0.0249, [_mode("colours", 0.66), _mode("tokens ','/'.'", 0.34)]),
        verdict(733, 0.5521, 0.0348, [_mode("body parts", 0.58), _mode("finance", 0.42)]),
    ]
    borderline = [verdict(260, 0.5312, 0.0448, [_mode("animals", 0.6), _mode("music", 0.4)], kind="borderline"),
                  verdict(9, 0.5104, 0.0498, [_mode("food", 0.5), _mode("weather", 0.5)], kind="borderline"),
                  verdict(1111, 0.5001, 0.0547, [_mode("cities", 0.7), _mode("years", 0.3)], kind="borderline")]
    rest = [verdict(1000 + i, 0.2 + i / 200, 0.3 + i / 100, [_mode("plain text", 1.0)], kind="not detected")
            for i in range(54)]
    return detected + borderline + rest


def realistic_findings(tmp_path) -> list[Finding]:
    """What a run of 'investigate layer 6' leaves in findings.json (plan, capture, statistics, detection, logits)."""
    store = FindingStore(RunFolder(tmp_path / "run"))
    store.add(kind="run", artifact="manifest.json", source="controller",
              claim="Plan: investigate layer 6 of smollm2-135m (30 layers of 1536 neurons) on the builtin corpus.",
              quantities=quantities_of({"n_layers": 30, "d_mlp": 1536, "max_tokens": 20000, "max_neurons": 64,
                                        "top_n": 5}) + [Quantity(name="layer", value=6, layer=6)])
    store.add(kind="run", artifact="profile/profile.json", source="profile_corpus",
              claim="Profiled 20000 tokens from 512 documents of the builtin corpus.",
              quantities=quantities_of({"n_tokens": 20000, "n_docs": 512}))
    rows = [NeuronRow(ref=f"L6/N{n}", max=m, mean=0.1, frac_active=f) for n, m, f in
            ((1233, 4.25, 0.02), (87, 3.91, 0.05), (330, 3.12, 0.011), (14, 2.87, 0.3))]
    record_layer_stats(store, SITE, n_neurons=1536, flags={"dead": 0, "dense": 12, "outlier": 3},
                       mean_frac_active=0.1234, top_rows=rows, artifact="tables/neuron_stats.parquet")
    record_detection(store, SITE, realistic_results(), artifact=ART, requested=[1001], max_borderline=5)
    record_logit_effects(store, "L6/N1233", [(" January", 0.52), (" March", 0.48), (" May", 0.31)],
                         [(" the", -0.4), ("{", -0.22), (" ", -0.1)], artifact="tables/logit_effects.json")
    return store.all()
