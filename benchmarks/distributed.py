"""Ray against the local executor: sharded profiles, the detector's null on Ray tasks, and the cost of a shard.

    python benchmarks/distributed.py [--layer 6] [--max-tokens 30000] [--workers 2] [--neurons 0]

On one machine, a local Ray instance with ``--workers`` CPUs (no dashboard), started once and kept for every Ray
variant (its start-up is reported on its own line). Reported:

1. the sharded profile (SmolLM2-135M, one layer, the built-in corpus) against the local one in the same process:
   time ratio, and the largest difference of every statistic (moments, extremes, counts, histogram, kept examples);
2. the detector (``--neurons`` most active neurons, 0: the whole layer; defaults, no ablation) with its null's set
   sizes as Ray tasks against the local run, both after one warm-up run that fills the shared embedding cache (the
   embedding stays in the driver either way): time ratio, largest difference of score and p-value, verdicts that
   differ;
3. the overhead of a shard as a function of its size: the same corpus in 1, 2, 4 and 8 shards on Ray, seconds per
   shard beyond the local per-token cost, the merge's seconds, and the size of one shard's profile (what travels
   back to the driver).
"""

from __future__ import annotations

import argparse
import functools
import pickle
import time

import torch

from neuron_core import ModelInterface, profile
from neuron_core.analysis import DetectorConfig, PolysemanticDetector


def _largest_differences(a, b) -> dict[str, float]:
    out: dict[str, float] = {}
    for site in a.site_names:
        sa, sb = a[site].stats, b[site].stats
        for name in ("mean", "m2", "min", "max"):
            x, y = getattr(sa, name), getattr(sb, name)
            out[name] = max(out.get(name, 0.0), float(((x - y).abs() / y.abs().clamp(min=1e-30)).max()))
        for name in ("count", "n_active", "hist"):
            out[name] = max(out.get(name, 0.0), float((getattr(sa, name) - getattr(sb, name)).abs().max()))
        for kind in ("top", "bottom", "sample", "tokens"):
            ea, eb = getattr(sa, kind), getattr(sb, kind)
            same = torch.equal(ea.doc, eb.doc) and torch.equal(ea.pos, eb.pos)
            out[f"{kind} examples (places differ)"] = max(out.get(f"{kind} examples (places differ)", 0.0),
                                                          0.0 if same else float((ea.doc != eb.doc).sum()))
    return out


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=30_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--neurons", type=int, default=0, help="most active neurons analysed (0: all)")
    args = parser.parse_args()
    import ray

    interface = ModelInterface.from_pretrained("smollm2-135m", device="cpu")
    run = functools.partial(profile, interface, [args.layer], "builtin", max_tokens=args.max_tokens, progress=False)
    print(f"torch threads {torch.get_num_threads()} (local); Ray: {args.workers} CPUs, one thread per task; "
          f"SmolLM2-135M layer {args.layer}, {args.max_tokens:,} tokens of the built-in corpus\n")
    _, started = _timed(lambda: ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
                                         configure_logging=False))
    print(f"Ray start-up (once): {started:.1f} s\n")
    try:
        local, t_local = _timed(run)
        sharded, t_ray = _timed(lambda: run(shards=args.workers, executor="ray"))
        print("| profile | seconds | time ratio vs local |\n|---|---:|---:|")
        print(f"| local, 1 process | {t_local:.1f} | 1.00 |")
        print(f"| Ray, {args.workers} shards | {t_ray:.1f} | {t_ray / t_local:.2f} |\n")
        print("| statistic | largest difference, Ray shards vs local |\n|---|---:|")
        for name, value in _largest_differences(sharded, local).items():
            unit = "relative" if name in ("mean", "m2", "min", "max") else "absolute"
            print(f"| {name} | {value:.3g} ({unit}) |")
        from neuron_core.analysis.embed import SubjectEmbedder

        cfg = DetectorConfig(max_neurons=args.neurons or None, ablation=False)
        embedder = SubjectEmbedder(interface)
        PolysemanticDetector(local, interface=interface, embedder=embedder, config=cfg).run()  # fills the cache
        det_local, d_local = _timed(lambda: PolysemanticDetector(local, interface=interface, embedder=embedder,
                                                                 config=cfg).run())
        det_ray, d_ray = _timed(lambda: PolysemanticDetector(local, interface=interface, embedder=embedder,
                                                             config=cfg, executor="ray").run())
        pairs = list(zip(sorted(det_local, key=lambda r: r.neuron), sorted(det_ray, key=lambda r: r.neuron),
                         strict=True))
        print(f"\n| detector ({len(pairs)} neurons, embeddings cached) | seconds | time ratio vs local |\n"
              "|---|---:|---:|")
        print(f"| local | {d_local:.1f} | 1.00 |\n| null sizes as Ray tasks | {d_ray:.1f} | {d_ray / d_local:.2f} |")
        print(f"\nlargest difference: score {max(abs(a.score - b.score) for a, b in pairs):.3g}, p-value "
              f"{max(abs(a.p_value - b.p_value) for a, b in pairs):.3g}; verdicts that differ: "
              f"{sum(a.verdict != b.verdict for a, b in pairs)} of {len(pairs)}")
        per_token = t_local / local.n_tokens
        print("\n| shards | tokens per shard | seconds | overhead per shard (s) | merge (s) | one shard's profile "
              "(MB) |\n|---:|---:|---:|---:|---:|---:|")
        for n in (1, 2, 4, 8):
            prof, seconds = _timed(lambda n=n: run(shards=n, executor="ray"))
            # the merge: n profiles of the site (a profile's size does not grow with its tokens), merged in order
            one = profile(interface, [args.layer], "builtin", max_tokens=args.max_tokens // n, progress=False)
            size = len(pickle.dumps(one)) / 2**20
            others = [profile(interface, [args.layer], ["x"], progress=False, doc_offset=10**6 + i)
                      for i in range(n - 1)]
            _, merge = _timed(lambda parts=[one, *others]: functools.reduce(lambda a, b: a.merge(b), parts))
            ideal = per_token * prof.n_tokens / min(n, args.workers)
            print(f"| {n} | {prof.n_tokens // n:,} | {seconds:.1f} | {(seconds - ideal) / n:.2f} | {merge:.3f} | "
                  f"{size:.1f} |")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
