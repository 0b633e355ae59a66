"""Command line for the core library: ``python -m neuron_core profile --model smollm2-135m --layer 6``.

``--shards N --executor ray [--address ADDR]`` profiles N document ranges as Ray tasks and merges them.

Profiles one or more layers over a corpus (the built-in one by default), prints a summary table of the most active
neurons with their top tokens, and optionally saves the profile.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m neuron_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("profile", help="profile layers over a corpus and show the most active neurons")
    p.add_argument("--model", default="smollm2-135m", help="alias, HF id, folder or .gguf (default: smollm2-135m)")
    p.add_argument("--layer", action="append", default=None,
                   help="site to profile (repeatable): 6, 'layer 6', blocks.6.mlp.hook_post (default: 6)")
    p.add_argument("--corpus", default="builtin", help="'builtin', a .txt/.jsonl file, a folder, or hf:NAME")
    p.add_argument("--max-tokens", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--top", type=int, default=15, help="rows in the summary table")
    p.add_argument("--device", default="auto")
    p.add_argument("--save", default=None, help="folder to save the profile to")
    p.add_argument("--shards", type=int, default=1, help="cut the corpus into N document ranges, one task each")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="run the shards in this process (local) or as Ray tasks (pip install -e '.[ray]')")
    p.add_argument("--address", default=None, help="a Ray cluster to use (e.g. auto, or ray://HEAD:10001)")
    return parser


def _checked(args: argparse.Namespace) -> str | None:
    """The numeric options against their allowed ranges (pydantic): an error line, or None."""
    from pydantic import BaseModel, Field, ValidationError

    class ProfileOptions(BaseModel):
        max_tokens: int = Field(ge=1, le=10_000_000_000)
        batch_size: int = Field(ge=1, le=65_536)
        top: int = Field(ge=1, le=1_000_000)
        shards: int = Field(ge=1, le=100_000)

    try:
        ProfileOptions(max_tokens=args.max_tokens, batch_size=args.batch_size, top=args.top, shards=args.shards)
    except ValidationError as exc:
        first = exc.errors()[0]
        return f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']} (got {first['input']!r})"
    return None


def _summary(prof, site: str, top: int) -> None:
    from rich.console import Console
    from rich.table import Table

    from neuron_core.sites import neuron_ref

    view = prof[site]
    order = view.max.argsort(descending=True)[:top].tolist()
    table = Table(title=f"{prof.meta['model']} {site}: most active neurons over {prof.n_tokens:,} tokens")
    for col in ("neuron", "max", "mean", "std", "frac active", "top tokens (in context)"):
        table.add_column(col, justify="right" if col not in ("neuron", "top tokens (in context)") else "left")
    for n in order:
        examples = view.top_examples(n, 3)
        tokens = ", ".join(repr(e.token) for e in examples)
        table.add_row(neuron_ref(site, n), f"{view.max[n]:.3f}", f"{view.mean[n]:.4f}", f"{view.std[n]:.4f}",
                      f"{view.frac_active[n]:.3f}", tokens)
    console = Console()
    console.print(table)
    dead = int((view.frac_active == 0).sum())
    dense = int((view.frac_active > 0.5).sum())
    console.print(f"{view.n_neurons} neurons: {dead} never active, {dense} active on more than half of all tokens.")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = _checked(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from neuron_core import ModelInterface, NeuronCoreError, profile

    try:
        start = time.perf_counter()
        interface = ModelInterface.from_pretrained(args.model, device=args.device)
        sites = args.layer or ["6"]
        prof = profile(interface, sites, args.corpus, max_tokens=args.max_tokens, batch_size=args.batch_size,
                       shards=args.shards, executor=args.executor, address=args.address, progress=None
                       if args.shards == 1 and args.executor == "local" else sys.stderr.isatty())
        elapsed = time.perf_counter() - start
        for site in prof.site_names:
            _summary(prof, site, args.top)
        sharded = f", {args.shards} shards on {args.executor}" if args.shards > 1 or args.executor != "local" else ""
        print(f"profiled {prof.n_tokens:,} tokens of {prof.meta['n_docs']:,} documents in {elapsed:.1f}s "
              f"({prof.meta['corpus']}{sharded})")
        if args.save:
            prof.save(args.save)
            print(f"saved to {args.save}")
    except NeuronCoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # hooks are removed by capture's own finally; a --save is atomic
        print("interrupted", file=sys.stderr)
        return 130
    return 0
