"""Investigate neurons from a request in words.

Usage::

    python -m workflows.run "investigate layer 6 of smollm2-135m"
    python -m workflows.run "look for polysemantic neurons in layers 3-5 of smollm2-135m using my_corpus.txt"
    python -m workflows.run "explain neuron 6/1234 of smollm2-135m" --llm scripted --max-tokens 5000
    python -m workflows.run "investigate layer 6 of smollm2-135m" --llm openai-compatible \\
        --base-url http://localhost:11434/v1 --llm-model llama3.1

Prints one line per state (and per tool call), then the report's path. Exit status: 0 done; 1 failed; 2 the request
was rejected before any capture (impossible layer, unknown model, bad option, a run folder that cannot be used);
3 stopped by a budget or an unavailable LLM, with a partial report; 130 interrupted by Ctrl-C (the manifest says how to
resume). Settings come from the environment or ``.env`` (see ``.env.example``); flags
win over both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "build_parser", "parse_layers", "event_line"]


def parse_layers(text: str) -> list[int]:
    """``"6"``, ``"3-5"``, ``"3,5,7"`` -> layer indices."""
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part[1:]:
            lo, hi = part[0] + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1]
            a, b = int(lo), int(hi)
            if b < a:
                raise argparse.ArgumentTypeError(f"layer range {part} runs backwards")
            out.extend(range(a, b + 1))
        else:
            out.append(int(part))
    if not out:
        raise argparse.ArgumentTypeError("no layers given")
    return out


def build_parser() -> argparse.ArgumentParser:
    from agents.settings import BACKENDS

    p = argparse.ArgumentParser(prog="python -m workflows.run", description=__doc__.split("\n\n")[0])
    p.add_argument("request", nargs="?", help='what to investigate, e.g. "investigate layer 6 of smollm2-135m" '
                   "(with --resume: the run's own request)")
    p.add_argument("--model", help="model alias, HF id or local path (overrides the request)")
    p.add_argument("--layers", type=parse_layers, help="layers, e.g. 6 or 3-5 or 2,4 (overrides the request)")
    p.add_argument("--corpus", help="'builtin', a .txt (one document per line) or .jsonl file, or a folder")
    p.add_argument("--max-tokens", type=int, help="corpus tokens to profile (default NW_MAX_TOKENS, 20000)")
    p.add_argument("--max-neurons", type=int, help="neurons per layer the detector analyses (default 64)")
    p.add_argument("--top-n", type=int, help="polysemantic neurons reported in detail (default 5)")
    p.add_argument("--llm", choices=BACKENDS, help="LLM backend (default NW_LLM, auto)")
    p.add_argument("--llm-model", help="model name for openai / openai-compatible")
    p.add_argument("--base-url", help="base URL of an OpenAI-compatible server")
    p.add_argument("--out", help="parent folder of the run folder (default NW_RUNS_DIR, runs)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run folder (its plan, profile and results)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--embedder", choices=("auto", "subject", "minilm", "hidden"),
                   help="context embedder of the detector (default auto: the subject model's own reading)")
    p.add_argument("--max-llm-calls", type=int, help="budget: LLM requests")
    p.add_argument("--max-llm-tokens", type=int, help="budget: LLM tokens")
    p.add_argument("--max-wall", type=float, help="budget: wall-clock seconds")
    p.add_argument("--max-revisions", type=int, help="REVISE rounds after the Critic's check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="only the final line")
    return p


def event_line(event: dict[str, Any]) -> str | None:
    """One trace event as the terminal shows it while a run works (None: not shown)."""
    kind = event.get("kind")
    t = f"{event.get('elapsed', 0):7.1f}s"
    if kind == "run_start":
        return f"{t} LLM backend: {event['backend']} ({event['why']})"
    if kind == "transition":
        reason = f": {event['reason']}" if event.get("reason") else ""
        return f"{t} [{event['to']}]{reason}"[:300]
    if kind == "transition_refused":
        return f"{t}   refused {event['frm']} -> {event['to']} proposed by {event['by']}: {event['reason']}"
    if kind == "tool_call":
        status = "ok" if event.get("ok") else "FAILED"
        return (f"{t}   {event['caller']}: {event['tool']} {status} ({event['seconds']:.1f}s) "
                f"{event.get('summary', '')}")[:300]
    if kind == "llm_call":
        return (f"{t}   {event.get('agent') or 'llm'}: LLM call {event['seconds']:.1f}s, "
                f"{event['prompt_tokens']}+{event['completion_tokens']} tokens")
    if kind == "llm_retry":
        return f"{t}   LLM retry {event['attempt']} in {event['delay']}s: {event['error']}"
    if kind == "plan":
        plan = event["plan"]
        return (f"{t}   plan: model={plan['model']} layers={plan['layers']} corpus={plan['corpus']} "
                f"max_tokens={plan['max_tokens']} max_neurons={plan['max_neurons']} ({plan['source']})")
    return None


def _echo(quiet: bool) -> Any:
    def show(event: dict[str, Any]) -> None:
        line = None if quiet else event_line(event)
        if line is not None:
            print(line, flush=True)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI prints its own progress, one line per step
    from pydantic import ValidationError

    from agents.settings import WorkbenchSettings
    from workflows.investigation import EXIT_INTERRUPTED, EXIT_REJECTED, Investigation, RunOptions, option_error

    overrides: dict[str, Any] = {}
    for flag, name in (("llm_model", None), ("base_url", "llm_base_url"), ("max_llm_calls", "max_llm_calls"),
                       ("max_llm_tokens", "max_llm_tokens"), ("max_wall", "max_wall_seconds"),
                       ("max_revisions", "max_revisions")):
        value = getattr(args, flag)
        if value is not None and name is not None:
            overrides[name] = value
    try:
        settings = WorkbenchSettings(**overrides)
        if args.llm_model:
            key = "openai_model" if (args.llm or settings.llm) == "openai" else "llm_model"
            settings = settings.model_copy(update={key: args.llm_model})
    except ValidationError as exc:
        print(f"error: invalid setting: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}", file=sys.stderr)
        return EXIT_REJECTED
    try:
        options = RunOptions(request=args.request or ("(resumed)" if args.resume else ""), model=args.model,
                             layers=args.layers, corpus=args.corpus, max_tokens=args.max_tokens,
                             max_neurons=args.max_neurons, top_n=args.top_n, llm=args.llm, out=args.out,
                             resume=args.resume, device=args.device, seed=args.seed, embedder=args.embedder)
    except ValidationError as exc:
        print(f"error: {option_error(exc)}", file=sys.stderr)
        return EXIT_REJECTED
    investigation = Investigation(options, settings, echo=_echo(args.quiet))
    try:
        result = asyncio.run(investigation.run())
    except KeyboardInterrupt:  # a second Ctrl-C while the first was being handled
        from agents.worker import interrupt_worker

        interrupt_worker(timeout=10)
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.exit_code == EXIT_INTERRUPTED:
        print(f"interrupted: {result.reason.removeprefix('stopped: ')}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.status == "done":
        print(f"report: {result.report}")
        html = result.report[:-3] + ".html" if result.report else None
        if html:
            print(f"html:   {html}")
        return 0
    where = f" (partial report: {result.report})" if result.report else (
        f" (run folder: {result.run_dir})" if result.run_dir else "")
    print(f"error: {result.reason}{where}".replace("\n", " "), file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
