"""The seed's script: MLP activations of every block of GPT-2 small over a few sentences, polysemantic neurons listed.

    python examples/gpt2_analysis.py                       # GPT-2 small (needs it in the HF cache or the network)
    python examples/gpt2_analysis.py --model smollm2-135m  # the bundled model, offline
"""

from __future__ import annotations

import argparse
import sys

from neuron_core import ActivationMonitor, ModelInterface, ModelNotAvailableError
from neuron_core.analysis import DetectorConfig, PolysematicDetector
from neuron_core.viz import ActivationVisualizer

SENTENCES = [
    "The cat chased the mouse across the kitchen floor.",
    "Interest rates rose again in March, and the markets fell.",
    "def mean(xs): return sum(xs) / len(xs)",
    "Le train pour Lyon part à dix heures du matin.",
    "She tuned her violin before the evening concert began.",
    "ERROR: connection refused on port 5432 after 3 retries.",
    "The patient was given 500 mg of ibuprofen twice a day.",
    "On Friday, 12 June 2026, the committee approved the budget.",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--neurons-per-layer", type=int, default=16,
                        help="neurons analysed in full per layer (the most promising of a quick screen)")
    parser.add_argument("--heatmap", default=None, help="save a heatmap of the last layer to this PNG")
    args = parser.parse_args()
    try:
        interface = ModelInterface.from_pretrained(args.model)
    except ModelNotAvailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    monitor = ActivationMonitor(interface)
    monitor.register_layers(interface.layer_names())  # every block's MLP neurons
    record = monitor.capture(SENTENCES)
    print(f"{interface}: {len(record)} tokens, {len(record.sites)} sites, "
          f"{record[record.sites[0]].shape[1]} neurons per site")
    detector = PolysematicDetector(record, interface=interface,
                                   config=DetectorConfig(max_neurons=args.neurons_per_layer, n_null=100))
    found = detector.detect()
    print(f"\n{len(found)} polysemantic neurons (of {len(detector.results)} analysed):")
    for neuron in found[:20]:
        print(" ", neuron.summary)
        for mode in neuron.modes:
            print(f"      {mode.label}: {mode.examples[0].text!r}")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in detector.timings.items())
    print(f"\ndetection stages: {timings}")
    if args.heatmap:
        viz = ActivationVisualizer(record)
        viz.highlight_polysemantic(found, layer=record.sites[-1], path=args.heatmap)
        print(f"heatmap saved to {args.heatmap}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
