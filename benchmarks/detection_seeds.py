"""Does the verdict of a full layer move with the seed? Detected, borderline and not-detected neurons over seeds.

    python benchmarks/detection_seeds.py [--layer 6] [--max-tokens 30000] [--seeds 0,1,2,3,4]

The seed draws the null's random sets and the neurons whose activation values they take (the random contexts and
the subject embedder's reference are the site's token reservoir, the same for every seed). One profile, one
embedder (its cache shared), the detector's defaults (no ablation: it does not change a verdict) over all 1,536
neurons of the layer, once per seed. Reported: each seed's counts, and for every pair of
seeds how much the detected set changes, as the symmetric difference over the union (goal: at most 5 %), and how
often a neuron detected under one seed is "not detected" (not merely borderline) under another.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from neuron_core import ModelInterface, profile
from neuron_core.analysis import DetectorConfig, PolysemanticDetector
from neuron_core.analysis.embed import SubjectEmbedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=30_000)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    interface = ModelInterface.from_pretrained("smollm2-135m", device="cpu")
    prof = profile(interface, [args.layer], "builtin", max_tokens=args.max_tokens, progress=False)
    embedder = SubjectEmbedder(interface)
    verdicts: dict[int, dict[int, str]] = {}
    print(f"torch threads {torch.get_num_threads()}; SmolLM2-135M layer {args.layer}, {prof.n_tokens:,} tokens; "
          "detector defaults, no ablation\n")
    print("| seed | analysed | detected | borderline | not detected | seconds |\n|---:|---:|---:|---:|---:|---:|")
    for seed in seeds:
        start = time.perf_counter()
        det = PolysemanticDetector(prof, interface=interface, embedder=embedder, seed=seed,
                                   config=DetectorConfig(ablation=False))
        verdicts[seed] = {r.neuron: r.verdict for r in det.run()}
        counts = [sum(v == k for v in verdicts[seed].values()) for k in ("detected", "borderline", "not detected")]
        print(f"| {seed} | {len(verdicts[seed])} | {counts[0]} | {counts[1]} | {counts[2]} | "
              f"{time.perf_counter() - start:.0f} |")
    print("\n| seeds | detected in either | changed | changed / either | detected -> not detected |")
    print("|---|---:|---:|---:|---:|")
    worst = 0.0
    for a, b in itertools.combinations(seeds, 2):
        da = {n for n, v in verdicts[a].items() if v == "detected"}
        db = {n for n, v in verdicts[b].items() if v == "detected"}
        either, changed = da | db, da ^ db
        flips = sum(verdicts[b][n] == "not detected" for n in da) + sum(verdicts[a][n] == "not detected" for n in db)
        share = len(changed) / max(len(either), 1)
        worst = max(worst, share)
        print(f"| {a} vs {b} | {len(either)} | {len(changed)} | {share:.1%} | {flips} |")
    print(f"\nLargest change of the detected set between two seeds: {worst:.1%} (goal: at most 5 %).")


if __name__ == "__main__":
    main()
