"""Polysemantic detection over one full layer of SmolLM2 (1,536 neurons) on the built-in corpus, split by stage.

    python benchmarks/detection_timing.py [--layer 6] [--max-tokens 30000] [--embedder auto] [--baseline minilm]

``--baseline`` runs the detector a second time in the same process with that embedder (a fresh cache) and prints
the time ratio: the default (the subject model's reading plus MiniLM's window view) against MiniLM alone.

``--investigation`` times what an investigation runs instead (``max_neurons=64``): the 64 neurons a screen of every
neuron finds most promising (``select="screen"``, the default) against the 64 with the highest peaks
(``select="peak"``, the baseline), each with a fresh embedder, in the same process.
"""

from __future__ import annotations

import argparse
import time

import torch

from neuron_core import ModelInterface, profile
from neuron_core.analysis import DetectorConfig, PolysemanticDetector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=30_000)
    parser.add_argument("--embedder", default="auto", choices=["auto", "subject", "minilm", "hidden"])
    parser.add_argument("--baseline", default="minilm", choices=["none", "subject", "minilm", "hidden"])
    parser.add_argument("--investigation", action="store_true", help="time the investigation's 64 neurons instead: "
                        "screen against peak")
    args = parser.parse_args()
    start = time.perf_counter()
    interface = ModelInterface.from_pretrained("smollm2-135m", device="cpu")
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    prof = profile(interface, [args.layer], "builtin", max_tokens=args.max_tokens, top_k=32, n_samples=64,
                   progress=False)
    profile_s = time.perf_counter() - start
    if args.investigation:
        investigation(prof, interface, args.embedder)
        return
    start = time.perf_counter()
    det = PolysemanticDetector(prof, interface=interface, embedder=args.embedder, config=DetectorConfig())
    found = det.detect()
    detect_s = time.perf_counter() - start
    print(f"torch threads {torch.get_num_threads()}; SmolLM2-135M layer {args.layer}, {prof.n_tokens:,} tokens, "
          f"{len(det.results)} neurons analysed, {len(found)} detected\n")
    print("| stage | seconds |\n|---|---:|")
    print(f"| load model | {load_s:.1f} |\n| profile (early stop after the layer) | {profile_s:.1f} |")
    for stage, seconds in det.timings.items():
        print(f"| detect: {stage} | {seconds:.1f} |")
    print(f"| detect: total | {detect_s:.1f} |")
    for n in found[:10]:
        print(" ", n.summary)
    if args.baseline != "none":
        start = time.perf_counter()
        base = PolysemanticDetector(prof, interface=interface, embedder=args.baseline, config=DetectorConfig())
        n_base = len(base.detect())
        base_s = time.perf_counter() - start
        print("\n| run | embedder | detected | detect seconds | ratio |\n|---|---|---:|---:|---:|")
        print(f"| baseline | {args.baseline} | {n_base} | {base_s:.1f} | 1.00 |")
        print(f"| default | {args.embedder} | {len(found)} | {detect_s:.1f} | {detect_s / base_s:.2f} |")


def investigation(prof: object, interface: ModelInterface, embedder: str, max_neurons: int = 64) -> None:
    """An investigation's detection (``max_neurons``, no ablation) by ``select``: peak (baseline), then screen."""
    rows = []
    for select in ("peak", "screen"):
        start = time.perf_counter()
        det = PolysemanticDetector(prof, interface=interface, embedder=embedder,
                                   config=DetectorConfig(max_neurons=max_neurons, select=select, ablation=False))
        found = det.detect()
        rows.append((select, len(found), time.perf_counter() - start, det.timings))
    print(f"torch threads {torch.get_num_threads()}; SmolLM2-135M, {prof.n_tokens:,} tokens, {max_neurons} neurons "
          "analysed in full\n")
    print("| select | detected | screen s | null s | detect seconds | ratio |\n|---|---:|---:|---:|---:|---:|")
    base = rows[0][2]
    for select, n, seconds, timings in rows:
        print(f"| {select} | {n} | {timings.get('screen', 0.0):.1f} | {timings.get('null', 0.0):.1f} | "
              f"{seconds:.1f} | {seconds / base:.2f} |")


if __name__ == "__main__":
    main()
