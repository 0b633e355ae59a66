"""Profiling the built-in corpus: documents batched by length (what ``profile`` does) against batches in corpus order.

    python benchmarks/corpus_batching.py [--docs 800] [--rounds 2] [--batch-sizes 16,64]

SmolLM2-135M (real weights, bundled GGUF), every MLP site, default statistics, the first ``--docs`` documents of the
built-in corpus (short documents of very different lengths, as real corpora have). The baseline is the same
``profile`` call with the batching replaced by corpus-order batches, in the same process, interleaved rounds,
medians. Reported: padded positions per counted token, tokens/s, and the ratio of wall times.
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

from neuron_core import ModelInterface, profile
from neuron_core.batching import Batch, Segment, _collate

PROFILE_MODULE = sys.modules["neuron_core.profile"]
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


def run(interface: Any, texts: list[str], batch_size: int, batching: Any) -> tuple[float, int, int]:
    """Wall seconds, counted tokens and forward positions (rows x padded width, summed over batches)."""
    positions = [0]

    def counting(*args: Any, **kwargs: Any) -> Iterator[tuple[Batch, list[int]]]:
        for batch, rows in batching(*args, **kwargs):
            positions[0] += batch.input_ids.numel()
            yield batch, rows

    PROFILE_MODULE.length_sorted_batches = counting
    try:
        start = time.perf_counter()
        prof = profile(interface, None, texts, batch_size=batch_size, progress=False)
        return time.perf_counter() - start, prof.n_tokens, positions[0]
    finally:
        PROFILE_MODULE.length_sorted_batches = SORTED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=800)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-sizes", default="16,64")
    args = parser.parse_args()
    from neuron_core.corpus import builtin_corpus

    interface = ModelInterface.from_pretrained("smollm2-135m", device="cpu")
    texts = list(builtin_corpus().texts())[: args.docs]
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    variants = {(bs, name): fn for bs in sizes for name, fn in
                (("corpus order (baseline)", corpus_order_batches), ("by length (ours)", SORTED))}
    run(interface, texts[:64], sizes[0], SORTED)  # warm-up
    times: dict[tuple[int, str], list[float]] = {key: [] for key in variants}
    counts: dict[tuple[int, str], tuple[int, int]] = {}
    for _ in range(args.rounds):
        for key, fn in variants.items():
            seconds, n_tokens, positions = run(interface, texts, key[0], fn)
            times[key].append(seconds)
            counts[key] = (n_tokens, positions)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, cpu; "
          f"torch {torch.__version__}\n"
          "model: SmolLM2-135M-Instruct (bundled GGUF), all 30 MLP sites, default statistics; "
          f"the first {len(texts)} documents of the built-in corpus ({counts[next(iter(counts))][0]:,} tokens); "
          f"{args.rounds} interleaved rounds, medians\n")
    rows = []
    for key in variants:
        bs, name = key
        median = sorted(times[key])[len(times[key]) // 2]
        baseline = sorted(times[(bs, "corpus order (baseline)")])[len(times[key]) // 2]
        n_tokens, positions = counts[key]
        rows.append([f"batch_size {bs}: {name}", f"{positions / n_tokens:.2f}", f"{median:.2f}",
                     f"{n_tokens / median:,.0f}", f"{median / baseline:.3f}"])
    print(markdown_table(["variant", "positions per token", "median s", "tokens/s", "time ratio vs baseline"],
                         rows))


if __name__ == "__main__":
    main()
