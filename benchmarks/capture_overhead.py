"""Capture overhead: our streaming profiles against the plain Hugging Face forward, on the same batches.

    python benchmarks/capture_overhead.py [--rounds 5] [--batches 6] [--batch-size 8] [--seq 128] [--device cpu]

One process, a GPT-2-small-sized model with random weights (GPT2Config(): 12 layers, d_model 768, 3,072 neurons per
MLP), the same pre-tokenised batches for every variant, several interleaved rounds, medians. Prints tokens/s and the
ratio of each variant's time to the plain forward (lower is better). Variants:

- hf forward:          model(**batch), the full causal LM (what a user would run), use_cache=False, no grad
- hf trunk forward:    model.transformer(**batch): no LM head (shown for reference)
- ours all layers:     profile() of all 12 MLP sites: moments, histogram, min/max, fraction active, top-k (32),
                       bottom-k (8), 32 random samples; contexts kept for every example
- ours layer 6 (early stop): profile() of blocks.6 only; the forward stops after block 6
- ours all layers, moments only: top_k=1, bottom_k=0, n_samples=0 (what the examples cost)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from neuron_core import ModelInterface, load_model, profile
from neuron_core.batching import Batch, make_batches, split_ids
from neuron_core.corpus import builtin_corpus


def _batches(tok, n_batches: int, batch_size: int, seq: int) -> list[list[int]]:
    ids: list[int] = []
    for text in builtin_corpus().texts():
        ids.extend(tok(text + "\n")["input_ids"])
        if len(ids) >= n_batches * batch_size * seq:
            break
    rows = [ids[i * seq:(i + 1) * seq] for i in range(n_batches * batch_size)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from transformers import GPT2Config, GPT2LMHeadModel

    tok = load_model("smollm2-135m", device="cpu").tokenizer  # GPT-2's tokenizer is not available offline
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval().to(device)  # GPT-2 small shape, random weights
    interface = ModelInterface(model, tokenizer=tok, name="gpt2-small-random")
    rows = _batches(tok, args.batches, args.batch_size, args.seq)
    segments = [s for i, r in enumerate(rows) for s in split_ids(r, i, context_length=1024)]
    batches: list[Batch] = [b.to(device) for b in make_batches(segments, batch_size=args.batch_size, pad_id=0)]
    n_tokens = sum(len(r) for r in rows)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def hf_forward() -> None:
        with torch.no_grad():
            for b in batches:
                model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    def hf_trunk() -> None:
        with torch.no_grad():
            for b in batches:
                model.transformer(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    def ours(sites, **kw) -> Callable[[], None]:
        def run() -> None:
            profile(interface, sites, rows, batch_size=args.batch_size, progress=False, **kw)
        return run

    variants: dict[str, Callable[[], None]] = {
        "hf forward": hf_forward,
        "hf trunk forward (no LM head)": hf_trunk,
        "ours all 12 layers (moments+hist+top-k+samples)": ours(None),
        "ours all 12 layers, moments+hist only": ours(None, top_k=1, bottom_k=0, n_samples=0),
        "ours layer 6 only (early stop)": ours(["blocks.6.mlp.hook_post"]),
    }
    for fn in variants.values():  # warm-up
        fn()
        sync()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():  # interleaved: every round runs every variant once
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)

    base = statistics.median(times["hf forward"])
    print(f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"device {device}; torch {torch.__version__}")
    print(f"model: GPT2Config() random weights (12 layers, 3072 neurons/layer); {len(batches)} batches of "
          f"{args.batch_size}x{args.seq} = {n_tokens} tokens; {args.rounds} interleaved rounds, medians\n")
    print("| variant | median s | tokens/s | time ratio vs hf forward |")
    print("|---|---:|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | {n_tokens / med:,.0f} | {med / base:.3f} |")


if __name__ == "__main__":
    main()
