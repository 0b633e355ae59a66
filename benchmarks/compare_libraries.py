"""Same statistics, three libraries: our streaming profiles against TransformerLens and nnsight, on the same batches.

    python benchmarks/compare_libraries.py [--rounds 3] [--batches 8] [--batch-size 8] [--seq 128]
        [--device cpu|cuda] [--model gpt2-random|smollm2] [--json OUT]

Needs the benchmark environment (`make bench` builds `.venv-bench`: TransformerLens 4.x, nnsight, psutil).
One process, one model (``gpt2-random``: GPT2Config() with random weights, seed 0, i.e. GPT-2 small's shape;
``smollm2``: SmolLM2-135M's real weights from the bundled GGUF), the same pre-tokenised batches (the built-in corpus,
concatenated and cut into rows of ``--seq`` tokens, no padding) for every variant, a warm-up, several interleaved
rounds, medians. Peak memory comes from one more pass of each variant after the timed rounds (the sampling thread
stays out of the timings). Variants:

- hf forward:          model(input_ids, attention_mask, use_cache=False) under no_grad, the full causal LM
- ours capture:        ActivationMonitor.trace() around that forward, all MLP sites, then the competitors' statistics
                       helper (StreamingStats in _common.py) on the captured activations (trace(keep_on="device"):
                       on CUDA the record stays on the GPU, as nnsight's saved tensors do)
- ours profile:        profile() of all MLP sites, defaults (moments, histogram, fraction active, top-32 and bottom-8
                       with contexts, 32 random samples); the forward stops after the last block (no LM head)
- ours profile top-32: profile(top_k=32, bottom_k=0, n_samples=0): the competitors' statistics plus what ours always
                       keeps (histogram, fraction active, the top-32's documents, positions and contexts)
- ours layer L:        profile() of one middle layer; the forward stops after that block
- TransformerLens:     TransformerBridge (TL 4.x) over a copy of the same HF model, run_with_cache(names_filter=
                       *mlp.hook_post), then StreamingStats on each cached [batch, pos, d_mlp] tensor; also with
                       stop_at_layer=n_layers (no LM head, like ours)
- nnsight:             NNsight over a copy of the same HF model; .trace() saving every MLP site (GPT-2: the output of
                       mlp.act; gated MLPs: the input of mlp.down_proj), then StreamingStats

All competitors run under torch.no_grad(), on the model's device. The agreement table compares the statistics of
every variant that computes them with ours (profile, defaults), all layers: max abs difference per statistic.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download at run time
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    PeakMemory,
    StreamingStats,
    corpus_rows,
    load_tokenizer,
    machine_info,
    markdown_table,
    mib,
    release_memory,
    sync,
)

from neuron_core import ActivationMonitor, ModelInterface, load_model, profile  # noqa: E402
from neuron_core.batching import Batch, make_batches, split_ids  # noqa: E402

_T0 = time.perf_counter()


def _log(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f} s] {message}", file=sys.stderr, flush=True)


Stats = dict[str, torch.Tensor]  # per statistic: [n_layers, n_neurons] (top: [n_layers, n_neurons, k])


def _stack(per_layer: list[dict[str, torch.Tensor]]) -> Stats:
    return {key: torch.stack([layer[key] for layer in per_layer]) for key in per_layer[0]}


def _profile_stats(prof: Any, sites: list[str], k: int) -> Stats:
    per_layer = []
    for name in sites:
        sp = prof[name]
        per_layer.append({"mean": sp.mean.cpu(), "var": sp.var.cpu(), "min": sp.min.double().cpu(),
                          "max": sp.max.double().cpu(), "top": sp.stats.top.values[:, :k].double().cpu()})
    return _stack(per_layer)


def _traced_stats(model: torch.nn.Module, monitor: Any, batches: list[Any], sites: list[str], k: int,
                  device: torch.device) -> Stats:
    """Our full capture (``monitor.trace()``) of every site, then the shared statistics helper."""
    stats = [StreamingStats(k) for _ in sites]
    with torch.no_grad():
        for b in batches:
            # keep_on="device": on CUDA the record stays on the GPU (the default copies it to the host)
            with monitor.trace(keep_on="device") as record:
                model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
            for st, name in zip(stats, sites):
                st.add(record[name])  # padding already removed: [n_tokens, d_mlp], on the model's device
    return _stack([st.result() for st in stats])


def _agreement(ref: Stats, other: Stats) -> dict[str, float]:
    return {key: float((ref[key] - other[key]).abs().max()) for key in ("mean", "var", "min", "max", "top")}


def build_model(name: str, device: torch.device, tokenizer_path: str | None) -> tuple[torch.nn.Module, Any, str, str]:
    """(model, tokenizer, description, folder or name for TransformerLens)."""
    if name == "gpt2-random":
        from transformers import GPT2Config, GPT2LMHeadModel

        tok = load_tokenizer(tokenizer_path)
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config()).eval().to(device)
        return model, tok, "GPT2Config() random weights (seed 0; GPT-2 small's shape)", "gpt2-random"
    if name == "smollm2":
        lm = load_model("smollm2-135m", device=device)
        folder = str(getattr(lm.model.config, "_name_or_path", "") or "smollm2-135m")
        desc = "SmolLM2-135M-Instruct, real weights (bundled GGUF Q4_1, dequantised)"
        return lm.model.eval(), lm.tokenizer, desc, folder
    raise SystemExit(f"unknown --model {name!r}")


def nnsight_site(nn_model: Any, family: str, layer: int) -> Any:
    """The proxy of layer ``layer``'s neurons, written as an nnsight user would."""
    if family == "gpt2":
        return nn_model.transformer.h[layer].mlp.act.output
    if family in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"):
        return nn_model.model.layers[layer].mlp.down_proj.input
    raise NotImplementedError(f"no nnsight site written for family {family!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="gpt2-random", choices=["gpt2-random", "smollm2"])
    parser.add_argument("--layer", type=int, default=None, help="the single-layer variant's layer (default: middle)")
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads for every variant (0: the default)")
    parser.add_argument("--tokenizer", default=None, help=f"tokenizer folder (default: ${'{'}NW_BENCH_TOKENIZER{'}'} "
                        "or SmolLM2's from the bundled GGUF)")
    parser.add_argument("--skip", default="", help="comma-separated libraries to leave out: tl, nnsight")
    parser.add_argument("--json", default=None, help="also write the results as JSON to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    k = args.top_k
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    _log("loading the model")
    model, tok, model_desc, tl_name = build_model(args.model, device, args.tokenizer)
    interface = ModelInterface(model, tokenizer=tok, name=args.model)
    family = interface.loaded.family
    n_layers = interface.n_layers
    sites = [f"blocks.{i}.mlp.hook_post" for i in range(n_layers)]
    layer = n_layers // 2 if args.layer is None else args.layer
    rows = corpus_rows(tok, args.batches * args.batch_size, args.seq)
    segments = [s for i, r in enumerate(rows) for s in split_ids(r, i, context_length=None)]
    batches: list[Batch] = [b.to(device) for b in make_batches(segments, batch_size=args.batch_size, pad_id=0)]
    n_tokens = sum(len(r) for r in rows)

    results: dict[str, Stats] = {}  # the last statistics each variant computed
    failed: dict[str, str] = {}

    def hf_forward() -> None:
        with torch.no_grad():
            for b in batches:
                model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    monitor = ActivationMonitor(interface)
    monitor.register_layers(sites)

    def ours_capture() -> Stats:
        return _traced_stats(model, monitor, batches, sites, k, device)

    def ours(chosen: list[str] | None, **kw: Any) -> Callable[[], Stats | None]:
        def run() -> Stats | None:
            prof = profile(interface, chosen, rows, batch_size=args.batch_size, progress=False, **kw)
            return _profile_stats(prof, sites, k) if chosen is None else None
        return run

    variants: dict[str, Callable[[], Any]] = {
        "hf forward": hf_forward,
        f"ours: capture all {n_layers} layers (trace, kept on the device) + same stats helper": ours_capture,
        f"ours: profile all {n_layers} layers (defaults: moments, hist, top-{k}/bottom-8 + contexts, 32 samples)":
            ours(None, top_k=k),
        f"ours: profile all {n_layers} layers, top-{k} only (+ hist, contexts)": ours(None, top_k=k, bottom_k=0,
                                                                                       n_samples=0),
        f"ours: profile layer {layer} only (early stop)": ours([sites[layer]], top_k=k),
    }
    ours_ref = list(variants)[2]
    ours_same = list(variants)[3]

    _log("booting TransformerLens")
    # --- TransformerLens ------------------------------------------------------------------------------------
    tl_info = "not run"
    bridge: Any = None
    if "tl" not in skip:
        try:
            from transformer_lens.model_bridge import TransformerBridge

            # The bridge switches its model to eager attention in place: give it its own copy of the same weights.
            bridge = TransformerBridge.boot_transformers(tl_name, hf_model=copy.deepcopy(model), tokenizer=tok,
                                                         device=device)
            bridge.eval()
            hook_names = [n for n in bridge.hook_dict if n.endswith("mlp.hook_post")]
            if len(hook_names) != n_layers:
                raise RuntimeError(f"expected {n_layers} mlp.hook_post hooks, found {len(hook_names)}")
            tl_info = (f"TransformerBridge.boot_transformers({tl_name!r}, hf_model=<copy of the model>, "
                       f"tokenizer=<ours>, device={str(device)!r}), default (non-compatibility) mode, attention "
                       f"{bridge.original_model.config._attn_implementation} (the bridge forces eager; ours and "
                       f"nnsight run the model's default, {model.config._attn_implementation})")

            def tl_run(stop: int | None) -> Callable[[], Stats]:
                def run() -> Stats:
                    stats = [StreamingStats(k) for _ in sites]
                    with torch.no_grad():
                        for b in batches:
                            _, cache = bridge.run_with_cache(
                                b.input_ids, attention_mask=b.attention_mask, stop_at_layer=stop,
                                names_filter=lambda name: name.endswith("mlp.hook_post"))
                            mask = b.attention_mask.bool()
                            for i, st in enumerate(stats):
                                st.add(cache[f"blocks.{i}.mlp.hook_post"], mask)
                    return _stack([st.result() for st in stats])
                return run

            variants["TransformerLens: run_with_cache(hook_post) + same stats helper"] = tl_run(None)
            variants[f"TransformerLens: same, stop_at_layer={n_layers} (no LM head)"] = tl_run(n_layers)
        except Exception as exc:  # noqa: BLE001 - report a library that cannot run this model, don't crash
            failed["TransformerLens"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()

    # --- nnsight --------------------------------------------------------------------------------------------
    if "nnsight" not in skip:
        try:
            from nnsight import NNsight

            nn_model = NNsight(copy.deepcopy(model))

            def nnsight_run() -> Stats:
                stats = [StreamingStats(k) for _ in sites]
                with torch.no_grad():
                    for b in batches:
                        saved: list[Any] = []
                        with nn_model.trace(input_ids=b.input_ids, attention_mask=b.attention_mask,
                                            use_cache=False):
                            for i in range(n_layers):
                                saved.append(nnsight_site(nn_model, family, i).save())
                        mask = b.attention_mask.bool()
                        for st, acts in zip(stats, saved):
                            st.add(acts, mask)
                return _stack([st.result() for st in stats])

            variants["nnsight: trace, save every MLP site + same stats helper"] = nnsight_run
        except Exception as exc:  # noqa: BLE001
            failed["nnsight"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()

    _log("warm-up")
    # --- warm-up, interleaved rounds, memory pass -------------------------------------------------------------
    for name in list(variants):
        try:
            out = variants[name]()
            sync(device)
            if out is not None:
                results[name] = out
        except Exception as exc:  # noqa: BLE001
            failed[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            del variants[name]
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        _log(f"round {r + 1} of {args.rounds}")
        for name, fn in variants.items():  # interleaved: every round runs every variant once
            sync(device)
            start = time.perf_counter()
            out = fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
            if out is not None:
                results[name] = out
    _log("memory pass")
    peaks: dict[str, int] = {}
    for name, fn in variants.items():
        release_memory(device)
        with PeakMemory(device) as mem:
            fn()
        peaks[name] = mem.peak_bytes

    # Reference, not timed: our capture on the bridge's own HF module (eager attention). Its agreement with the
    # TransformerLens rows shows whether a difference comes from the site (it would stay) or from the attention
    # kernel (it vanishes).
    eager_ref = "reference (not timed): ours capture on an eager-attention copy of the model"
    if bridge is not None and any(n.startswith("TransformerLens") for n in variants):
        try:
            eager_model = copy.deepcopy(model)  # the bridge's own copy is wrapped in its components
            if hasattr(eager_model, "set_attn_implementation"):
                eager_model.set_attn_implementation("eager")
            else:
                eager_model.config._attn_implementation = "eager"
            eager_monitor = ActivationMonitor(ModelInterface(eager_model, tokenizer=tok, name="tl-eager-copy"))
            eager_monitor.register_layers(sites)
            results[eager_ref] = _traced_stats(eager_model, eager_monitor, batches, sites, k, device)
            del eager_model, eager_monitor
        except Exception as exc:  # noqa: BLE001
            failed[eager_ref] = f"{type(exc).__name__}: {exc}"

    _log("done")
    # --- report ---------------------------------------------------------------------------------------------
    info = machine_info()
    base = statistics.median(times["hf forward"])
    med = {name: statistics.median(ts) for name, ts in times.items()}
    where = info["gpu"] if device.type == "cuda" else f"{info['cpu']}, {info['torch_threads']} torch threads"
    print(f"\ndevice: {device} ({where}); torch {info['versions']['torch']}, transformers "
          f"{info['versions']['transformers']}, transformer-lens {info['versions']['transformer-lens']}, "
          f"nnsight {info['versions']['nnsight']}")
    print(f"model: {model_desc}, {n_layers} layers, {interface.loaded.d_mlp} neurons per MLP; {len(batches)} batches "
          f"of {args.batch_size}x{args.seq} = {n_tokens:,} tokens; {args.rounds} interleaved rounds, medians")
    if tl_info != "not run":
        print(f"TransformerLens: {tl_info}")
    mem_what = ("peak RSS above the start, sampled every 2 ms" if device.type == "cpu"
                else "torch.cuda.max_memory_allocated above the start")
    print(f"peak memory: {mem_what}, one extra pass per variant after the timed rounds\n")
    rows_out = [[name, f"{med[name]:.3f}", f"{n_tokens / med[name]:,.0f}", f"{med[name] / base:.3f}",
                 mib(peaks.get(name))] for name in variants]
    print(markdown_table(["variant", "median s", "tokens/s", "time ratio vs hf forward", "peak MiB"], rows_out))
    for name, why in failed.items():
        print(f"\n**failed**: {name}: {why}")

    agreement: dict[str, dict[str, float]] = {}
    if ours_ref in results:
        ref = results[ours_ref]
        scale = float(max(ref["max"].abs().max(), ref["min"].abs().max()))
        for name, stats in results.items():
            if name != ours_ref:
                agreement[name] = _agreement(ref, stats)
        print(f"\nAgreement with `{ours_ref}`, all {n_layers} layers x {interface.loaded.d_mlp} neurons: max abs "
              f"difference (float32 activations, float64 statistics; largest |activation| {scale:.3g})\n")
        print(markdown_table(["variant", "mean", "variance", "min", "max", f"top-{k} values"],
                             [[name, *(f"{v:.2e}" for v in a.values())] for name, a in agreement.items()]))
        tl_main = next((n for n in results if n.startswith("TransformerLens")), None)
        if eager_ref in results and tl_main is not None:
            same = _agreement(results[eager_ref], results[tl_main])
            agreement[f"{tl_main} vs {eager_ref}"] = same
            worst = max(max(a.values()) for name, a in agreement.items() if not name.startswith("ours"))
            if worst / scale >= 1e-5:
                verdict = "**larger than float32 rounding: check the site**"
            elif max(same.values()) == 0:
                verdict = (f"the same site in every library (differences at most {worst / scale:.1e} of the largest "
                           "activation): TransformerLens equals our capture on the eager copy bit for bit, so what "
                           f"differs above is eager vs {model.config._attn_implementation} attention")
            else:
                verdict = (f"the same site in every library: what differs is float32 rounding (at most "
                           f"{worst / scale:.1e} of the largest activation); the bridge recomputes normalisation and "
                           "attention in its own components (on GPT-2, block 0's ln1 output already differs from "
                           "Hugging Face's eager forward by ~7e-7)")
            print("\nTransformerLens against our capture on an eager-attention copy: max abs difference "
                  + ", ".join(f"{key} {v:.2e}" for key, v in same.items()) + f". Verdict: {verdict}.")

    ratios: dict[str, float] = {}
    tl_names = [n for n in variants if n.startswith("TransformerLens")]
    lines = []
    if ours_ref in med:
        ratios["ours all-layer profile / hf forward (time)"] = med[ours_ref] / base
        lines.append(f"- all-layer profile with top-k, time vs the plain forward: {med[ours_ref] / base:.2f}x "
                     f"(goal <= 1.12x); top-{k} only: {med[ours_same] / base:.2f}x")
    for tl in tl_names:
        for ours_name in (ours_same, ours_ref):
            r = med[tl] / med[ours_name]
            ratios[f"throughput {ours_name} / {tl}"] = r
        lines.append(f"- throughput vs `{tl}`: ours top-{k} only {med[tl] / med[ours_same]:.2f}x, ours defaults "
                     f"{med[tl] / med[ours_ref]:.2f}x (goal >= 1.3x)")
    nn_names = [n for n in variants if n.startswith("nnsight")]
    for nn_name in nn_names:
        lines.append(f"- throughput vs nnsight: ours top-{k} only {med[nn_name] / med[ours_same]:.2f}x, ours defaults "
                     f"{med[nn_name] / med[ours_ref]:.2f}x")
    if lines:
        print("\n" + "\n".join(lines))

    if args.json:
        payload = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "args": vars(args), "machine": info,
                   "model": model_desc, "n_tokens": n_tokens, "n_layers": n_layers,
                   "variants": {n: {"times_s": times[n], "median_s": med[n], "tokens_per_s": n_tokens / med[n],
                                    "ratio_vs_hf_forward": med[n] / base, "peak_bytes": peaks.get(n)}
                                for n in variants},
                   "failed": failed, "agreement": agreement, "ratios": ratios, "transformer_lens": tl_info}
        Path(args.json).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
