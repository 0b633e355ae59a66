"""Planted neurons among a whole real layer: does the detector still find them beside 1,500 real SmolLM2 neurons?

    python benchmarks/detection_planted.py [--docs 1200] [--n-null 200]

The test suite (``tests/neuron_core/test_polysemantic.py``) analyses only the 20 planted neurons. Here the same 8
"OR" neurons (two unrelated probe concepts each) and 12 single-concept neurons are written into layer 6 of
SmolLM2-135M (``tests/neuron_core/planting.py``), the layer is profiled over the first ``--docs`` documents of the
built-in corpus plus the probes' held-out sentences, and the detector runs over every neuron of the layer with its
defaults. Reported: where the planted neurons rank among all 1,536 by score, the OR-vs-single AUC, which are
detected, whether both concepts of each OR neuron are among its modes; and, for comparison, what a
Benjamini-Hochberg false-discovery-rate cut over the layer would keep (the detector itself tests each neuron at
``alpha`` without a multiple-testing correction).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from neuron_core import ModelInterface, load_model, profile  # noqa: E402
from neuron_core.analysis import DetectorConfig, PolysemanticDetector  # noqa: E402
from neuron_core.corpus import builtin_corpus, load_probes  # noqa: E402
from tests.neuron_core.planting import auc, plant  # noqa: E402

LAYER = 6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1200, help="built-in corpus documents profiled")
    parser.add_argument("--n-null", type=int, default=DetectorConfig.n_null)
    args = parser.parse_args()
    from scipy.stats import false_discovery_control

    lm = load_model("smollm2-135m", device="cpu")  # a private copy: planting writes into the weights
    truth = plant(lm, layer=LAYER, n_or=8, n_single=12, n_lexical=5)
    interface = ModelInterface(lm)
    held_out = [e.text for p in load_probes().values() for e in p.held_out]
    start = time.perf_counter()
    prof = profile(interface, [LAYER], builtin_corpus().texts(args.docs) + held_out, top_k=32, n_samples=64,
                   progress=False)
    profile_s = time.perf_counter() - start
    cfg = DetectorConfig(n_null=args.n_null)
    start = time.perf_counter()
    det = PolysemanticDetector(prof, interface=interface, config=cfg)
    results = det.run()
    detect_s = time.perf_counter() - start

    site = f"blocks.{LAYER}.mlp.hook_post"
    by_neuron = {r.neuron: r for r in results if r.site == site}
    ranked = sorted(results, key=lambda r: (-r.score, r.neuron))
    rank = {r.neuron: i + 1 for i, r in enumerate(ranked)}
    detected = {r.neuron for r in det.detect()}
    q_values = false_discovery_control(np.array([r.p_value for r in results]))
    q = {r.neuron: float(v) for r, v in zip(results, q_values)}
    bh = {r.neuron for r in results if r.n_modes >= 2 and r.score >= cfg.min_score and q[r.neuron] < cfg.alpha}

    print(f"torch threads {torch.get_num_threads()}; SmolLM2-135M layer {LAYER} with 8 OR and 12 single-concept "
          f"neurons planted (neurons {min(truth.neurons)}-{max(truth.neurons)}); {prof.n_tokens:,} tokens "
          f"(first {args.docs} built-in documents + {len(held_out)} held-out probe sentences); "
          f"{len(results)} neurons analysed; n_null {cfg.n_null}; profile {profile_s:.0f} s, detection "
          f"{detect_s:.0f} s\n")
    print("| neuron | planted concepts | score | rank of 1,536 | p | verdict | BH q | concepts among the modes |")
    print("|---:|---|---:|---:|---:|---|---:|---|")
    recovered = 0
    for n, concepts in truth.neurons.items():
        r = by_neuron[n]
        found = sorted({m.probe_concept for m in r.modes if m.probe_concept})
        both = set(concepts) <= set(found)
        recovered += len(concepts) == 2 and both
        print(f"| {n} | {' + '.join(concepts)} | {r.score:.3f} | {rank[n]} | {r.p_value:.3f} | "
              f"{r.verdict} | {q[n]:.3f} | {', '.join(found) or '-'} |")
    or_n, single_n = truth.or_neurons, truth.single_neurons
    value = auc([by_neuron[n].score for n in or_n], [by_neuron[n].score for n in single_n])
    real = [r for r in results if r.neuron not in truth.neurons]
    print()
    print(f"- OR vs single-concept neurons by score: AUC {value:.3f} (goal on the planted set alone: >= 0.95)")
    print(f"- OR neurons detected: {len(detected & set(or_n))} of {len(or_n)}; both concepts among the modes: "
          f"{recovered} of {len(or_n)}; single-concept neurons detected: {len(detected & set(single_n))} of "
          f"{len(single_n)}")
    print(f"- OR neurons' ranks among all {len(results)}: {sorted(rank[n] for n in or_n)}; real neurons scoring "
          f"above the weakest OR neuron: {sum(r.score > min(by_neuron[n].score for n in or_n) for r in real)}")
    print(f"- modes per single-concept neuron: {np.mean([by_neuron[n].n_modes for n in single_n]):.2f} (goal <= 1.3); "
          f"OR neurons borderline: {sum(by_neuron[n].verdict == 'borderline' for n in or_n)}")
    borderline = sum(r.verdict == "borderline" for r in results)
    print(f"- detected in the layer: {len(detected)}, borderline {borderline} (score >= {cfg.min_score}, >= 2 modes, "
          f"the p-value's 95 % interval below / around {cfg.alpha}); with a "
          f"Benjamini-Hochberg cut at q < {cfg.alpha} instead: {len(bh)}, keeping {len(bh & set(or_n))} of the "
          f"{len(or_n)} OR neurons")


if __name__ == "__main__":
    main()
