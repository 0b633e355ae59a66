"""Polysemantic detection over one full layer of SmolLM2 (1,536 neurons) on the built-in corpus, split by stage.

    python benchmarks/detection_timing.py [--layer 6] [--max-tokens 30000] [--embedder minilm]
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
    parser.add_argument("--embedder", default="minilm", choices=["minilm", "hidden"])
    args = parser.parse_args()
    start = time.perf_counter()
    interface = ModelInterface.from_pretrained("smollm2-135m", device="cpu")
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    prof = profile(interface, [args.layer], "builtin", max_tokens=args.max_tokens, top_k=32, n_samples=64,
                   progress=False)
    profile_s = time.perf_counter() - start
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


if __name__ == "__main__":
    main()
