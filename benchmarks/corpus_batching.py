"""Profiling the built-in corpus: documents batched by length (what ``profile`` and ``capture`` do) against batches
in corpus order.

    python benchmarks/corpus_batching.py [--docs 800] [--rounds 2] [--batch-sizes 16,64] [--capture-docs 400]

SmolLM2-135M (real weights, bundled GGUF), every MLP site: a profile (default statistics) of the first ``--docs``
documents of the built-in corpus (short documents of very different lengths, as real corpora have) at each batch
size, and a capture of the first ``--capture-docs``. The baseline is the same call with the batching replaced by
corpus-order batches (same row and token limits), in the same process, interleaved rounds, medians. Reported:
padded positions per counted token, tokens/s, and the ratio of wall times.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from _common import markdown_table

from neuron_core import ActivationMonitor, ModelInterface, profile
from neuron_core.batching import Batch, Segment, _collate

PROFILE_MODULE = sys.modules["neuron_core.profile"]
CAPTURE_MODULE = sys.modules["neuron_core.capture"]
SORTED = PROFILE_MODULE.length_sorted_batches


def corpus_order_batches(window: Sequence[Segment], *, batch_size: int, pad_id: int, max_tokens: int | None = None,
                         padding_side: str = "right") -> Iterator[tuple[Batch, list[int]]]:
    """The baseline: the window's segments in corpus order, at most ``batch_size`` rows and ``max_tokens``
    positions a batch (the same limits as ours)."""
    rows: list[int] = []
    for i, segment in enumerate(window):
        width = max([len(segment.ids)] + [len(window[j].ids) for j in rows])
        if rows and (len(rows) == batch_size or (max_tokens is not None and (len(rows) + 1) * width > max_tokens)):
            yield _collate([window[j] for j in rows], pad_id, padding_side), rows
            rows = []
        rows.append(i)
    if rows:
        yield _collate([window[j] for j in rows], pad_id, padding_side), rows


def run(interface: Any, texts: list[str], kind: str, batch_size: int, batching: Any) -> tuple[float, int, int]:
    """Wall seconds, counted tokens and forward positions (rows x padded width, summed over batches) of a
    ``profile`` or a ``capture`` (every MLP site) with the given batching."""
    module = PROFILE_MODULE if kind == "profile" else CAPTURE_MODULE
    positions = [0]

    def counting(*args: Any, **kwargs: Any) -> Iterator[tuple[Batch, list[int]]]:
        for batch, rows in batching(*args, **kwargs):
            positions[0] += batch.input_ids.numel()
            yield batch, rows

    module.length_sorted_batches = counting
    try:
        start = time.perf_counter()
        if kind == "profile":
            n_tokens = profile(interface, None, texts, batch_size=batch_size, progress=False).n_tokens
        else:
            n_tokens = len(ActivationMonitor(interface).capture(texts, batch_size=batch_size))
        return time.perf_counter() - start, n_tokens, positions[0]
    finally:
        module.length_sorted_batches = SORTED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=800)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-sizes", default="16,64")
    parser.add_argument("--capture-docs", type=int, default=400, help="also time a capture of this many documents "
                        "at batch_size 16 (0: skip)")
    args = parser.parse_args()
    from neuron_core.corpus import builtin_corpus

    interface = ModelInterface.from_pretrained("smollm2-135m", device="cpu")
    corpus = list(builtin_corpus().texts())
    jobs = [("profile", bs, corpus[: args.docs]) for bs in (int(s) for s in args.batch_sizes.split(","))]
    if args.capture_docs:
        jobs.append(("capture", 16, corpus[: args.capture_docs]))
    variants = [(kind, bs, texts, name, fn) for kind, bs, texts in jobs for name, fn in
                (("corpus order (baseline)", corpus_order_batches), ("by length (ours)", SORTED))]
    run(interface, corpus[:64], "profile", 16, SORTED)  # warm-up
    times: dict[tuple[str, int, str], list[float]] = {(k, bs, name): [] for k, bs, _, name, _ in variants}
    counts: dict[tuple[str, int, str], tuple[int, int]] = {}
    for _ in range(args.rounds):
        for kind, bs, texts, name, fn in variants:
            seconds, n_tokens, positions = run(interface, texts, kind, bs, fn)
            times[(kind, bs, name)].append(seconds)
            counts[(kind, bs, name)] = (n_tokens, positions)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, cpu; "
          f"torch {torch.__version__}\n"
          "model: SmolLM2-135M-Instruct (bundled GGUF), all 30 MLP sites; profile: default statistics over the first "
          f"{args.docs} documents of the built-in corpus; capture: the first {args.capture_docs} documents, "
          f"every site's activations kept; {args.rounds} interleaved rounds, medians\n")
    rows = []
    for kind, bs, name in times:
        median = sorted(times[(kind, bs, name)])[args.rounds // 2]
        baseline = sorted(times[(kind, bs, "corpus order (baseline)")])[args.rounds // 2]
        n_tokens, positions = counts[(kind, bs, name)]
        rows.append([f"{kind}, batch_size {bs}: {name}", f"{n_tokens:,}", f"{positions / n_tokens:.2f}",
                     f"{median:.2f}", f"{n_tokens / median:,.0f}", f"{median / baseline:.3f}"])
    print(markdown_table(["variant", "tokens", "positions per token", "median s", "tokens/s",
                          "time ratio vs baseline"], rows))


if __name__ == "__main__":
    main()
