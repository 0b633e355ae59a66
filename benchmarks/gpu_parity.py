"""CUDA against CPU: the same captures and profiles on both devices, compared number by number.

    python benchmarks/gpu_parity.py [--tokens 6000]        (needs a CUDA device; prints a markdown table)

Checks (each a row: measured value, tolerance, pass/fail; the exit code is 1 if any fails):

1. Capture parity, GPT-2-small-sized random model and a small Llama-style (gated MLP) random model: every MLP site
   captured on CUDA equals the CPU capture of the same padded batch (float32, TF32 off).
2. Profile parity, all 12 layers of the random GPT-2 over the built-in corpus: mean, variance, min, max, fraction
   active, histogram totals and top-k values on CUDA against CPU; the top-k tokens agree (up to near-ties).
3. The accelerator statistics path (``sync_free``: fixed shapes, no host sync) on CUDA against the CPU path on the
   very same activations: equal example sets, moments to float64 rounding; and ``SiteStats.add`` on CUDA runs under
   ``torch.cuda.set_sync_debug_mode("error")``: not one host sync per batch.
   The whole profile loop (token index, places, contexts, statistics) runs under ``set_sync_debug_mode("warn")``:
   no warning may come from neuron_core's own lines (the model's forward may sync; that is not ours to change).
4. A bfloat16 copy of the model on CUDA: statistics still accumulate in float64 and stay within bfloat16's error of
   the float32 CPU profile.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_tokenizer  # noqa: E402

from neuron_core import ActivationMonitor, ModelInterface, profile  # noqa: E402
from neuron_core.corpus import builtin_corpus  # noqa: E402
from neuron_core.stats import SiteStats, StatsConfig  # noqa: E402

ROWS: list[tuple[str, str, str, bool]] = []
DEV = "cuda"  # --dry-run: "cpu" (the plumbing only: CPU against CPU)


def check(name: str, value: float, tol: float, *, fmt: str = ".2e") -> None:
    ok = value <= tol
    ROWS.append((name, format(value, fmt), format(tol, fmt), ok))
    print(f"  {name}: {value:{fmt}} (tolerance {tol:{fmt}}) {'ok' if ok else 'FAIL'}", flush=True)


def gpt2_random(seed: int = 0) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config()).eval()


def llama_random(seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()


def capture_parity(name: str, model: torch.nn.Module, tok, texts: list[str]) -> None:
    records = {}
    for device in ("cpu", DEV):
        interface = ModelInterface(model.to(device), tokenizer=tok, name=name)
        monitor = ActivationMonitor(interface)
        monitor.register_layers(list(range(interface.resolver.n_layers)))
        records[device] = monitor.capture(texts)
    cpu, gpu = records["cpu"], records[DEV]
    assert cpu.sites == gpu.sites and cpu.tokens == gpu.tokens
    worst = max(float((cpu[s] - gpu[s].cpu()).abs().max()) for s in cpu.sites)
    scale = max(float(cpu[s].abs().max()) for s in cpu.sites)
    check(f"{name}: capture, max abs(cuda - cpu) over {len(cpu.sites)} sites / max abs(x) = {scale:.2f}", worst, 1e-4)
    model.to("cpu")


def profile_parity(tok, texts: list[str], max_tokens: int) -> None:
    model = gpt2_random()
    profs = {}
    for key, device in (("cpu", "cpu"), ("gpu", DEV)):
        interface = ModelInterface(model.to(device), tokenizer=tok, name="gpt2-random")
        profs[key] = profile(interface, None, texts, batch_size=8, max_tokens=max_tokens, progress=False)
    cpu, gpu = profs["cpu"], profs["gpu"]
    worst = {k: 0.0 for k in ("mean", "var", "min", "max", "frac_active", "top")}
    hist_moved, top_agree, top_total, count_diff = 0.0, 0, 0, 0.0
    for site in cpu.site_names:
        a, b = cpu[site], gpu[site]
        count_diff = max(count_diff, float((a.count - b.count.cpu()).abs().max()))
        for k in ("mean", "var", "min", "max", "frac_active"):
            worst[k] = max(worst[k], float((getattr(a, k) - getattr(b, k).cpu()).abs().max()))
        ta, tb = a.stats.top, b.stats.top
        worst["top"] = max(worst["top"], float((ta.values - tb.values.cpu()).abs().max()))
        same = (ta.doc == tb.doc.cpu()) & (ta.pos == tb.pos.cpu())
        top_agree += int(same.sum())
        top_total += same.numel()
        hist_moved = max(hist_moved, float((a.hist - b.hist.cpu()).abs().sum() / (2 * a.hist.sum())))
    n_tok = int(cpu[cpu.site_names[0]].count[0])
    check(f"profile, 12 layers, {n_tok} tokens: token counts differ by", count_diff, 0.0, fmt=".0f")
    for k, tol in (("mean", 1e-5), ("var", 1e-4), ("min", 1e-4), ("max", 1e-4), ("top", 1e-4)):
        check(f"profile: max abs(cuda - cpu) of {k}", worst[k], tol)
    check("profile: max abs(cuda - cpu) of fraction active (values at the threshold may flip)", worst["frac_active"],
          2e-3)
    check("profile: histogram mass in another bin (values at bin edges may move)", hist_moved, 1e-3)
    # Informational bound: float rounding differs between devices (~1e-6), so tokens within that of each other may
    # swap places; the values held at every rank agree (the "top" row above).
    check("profile: top-k slots holding a different token (near-ties swap; values per rank agree above)",
          1 - top_agree / top_total, 0.05)
    model.to("cpu")


def sync_free_parity(tok, texts: list[str], max_tokens: int) -> None:
    model = gpt2_random().to(DEV)
    interface = ModelInterface(model, tokenizer=tok, name="gpt2-random")
    monitor = ActivationMonitor(interface)
    monitor.register_layers([6])
    record = monitor.capture(texts[:300])
    site = record.sites[0]
    acts = record[site].to(DEV)  # records keep their tensors on the CPU
    n = min(acts.shape[0], max_tokens)
    acts = acts[:n].contiguous()
    acts[::7, 3] = torch.round(acts[::7, 3])  # ties
    acts[5, 7], acts[9, 100], acts[13, 200] = math.nan, math.inf, -math.inf  # left out by both paths
    doc = torch.as_tensor(record.doc_ids[:n], dtype=torch.long)
    pos = torch.as_tensor(record.positions[:n], dtype=torch.long)
    ctx = torch.randint(0, 1000, (n, StatsConfig().context_width), dtype=torch.int32)
    cfg = StatsConfig()
    cpu_stats = SiteStats(acts.shape[1], config=cfg)
    gpu_stats = SiteStats(acts.shape[1], config=cfg, device=DEV, sync_free=True)
    step = 512
    acts_cpu = acts.cpu()
    d_gpu, p_gpu, c_gpu = doc.to(DEV), pos.to(DEV), ctx.to(DEV)
    # The first add compiles the batch pass (torch.compile; compiling may synchronise): outside the check, and on
    # a stand-in object so the compared statistics see every batch exactly once.
    import warnings

    from neuron_core import stats_device as stats_mod

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SiteStats(acts.shape[1], config=cfg, device=DEV, sync_free=True).add(acts[:step], d_gpu[:step], p_gpu[:step],
                                                                             c_gpu[:step])
    fell_back = [w for w in caught if "torch.compile" in str(w.message)]
    compiled = DEV != "cpu" and stats_mod.is_compiled("_batch_pass", DEV) and stats_mod.is_compiled("_update_set", DEV)
    print(f"  batch pass compiled with torch.compile: {compiled}"
          + (f" (fell back: {fell_back[0].message})" if fell_back else ""))
    if DEV == "cuda":
        check("sync-free path: torch.compile of the batch pass failed (eager fallback)", float(bool(fell_back)), 0.0,
              fmt=".0f")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(0, n, step):
            gpu_stats.add(acts[i:i + step], d_gpu[i:i + step], p_gpu[i:i + step], c_gpu[i:i + step])
        synced = 0.0
    except RuntimeError as err:
        print(f"  host sync inside SiteStats.add on CUDA: {err}")
        synced = 1.0
    finally:
        if DEV == "cuda":
            torch.cuda.set_sync_debug_mode(0)
    check("SiteStats.add on CUDA: batches that forced a host sync", synced, 0.0, fmt=".0f")
    if synced:
        return
    for i in range(0, n, step):
        cpu_stats.add(acts_cpu[i:i + step], doc[i:i + step], pos[i:i + step], ctx[i:i + step])
    gpu_stats.to("cpu")
    check(f"sync-free CUDA vs CPU path, same {n} activations: max abs(mean diff)",
          float((cpu_stats.mean - gpu_stats.mean).abs().max()), 1e-12)
    check("sync-free CUDA vs CPU path: max abs(var diff)", float((cpu_stats.var - gpu_stats.var).abs().max()), 1e-10)
    mismatched = 0
    for name in ("top", "bottom", "sample"):
        a, b = getattr(cpu_stats, name), getattr(gpu_stats, name)
        for field in ("values", "doc", "pos", "ctx"):
            mismatched += int(not torch.equal(getattr(a, field), getattr(b, field)))
    check("sync-free CUDA vs CPU path: example-set fields that differ (of 12)", float(mismatched), 0.0, fmt=".0f")
    differ = sum(not torch.equal(getattr(cpu_stats, f), getattr(gpu_stats, f))
                 for f in ("min", "max", "n_nonfinite", "n_active", "count"))
    check("sync-free CUDA vs CPU path: of min, max, n_nonfinite, n_active, count, fields that differ", float(differ),
          0.0, fmt=".0f")
    hist_equal = torch.equal(cpu_stats.hist, gpu_stats.hist)
    check("sync-free CUDA vs CPU path: histogram differs", float(not hist_equal), 0.0, fmt=".0f")


def profile_loop_syncs(tok, texts: list[str], max_tokens: int) -> None:
    """A 12-layer profile on CUDA under ``set_sync_debug_mode("warn")``: every operation that makes the host wait
    for the device warns; count those raised from neuron_core's own lines (the model's forward is not ours)."""
    import warnings

    model = gpt2_random().to(DEV)
    interface = ModelInterface(model, tokenizer=tok, name="gpt2-random")
    profile(interface, None, texts[:40], batch_size=8, max_tokens=2000, progress=False)  # warm-up
    ours, theirs, where = 0, 0, set()
    if DEV == "cuda":
        torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if DEV == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            prof = profile(interface, None, texts, batch_size=8, max_tokens=max_tokens, progress=False)
        finally:
            if DEV == "cuda":
                torch.cuda.set_sync_debug_mode(0)
    for w in caught:
        if "synchroniz" not in str(w.message):
            continue
        if "neuron_core" in w.filename:
            ours += 1
            where.add(f"{Path(w.filename).name}:{w.lineno}")
        else:
            theirs += 1
    print(f"  profile loop on CUDA: {ours} syncs from neuron_core ({', '.join(sorted(where)) or 'none'}), "
          f"{theirs} from other code (the model, transformers); {int(prof.meta['n_tokens'])} tokens")
    check("profile loop (12 layers, tokens, contexts, statistics): host syncs raised in neuron_core's code",
          float(ours), 0.0, fmt=".0f")
    model.to("cpu")


def bf16_profile(tok, texts: list[str], max_tokens: int) -> None:
    model = gpt2_random()
    ref = profile(ModelInterface(model, tokenizer=tok, name="f32"), [6], texts, batch_size=8,
                  max_tokens=max_tokens, progress=False)
    half = profile(ModelInterface(model.to(DEV, torch.bfloat16), tokenizer=tok, name="bf16"), [6], texts,
                   batch_size=8, max_tokens=max_tokens, progress=False)
    site = ref.site_names[0]
    check("bf16 model on CUDA: statistics dtype is float64", float(half[site].mean.dtype != torch.float64), 0.0,
          fmt=".0f")
    scale = float(ref[site].std.mean())
    err = float((ref[site].mean - half[site].mean.cpu()).abs().max()) / scale
    check("bf16 model on CUDA: max abs(mean - float32 CPU mean) / mean std", err, 0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=6000)
    parser.add_argument("--dry-run", action="store_true", help="CPU against CPU: check the script's plumbing")
    args = parser.parse_args()
    global DEV
    if args.dry_run:
        DEV = "cpu"
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_parity.py needs a CUDA device (or --dry-run)")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tok = load_tokenizer()
    texts = builtin_corpus().texts()[:1500]
    name = torch.cuda.get_device_name() if DEV == "cuda" else "CPU (dry run: CPU against CPU)"
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    capture_parity("GPT-2-small-sized random", gpt2_random(), tok, texts[:24])
    capture_parity("Llama-style random (gated MLP)", llama_random(), tok, texts[:24])
    profile_parity(tok, texts, args.tokens)
    sync_free_parity(tok, texts, args.tokens)
    profile_loop_syncs(tok, texts, args.tokens)
    bf16_profile(tok, texts, args.tokens)
    print("\n| check | measured | tolerance | result |")
    print("|---|---:|---:|---|")
    for name, value, tol, ok in ROWS:
        print(f"| {name} | {value} | {tol} | {'pass' if ok else '**FAIL**'} |")
    failed = sum(not ok for *_, ok in ROWS)
    print(f"\n{len(ROWS) - failed} of {len(ROWS)} checks pass.")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
