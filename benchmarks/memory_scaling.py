"""Peak memory of a streaming profile at 10k, 100k and 1M tokens: it should not grow with the corpus.

    python benchmarks/memory_scaling.py [--tokens 10000,100000,1000000] [--model smollm2] [--layer 1]
        [--batch-size 16] [--device cpu|cuda] [--json OUT]

Each token count runs in a fresh subprocess: load the model, note the RSS, then ``profile()`` of one layer (default:
layer 1 of SmolLM2-135M, real weights; the forward stops after that block, so 1M tokens take minutes on 2 CPU cores)
with the default statistics (moments, histogram, top-32 and bottom-8 with contexts, 32 random samples), over the
built-in corpus (3,514 lines, one document each, about 66k SmolLM2 tokens) repeated as often as needed, cut at exactly
the token budget. Reported: seconds, peak RSS during the profile (sampled every 5 ms by a thread), the process's
ru_maxrss (the load included) and, on CUDA, torch.cuda.max_memory_allocated. ``--model gpt2-random`` (GPT2Config()
with random weights) is for machines without the bundled SmolLM2 weights, e.g. the GPU machine; ``--layer all``
profiles every MLP site.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))


def child(args: argparse.Namespace) -> dict[str, Any]:
    import psutil
    import torch
    from _common import PeakMemory, load_tokenizer, release_memory, sync

    from neuron_core import ModelInterface, load_model, profile
    from neuron_core.corpus import builtin_corpus

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    proc = psutil.Process()
    if args.model == "smollm2":
        lm = load_model("smollm2-135m", device=device)
        interface = ModelInterface(lm)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        tok = load_tokenizer(args.tokenizer)
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config()).eval().to(device)
        interface = ModelInterface(model, tokenizer=tok, name="gpt2-random")
    texts = list(builtin_corpus().texts())
    repeats = args.n_tokens // 60_000 + 2  # the corpus holds about 66k tokens; max_tokens cuts exactly
    corpus = texts * repeats
    sites = None if args.layer == "all" else [int(args.layer)]
    release_memory(device)
    rss_load = proc.memory_info().rss
    cuda_load = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    start = time.perf_counter()
    with PeakMemory("cpu", interval=0.005) as cpu_mem:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        prof = profile(interface, sites, corpus, batch_size=args.batch_size, max_tokens=args.n_tokens,
                       progress=False)
        sync(device)
    seconds = time.perf_counter() - start
    return {"n_tokens": prof.n_tokens, "n_docs": prof.meta["n_docs"], "seconds": seconds, "rss_load": rss_load,
            "peak_rss": cpu_mem.peak_abs_bytes, "peak_rss_above_load": cpu_mem.peak_abs_bytes - rss_load,
            "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "cuda_load": cuda_load,
            "cuda_peak": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            "n_layers_profiled": len(prof.sites), "sites": list(prof.sites), "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="10000,100000,1000000", help="comma-separated token counts")
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "gpt2-random"])
    parser.add_argument("--layer", default="1", help="layer index, or 'all'")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder for gpt2-random (see _common.py)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per token count")
    parser.add_argument("--json", default=None)
    parser.add_argument("--n-tokens", type=int, default=None, help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    if args.n_tokens is not None:
        print("RESULT " + json.dumps(child(args)))
        return

    from _common import machine_info, markdown_table, mib

    counts = [int(float(t)) for t in args.tokens.split(",") if t.strip()]
    results: list[dict[str, Any]] = []
    for n in counts:
        cmd = [sys.executable, __file__, "--n-tokens", str(n), "--model", args.model, "--layer", args.layer,
               "--batch-size", str(args.batch_size), "--device", args.device, "--threads", str(args.threads)]
        if args.tokenizer:
            cmd += ["--tokenizer", args.tokenizer]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
        except subprocess.TimeoutExpired:
            results.append({"n_tokens": n, "error": f"timed out after {args.timeout:.0f} s"})
            continue
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if done.returncode != 0 or line is None:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            results.append({"n_tokens": n, "error": f"exit {done.returncode}: {' / '.join(tail)}"})
            continue
        results.append(json.loads(line[len("RESULT "):]))

    info = machine_info()
    ok = [r for r in results if "error" not in r]
    model = ("SmolLM2-135M (real weights)" if args.model == "smollm2"
             else "GPT2Config() random weights (GPT-2 small's shape)")
    where = ((info["gpu"] or "cuda") if args.device == "cuda"
             else f"{info['cpu']}, {ok[0]['torch_threads'] if ok else '?'} torch threads")
    print(f"\ndevice: {args.device} ({where}); model: {model}; profile of "
          f"{'every MLP site' if args.layer == 'all' else f'layer {args.layer} (early stop)'}, default statistics, "
          f"batch size {args.batch_size}; corpus: the built-in corpus repeated (cycled) up to the token count; "
          f"one fresh process per row")
    if ok:
        print(f"RSS after loading the model (baseline): {mib(ok[0]['rss_load'])} MiB"
              + (f"; CUDA memory after loading: {mib(ok[0]['cuda_load'])} MiB" if args.device == "cuda" else "")
              + "\n")
    base = next((r for r in ok if r["n_tokens"] == min(counts)), None)
    header = ["tokens", "seconds", "tokens/s", "peak RSS MiB", "peak RSS above load MiB", f"delta vs {min(counts):,}"]
    if args.device == "cuda":
        header += ["CUDA peak MiB", "CUDA delta"]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([f"{r['n_tokens']:,}", r["error"], *([""] * (len(header) - 2))])
            continue
        row = [f"{r['n_tokens']:,}", f"{r['seconds']:.1f}", f"{r['n_tokens'] / r['seconds']:,.0f}", mib(r["peak_rss"]),
               mib(r["peak_rss_above_load"]),
               "" if base is None else f"{(r['peak_rss'] - base['peak_rss']) / 2**20:+,.0f} MiB"]
        if args.device == "cuda":
            row += [mib(r["cuda_peak"]),
                    "" if base is None else f"{(r['cuda_peak'] - base['cuda_peak']) / 2**20:+,.1f} MiB"]
        rows.append(row)
    print(markdown_table(header, rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "machine": info, "results": results}, indent=2))


if __name__ == "__main__":
    main()
