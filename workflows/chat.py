"""A terminal session: investigate in words, then look closer at the results.

Usage::

    python -m workflows.chat [--llm scripted] [--out runs]

    > investigate layer 6 of smollm2-135m        runs an investigation (the same StateFlow as workflows.run)
    > /findings [kind]                           the current run's findings
    > /neuron L6/N1233                           a neuron's modes and examples (or its top examples)
    > /examples L6/N1233 [top|quantile|bottom]   contexts where it fires
    > /report                                    the report's summary and path
    > /help, /quit

Models stay loaded between requests. Corpus text is printed as it is quoted (between <data> markers).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ChatSession", "main"]

HELP = __doc__.split("\n\n")[2] if __doc__ else ""


class ChatSession:
    """The state of a chat: settings, loaded models and the current run's tool context."""

    def __init__(self, settings: Any = None, *, out: str | None = None, llm: str | None = None,
                 models: dict[str, Any] | None = None, say: Callable[[str], None] = print) -> None:
        from agents.settings import WorkbenchSettings

        self.settings = settings or WorkbenchSettings()
        self.out = out or self.settings.runs_dir
        self.llm = llm
        self.models: dict[str, Any] = models if models is not None else {}
        self.say = say
        self.ctx: Any = None
        self.last: Any = None

    def handle(self, line: str) -> bool:
        """Answer one line; False when the session should end."""
        text = line.strip()
        if not text:
            return True
        if text in ("/quit", "/exit", "quit", "exit"):
            return False
        if text == "/help":
            self.say(HELP)
        elif text.startswith("/"):
            self._command(text)
        else:
            self._investigate(text)
        return True

    def _investigate(self, request: str) -> None:
        from pydantic import ValidationError

        from tools import ToolContext
        from workflows.investigation import Investigation, RunOptions, option_error

        def echo(event: dict[str, Any]) -> None:
            if event.get("kind") == "transition":
                self.say(f"  [{event['to']}]")

        try:
            options = RunOptions(request=request, llm=self.llm, out=self.out)
        except ValidationError as exc:
            self.say(f"error: {option_error(exc)}")
            return
        # Ctrl-C during the run stops it cleanly (a stopped, resumable run folder) and the session goes on
        result = asyncio.run(Investigation(options, self.settings, models=self.models, echo=echo).run())
        self.last = result
        if result.run_dir:
            from neuron_core.store import RunFolder

            self.ctx = ToolContext(RunFolder(result.run_dir), models=self.models)
            manifest = self.ctx.run.read_json("manifest.json")
            plan = manifest.get("plan") or {}
            if plan.get("model") in self.models:
                self.ctx.interface = self.models[plan["model"]]
        if result.status == "done":
            self.say(f"done: {result.report}")
            self._summary()
        else:
            self.say(f"{result.status}: {result.reason}")

    def _summary(self) -> None:
        if self.last is None or not self.last.report:
            self.say("no report yet")
            return
        report = Path(self.last.report).read_text(encoding="utf-8")
        summary = report.split("## Summary", 1)[-1].split("## Method", 1)[0].strip()
        self.say(summary)

    def _command(self, text: str) -> None:
        from tools import call_tool

        parts = text.split()
        name, args = parts[0], parts[1:]
        if name == "/report":
            self._summary()
            if self.last is not None and self.last.report:
                self.say(self.last.report)
            return
        if self.ctx is None:
            self.say("no investigation yet: type a request, e.g. investigate layer 6 of smollm2-135m")
            return
        if name == "/findings":
            out = call_tool(self.ctx, "read_findings", {"kind": args[0]} if args else {}, caller="chat")
            if out.ok:
                for f in out.result.findings:
                    self.say(f"{f.id} [{f.kind}{', ' + f.verdict if f.verdict else ''}] {f.claim}")
            else:
                self.say(out.error.line() if out.error else "failed")
        elif name in ("/neuron", "/examples") and args:
            if name == "/neuron":
                out = call_tool(self.ctx, "describe_neuron", {"neuron": args[0]}, caller="chat")
                if out.ok:
                    r = out.result
                    self.say(f"{r.neuron}: {r.verdict}, score {r.score:.2f}, p = {r.p_value:.3g}, {r.n_modes} modes")
                    for m in r.modes:
                        self.say(f"  {m.label} ({m.share_text}): " + "; ".join(m.examples[:2]))
                    return
            kind = args[1] if len(args) > 1 and name == "/examples" else "top"
            out = call_tool(self.ctx, "neuron_examples", {"neuron": args[0], "kind": kind, "n": 8}, caller="chat")
            if out.ok:
                for e in out.result.examples:
                    self.say(f"  {e.value:8.3f}  {e.text}")
            else:
                self.say(out.error.line() if out.error else "failed")
        else:
            self.say(f"unknown command {text!r}; /help lists them")

    def loop(self, lines: Iterable[str]) -> None:
        for line in lines:
            if not self.handle(line):
                break


def _stdin_lines(prompt: str = "> ") -> Iterable[str]:
    while True:
        try:
            yield input(prompt)
        except EOFError:
            return


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workflows.chat", description=__doc__.split("\n\n")[0])
    p.add_argument("--llm", default=None, help="LLM backend for the investigations (default NW_LLM, auto)")
    p.add_argument("--out", default=None, help="parent folder of the run folders")
    args = p.parse_args(argv)
    session = ChatSession(out=args.out, llm=args.llm)
    print("neuron workbench chat: type a request, or /help", flush=True)
    try:
        session.loop(_stdin_lines())
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
