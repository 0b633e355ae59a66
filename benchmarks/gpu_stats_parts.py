"""Where the time of ``SiteStats.add`` goes on a GPU: each part, and the primitives it could be built from.

    python benchmarks/gpu_stats_parts.py [--tokens 8192] [--neurons 3072] [--device cuda]

One site's batch (GPT-2 small's MLP width, 32 x 256 tokens) of GELU-shaped activations, several input sets in
rotation (so the L2 cache does not flatter), example sets warmed on earlier batches (the steady state of a long
profile). Times are medians of CUDA-event-timed repeats, in milliseconds, against the plain forward of the same
batch through a GPT-2-small-sized random model. Then the 25 costliest kernels of 12 ``add`` calls (one per layer) by
torch.profiler, and the host-side dispatch time of one ``add`` (when it exceeds the device time, the loop is
launch-bound, not bandwidth-bound). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuron_core.stats import SiteStats, StatsConfig  # noqa: E402

DEV = "cuda"


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[int], object], reps: int = 10, warm: int = 2) -> float:
    """Median milliseconds of fn(i) over ``reps`` calls (i rotates the input set), device-timed."""
    for i in range(warm):
        fn(i)
    sync()
    times = []
    for i in range(reps):
        if DEV == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(i)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(i)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--neurons", type=int, default=3072)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sets", type=int, default=4, help="input sets in rotation")
    parser.add_argument("--parts", action="store_true",
                        help="also time the primitives a statistics pass can be built from (the first run's table, "
                             "of the algorithm before 0aa8cde, is in benchmarks/results-gpu-parts.md)")
    args = parser.parse_args()
    global DEV
    DEV = args.device
    n, big_n = args.tokens, args.neurons
    torch.manual_seed(0)
    gen = [torch.nn.functional.gelu(torch.randn(n, big_n, device=DEV) * 1.5) for _ in range(args.sets)]
    doc = [torch.arange(n, device=DEV) // 256 + 1000 * s for s in range(args.sets)]
    pos = [torch.arange(n, device=DEV) % 256 for _ in range(args.sets)]
    cfg = StatsConfig()
    ctx = [torch.randint(0, 50000, (n, cfg.context_width), device=DEV, dtype=torch.int32) for _ in range(args.sets)]
    S = args.sets
    rows: list[tuple[str, float]] = []

    def row(name: str, ms: float) -> None:
        rows.append((name, ms))
        print(f"  {name}: {ms:.3f} ms", flush=True)

    # -- reference: the plain forward of the same batch ------------------------------------------------------
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config()).eval().to(DEV)
    ids = torch.randint(0, 50257, (n // 256, 256), device=DEV)
    with torch.inference_mode():
        fwd = timed(lambda i: model(input_ids=ids, use_cache=False), reps=5)
    row(f"plain forward, GPT-2-small-sized, {n} tokens (all 12 layers + LM head)", fwd)
    model = None  # free the weights before the statistics

    # -- the whole add, steady state ---------------------------------------------------------------------------
    stats = SiteStats(big_n, device=DEV, config=cfg, sync_free=True)
    for i in range(3):
        stats.add(gen[i % S], doc[i % S] + 10**6 * i, pos[i % S], ctx[i % S])
    counter = [100]

    def full_add(i: int) -> None:
        counter[0] += 1
        stats.add(gen[i % S], doc[i % S] + 10**6 * counter[0], pos[i % S], ctx[i % S])

    import neuron_core.stats_device as stats_mod

    compiled = stats_mod.is_compiled("_batch_pass", DEV) and stats_mod.is_compiled("_update_set", DEV)
    row(f"SiteStats.add, whole (sync-free path; batch pass compiled: {compiled}), one site", timed(full_add))
    stats_mod.COMPILE = False
    row("SiteStats.add, whole (sync-free path, batch pass eager)", timed(full_add))
    stats_mod.COMPILE = True
    # A/B in this process: the example sets' selection as before the two-stage top-k (one row-wise topk over all n
    # keys; chunk length 0 makes the batch pass return the [N, n] keys, compiled for that variant on first use)
    two_stage = stats_mod._chunk_size
    stats_mod._chunk_size = lambda k, n=0: 0
    row("SiteStats.add, whole, one-stage top-k over all n keys (the selection before b716292)",
        timed(full_add))
    stats_mod._chunk_size = two_stage
    sync()
    t0 = time.perf_counter()
    full_add(0)
    host = (time.perf_counter() - t0) * 1e3
    sync()
    row("SiteStats.add, host time to enqueue (no sync)", host)

    cpu_side = SiteStats(big_n, device=DEV, config=cfg, sync_free=False)  # the CPU algorithm, for comparison
    for i in range(3):
        cpu_side.add(gen[i % S], doc[i % S] + 10**6 * i, pos[i % S], ctx[i % S])

    def host_path_add(i: int) -> None:
        counter[0] += 1
        cpu_side.add(gen[i % S], doc[i % S] + 10**6 * counter[0], pos[i % S], ctx[i % S])

    row("SiteStats.add with the CPU algorithm on this device (pre-filter; syncs)", timed(host_path_add))
    if not args.parts:
        profile_table(gen, doc, pos, ctx, cfg, big_n)
        print_rows(rows, fwd, n, big_n)
        return

    # -- the primitives a statistics pass can be built from (how 0aa8cde and 70efda7 were chosen) -------------
    row("acts.to(float64) copy", timed(lambda i: gen[i % S].to(torch.float64)))
    row("acts.sum(0) (one float32 read: bandwidth floor)", timed(lambda i: gen[i % S].sum(0)))

    def moments_masked(i: int) -> None:  # NaN-aware float64 moments on [n, N], in separate eager kernels
        acts = gen[i % S]
        x = acts.double()
        finite = torch.isfinite(acts)
        xz = torch.where(finite, x, 0.0)
        nb = finite.sum(0).double()
        mean_b = xz.sum(0) / nb.clamp(min=1)
        torch.where(finite, (x - mean_b) ** 2, 0.0).sum(0)
        torch.where(finite, x, math.inf).amin(0)
        torch.where(finite, x, -math.inf).amax(0)

    row("moments, masked float64, eager kernels", timed(moments_masked))
    row("active count ((x > 0).sum(0))", timed(lambda i: (gen[i % S] > 0).sum(0, dtype=torch.int32)))
    # -- primitives --------------------------------------------------------------------------------------------
    g64 = [g.double() for g in gen]
    row("topk k=32 float64 along dim 0", timed(lambda i: torch.topk(g64[i % S], 32, dim=0, sorted=False)))
    row("topk k=32 float64, transposed contiguous, dim 1",
        timed(lambda i: torch.topk(g64[i % S].T.contiguous(), 32, dim=1, sorted=False)))
    row("topk k=32 float32 along dim 0", timed(lambda i: torch.topk(gen[i % S], 32, dim=0, sorted=False)))
    row("topk k=32 float32, transposed contiguous, dim 1",
        timed(lambda i: torch.topk(gen[i % S].T.contiguous(), 32, dim=1, sorted=False)))
    row("topk k=8 float32 along dim 0", timed(lambda i: torch.topk(gen[i % S], 8, dim=0, sorted=False)))
    chunk_max = [torch.nn.functional.pad(g.T.double(), (0, (-n) % 16), value=-math.inf).view(big_n, -1, 16).amax(2)
                 for g in g64]  # [N, n / 16]: what the two-stage selection's first top-k reads
    row("topk k=32 of [N, n/16] float64 chunk maxima (2-stage selection, stage 1)",
        timed(lambda i: torch.topk(chunk_max[i % S], 32, dim=1, sorted=False)))
    cand = [torch.randn(big_n, 512, dtype=torch.float64, device=DEV) for _ in range(S)]  # stage 2's [N, 32 * 16]
    row("topk k=32 of [N, 512] float64 candidates (stage 2)",
        timed(lambda i: torch.topk(cand[i % S], 32, dim=1, sorted=False)))
    row("kthvalue float32 along dim 0", timed(lambda i: torch.kthvalue(gen[i % S], n - 31, dim=0)))
    row("sort float32 along dim 0", timed(lambda i: torch.sort(gen[i % S], dim=0)))
    thr = torch.topk(gen[0], 32, dim=0).values[-1]
    row("compare with a per-neuron threshold (x >= thr)", timed(lambda i: gen[i % S] >= thr))
    row("cumsum of a bool mask along dim 0 (int32)",
        timed(lambda i: torch.cumsum(gen[i % S] >= thr, dim=0, dtype=torch.int32)))
    row("count per neuron of x >= thr", timed(lambda i: (gen[i % S] >= thr).sum(0)))
    flat_idx = [(g.view(torch.int32) & 0xFF).long().reshape(-1) + torch.arange(big_n, device=DEV).repeat(n) * 256
                for g in gen]
    size = big_n * 256
    row("index_add_ int64 of n*N ones", timed(lambda i: torch.zeros(size, dtype=torch.long, device=DEV).index_add_(
        0, flat_idx[i % S], torch.ones_like(flat_idx[i % S]))))
    flat32 = [f.int() for f in flat_idx]
    row("index_add_ int32 of n*N ones (int32 index)", timed(lambda i: torch.zeros(
        size, dtype=torch.int32, device=DEV).index_add_(0, flat32[i % S], torch.ones_like(flat32[i % S]))))
    row("bincount of n*N (syncs)", timed(lambda i: torch.bincount(flat_idx[i % S], minlength=size)))
    if DEV == "cuda":
        try:
            import triton  # noqa: F401

            @torch.compile(dynamic=False)
            def fused_moments(acts: torch.Tensor):
                finite = torch.isfinite(acts)
                x = torch.where(finite, acts, 0.0).double()
                nb = finite.sum(0)
                mean = x.sum(0) / nb.clamp(min=1)
                m2 = torch.where(finite, (x - mean) ** 2, 0.0).sum(0)
                lo = torch.where(finite, acts, math.inf).amin(0)
                hi = torch.where(finite, acts, -math.inf).amax(0)
                act = (acts > 0).sum(0)
                return nb, mean, m2, lo, hi, act

            t0 = time.perf_counter()
            fused_moments(gen[0])
            sync()
            row(f"torch.compile of the masked moments: first call (compile) {time.perf_counter() - t0:.1f} s; "
                "then per call", timed(lambda i: fused_moments(gen[i % S])))
        except Exception as err:  # noqa: BLE001  (any compile failure is a finding: report it, go on)
            print(f"  torch.compile failed: {type(err).__name__}: {err}"[:400])

    profile_table(gen, doc, pos, ctx, cfg, big_n)
    print_rows(rows, fwd, n, big_n)


def profile_table(gen, doc, pos, ctx, cfg, big_n) -> None:
    """torch.profiler: 12 adds, as in one batch of a 12-layer profile; the 25 costliest kernels."""
    S = len(gen)
    if DEV == "cuda":
        from torch.profiler import ProfilerActivity, profile

        sites = [SiteStats(big_n, device=DEV, config=cfg) for _ in range(12)]
        for s in sites:
            for i in range(3):
                s.add(gen[i % S], doc[i % S] + 10**6 * i, pos[i % S], ctx[i % S])
        sync()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for j, s in enumerate(sites):
                s.add(gen[j % S], doc[j % S] + 10**7, pos[j % S], ctx[j % S])
            sync()
        print("\n### torch.profiler: 12 SiteStats.add calls (one batch of a 12-layer profile)\n")
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))


def print_rows(rows: list[tuple[str, float]], fwd: float, n: int, big_n: int) -> None:
    print(f"\n### SiteStats.add on {torch.cuda.get_device_name() if DEV == 'cuda' else DEV}, one site of "
          f"{n} tokens x {big_n} neurons (torch {torch.__version__})\n")
    print("| what | ms | x forward/12 |")
    print("|---|---:|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.3f} | {ms / (fwd / 12):.2f} |")


if __name__ == "__main__":
    main()
