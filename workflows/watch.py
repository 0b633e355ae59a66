"""Watch neurons live while a model generates.

Usage::

    python -m workflows.watch --model smollm2-135m --neurons L6/N12,L6/N99 "The capital of France is" \\
        --max-new-tokens 40 --threshold 2.0 --top 5

Each generated token is shown with the watched neurons' activations at it and the most active neurons of their
layers. A watched neuron at or above ``--threshold`` is flagged (``!`` and red) and listed in the closing summary.
In a terminal the view is a live table (rich); when stdout is not a terminal, one plain line per token. The first row
(``prompt``) is the prompt's last token. ``--model`` takes any alias ``load_model`` accepts, a Hugging Face id in the
local cache, or a local folder. Ctrl-C stops cleanly (exit code 130); a bad model name or neuron reference exits
with a one-line error (exit code 2) before the model is loaded where possible.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from neuron_core.live import LiveMonitor, StepActivations

__all__ = ["main", "build_parser", "watch_lines"]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflows.watch", description=__doc__.split("\n\n")[0])
    p.add_argument("prompt", help="text to continue")
    p.add_argument("--model", default="smollm2-135m", help="alias (smollm2-135m, gpt2, ...), HF id or local folder")
    p.add_argument("--neurons", default="", help="comma-separated neuron refs, e.g. L6/N12,L6/N99")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--threshold", type=float, default=None, help="flag watched neurons at or above this value")
    p.add_argument("--top", type=int, default=5, help="most active neurons shown per token")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--seed", type=int, default=0, help="random seed when sampling")
    p.add_argument("--delay", type=float, default=0.0, help="seconds to pause after each token (to follow along)")
    return p


class _UsageError(Exception):
    """A bad argument found before anything heavy is loaded."""


def _parse_neurons(text: str) -> list[str]:
    from neuron_core.sites import parse_neuron_ref

    refs = [part.strip() for part in text.split(",") if part.strip()]
    for ref in refs:
        parse_neuron_ref(ref)  # raises UnknownSiteError with the accepted spellings
    return refs


def _check_model_name(name: str) -> None:
    from neuron_core.models import ALIASES

    if not name.strip():
        raise _UsageError("--model must not be empty")
    if name.strip().lower() in ALIASES:
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise _UsageError(f"model folder {name!r} has no config.json (save one with save_pretrained)")
        return
    if path.is_file():
        if path.suffix != ".gguf":
            raise _UsageError(f"model file {name!r} is not a .gguf file; pass a folder, a .gguf file or an alias")
        return
    if name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") > 1:
        raise _UsageError(f"no such model file or folder: {name!r}; aliases: {', '.join(sorted(ALIASES))}")
    # Anything else may be a Hugging Face id: load_model checks the local cache and fails fast when it is absent.


# ------------------------------------------------------------------------------------------------ the view
@dataclass
class _NeuronTrack:
    """What one watched neuron did over the run (constant size)."""

    max_value: float = float("-inf")
    max_at: str = ""
    n_over: int = 0
    first_over: str = ""


@dataclass
class _Tracker:
    threshold: float | None
    labels: list[str]
    tracks: dict[str, _NeuronTrack] = field(default_factory=dict)
    n_generated: int = 0

    def __post_init__(self) -> None:
        self.tracks = {label: _NeuronTrack() for label in self.labels}

    def over(self, value: float) -> bool:
        return self.threshold is not None and value >= self.threshold

    def add(self, step: StepActivations) -> None:
        if not step.is_prompt:
            self.n_generated += 1
        where = f"{_step_label(step)} {step.token!r}"
        for label, value in step.neurons.items():
            track = self.tracks[label]
            if value > track.max_value:
                track.max_value, track.max_at = value, where
            if self.over(value):
                track.n_over += 1
                track.first_over = track.first_over or where

    def summary_lines(self) -> list[str]:
        lines = [f"summary: {self.n_generated} tokens generated"]
        for label, t in self.tracks.items():
            line = f"  {label}: max {t.max_value:+.3f} at {t.max_at}"
            if self.threshold is not None:
                if t.n_over:
                    line += (f"; FLAG crossed {self.threshold:g} at {t.n_over} token(s), first at {t.first_over}")
                else:
                    line += f"; never reached {self.threshold:g}"
            lines.append(line)
        return lines


def _step_label(step: StepActivations) -> str:
    return "prompt" if step.is_prompt else f"step {step.step}"


def _top_across(monitor: LiveMonitor, step: StepActivations, n: int) -> list[tuple[str, float]]:
    """The n most active neurons over all watched sites, labelled L{layer}/N{index}."""
    from neuron_core.sites import neuron_ref

    sites = {s.name: s for s in monitor.sites}
    pairs = [(neuron_ref(sites[site], i), v) for site, top in step.top.items()
             for i, v in zip(top.indices, top.values, strict=True)]
    return sorted(pairs, key=lambda p: -p[1])[:n]


class _PlainView:
    """One line per token, for pipes and logs."""

    def __init__(self, monitor: LiveMonitor, tracker: _Tracker, top: int) -> None:
        self.monitor, self.tracker, self.top = monitor, tracker, top

    def __enter__(self) -> _PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()

    def update(self, step: StepActivations) -> None:
        cells = []
        for label, value in step.neurons.items():
            cells.append(f"{label}={value:+.3f}{' !' if self.tracker.over(value) else ''}")
        top = " ".join(f"{name}={v:+.2f}" for name, v in _top_across(self.monitor, step, self.top))
        parts = [f"{_step_label(step):>8}", f"{step.token!r:<16}", *cells]
        if top:
            parts.append(f"| top: {top}")
        print("  ".join(parts), flush=True)

    def finish(self, lines: list[str], text: str) -> None:
        for line in lines:
            print(line)
        print(f"text: {text!r}", flush=True)


class _RichView:
    """A live table of the latest tokens under the text generated so far."""

    def __init__(self, monitor: LiveMonitor, tracker: _Tracker, top: int, rows: int = 18) -> None:
        from rich.console import Console

        self.monitor, self.tracker, self.top = monitor, tracker, top
        self.console = Console()
        self.rows: deque[StepActivations] = deque(maxlen=rows)
        self.text: deque[tuple[str, bool]] = deque(maxlen=400)  # (token, flagged): the tail shown as running text
        self.live: Any = None

    def __enter__(self) -> _RichView:
        from rich.live import Live

        self.live = Live(self._render(), console=self.console, refresh_per_second=8)
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def update(self, step: StepActivations) -> None:
        self.rows.append(step)
        if not step.is_prompt:
            self.text.append((step.token, any(self.tracker.over(v) for v in step.neurons.values())))
        self.live.update(self._render())

    def _render(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        text = Text()
        for token, flagged in self.text:
            text.append(token, style="bold red" if flagged else None)
        table = Table(expand=False, show_edge=False)
        table.add_column("step", justify="right")
        table.add_column("token")
        for label in self.tracker.labels:
            table.add_column(label, justify="right")
        table.add_column(f"top {self.top}")
        for step in self.rows:
            cells = []
            for value in step.neurons.values():
                over = self.tracker.over(value)
                cells.append(Text(f"{value:+.3f}{' !' if over else ''}", style="bold red" if over else ""))
            top = ", ".join(f"{name} {v:+.2f}" for name, v in _top_across(self.monitor, step, self.top))
            table.add_row(_step_label(step), repr(step.token), *cells, top)
        return Group(Panel(text, title="generated"), table)

    def finish(self, lines: list[str], text: str) -> None:
        for line in lines:
            self.console.print(line, style="bold red" if "FLAG" in line else None, markup=False, highlight=False)


# ------------------------------------------------------------------------------------------------ entry point
def watch_lines(interface: Any, neurons: list[str], prompt: str, say: Callable[[str], None], *,
                max_new_tokens: int = 20, top: int = 3) -> str:
    """Watch ``neurons`` on an already loaded model while it continues ``prompt`` (greedy), one line per token
    through ``say``, then the summary; returns the generated text. What the chat's ``/watch`` runs."""
    from neuron_core.live import LiveMonitor

    monitor = LiveMonitor(interface, neurons=neurons, top_k=top)
    tracker = _Tracker(None, [n.label for n in monitor.neurons])
    pieces: list[str] = []
    with closing(monitor.stream_generate(prompt, max_new_tokens=max_new_tokens, do_sample=False)) as stream:
        for step in stream:
            tracker.add(step)
            if not step.is_prompt:
                pieces.append(step.token)
            cells = "  ".join(f"{label}={value:+.3f}" for label, value in step.neurons.items())
            say(f"{_step_label(step):>8}  {step.token!r:<16}  {cells}")
    for line in tracker.summary_lines():
        say(line)
    return "".join(pieces)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    steps_seen = 0
    try:
        from neuron_core.errors import NeuronCoreError

        try:
            if args.max_new_tokens < 1:
                raise _UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
            if args.top < 0 or args.delay < 0:
                raise _UsageError("--top and --delay must be >= 0")
            refs = _parse_neurons(args.neurons)
            _check_model_name(args.model)

            from transformers.utils import logging as hf_logging

            from neuron_core.interface import ModelInterface
            from neuron_core.live import LiveMonitor
            from neuron_core.models import load_model

            hf_logging.disable_progress_bar()  # keep the terminal for the live view
            loaded = load_model(args.model, device=args.device)
            monitor = LiveMonitor(ModelInterface(loaded), neurons=refs, top_k=args.top)
            stream = monitor.stream_generate(args.prompt, max_new_tokens=args.max_new_tokens, do_sample=args.sample)
        except (_UsageError, NeuronCoreError) as exc:
            print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
            return EXIT_ERROR
        if args.sample:
            import torch

            torch.manual_seed(args.seed)
        tracker = _Tracker(args.threshold, [n.label for n in monitor.neurons])
        view: _PlainView | _RichView = (_RichView if sys.stdout.isatty() else _PlainView)(monitor, tracker, args.top)
        pieces: list[str] = []
        try:
            with closing(stream), view:
                for step in stream:
                    steps_seen += 1
                    tracker.add(step)
                    if not step.is_prompt:
                        pieces.append(step.token)
                    view.update(step)
                    if args.delay:
                        time.sleep(args.delay)
        except NeuronCoreError as exc:
            print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
            return EXIT_ERROR
        view.finish(tracker.summary_lines(), "".join(pieces))
        return 0
    except KeyboardInterrupt:
        print(f"interrupted (Ctrl-C) after {steps_seen} step(s); hooks removed", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
