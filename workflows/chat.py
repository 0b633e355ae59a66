"""A terminal conversation with the agent team: investigate, then ask about what the session already knows.

Usage::

    python -m workflows.chat [--llm scripted] [--out runs] [--resume SESSION_DIR | RUN_DIR]

    > investigate layer 3 of smollm2-135m
    > why is the top neuron polysemantic?
    > show me its examples for the second mode
    > compare with layer 4

Every model, profile, detection, figure and finding of the session stays available, keyed by model and layer, in a
session folder (``<out>/<stamp>-chat-session``) that holds the run folders; ``--resume`` reopens it. A follow-up
recomputes nothing the session has (its ``trace.jsonl`` says ``reused``). With a tool-calling LLM the Analyst
answers through its tools; otherwise the follow-up parser (``agents.followups``) maps the sentence to tools. Every
answer's numbers pass the report's claim check. Ctrl-C cancels the current step and keeps the session.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from agents.followups import GRAMMAR, FollowUp, parse_followup

__all__ = ["ChatSession", "main", "COMMANDS"]

COMMANDS = """\
Commands:
  /help                         this text
  /model NAME                   the model follow-ups are about (loads it once)
  /layers                       the layers this session holds, with their runs
  /neuron L3/N344               a neuron's verdict, modes and examples
  /examples L3/N344 [mode N]    its strongest contexts (of one mode)
  /compare 4 [5 ...]            the current layer side by side with these
  /findings [kind]              the findings of the current layer's run
  /watch PROMPT                 watch the current neuron live while the model continues PROMPT
  /report                       write the session report (report.md, report.html in the session folder)
  /reset                        forget the conversation's focus (runs and loaded models stay)
  /quit                         leave (Ctrl-D too); --resume SESSION_DIR comes back"""

HELP = GRAMMAR + "\n\n" + COMMANDS
USAGE = {line.split()[0]: line.strip().split("  ")[0] for line in COMMANDS.splitlines()[1:]}
QUESTIONS = ("explain", "examples", "promotes", "ablate", "unclear")
"""Follow-ups a tool-calling Analyst answers; the rest (investigate, compare, dashboard, report) are actions the chat
carries out the same way whatever the backend."""


class ChatSession:
    """One chat: the session memory, the loaded models, and how answers reach the terminal (``say``)."""

    def __init__(self, settings: Any = None, *, out: str | None = None, llm: str | None = None,
                 models: dict[str, Any] | None = None, say: Callable[[str], None] | None = None,
                 resume: str | None = None, defaults: dict[str, Any] | None = None, client: Any = None) -> None:
        from agents.settings import WorkbenchSettings
        from workflows.answers import Answerer
        from workflows.session import Session

        self.settings = settings or WorkbenchSettings()
        self.out = out or self.settings.runs_dir
        self.llm = llm
        self.client = client
        self.defaults = dict(defaults or {})
        self.models: dict[str, Any] = models if models is not None else {}
        self.view = _View(say)
        self.session = (Session.open(resume, parent=self.out, models=self.models, echo=self.view.event) if resume
                        else Session.create(self.out, models=self.models, echo=self.view.event))
        self.session.ctx_options = {"device": self.defaults.get("device") or self.settings.device,
                                    "embedder": self.defaults.get("embedder") or self.settings.embedder,
                                    "seed": self.defaults.get("seed", 0), "n_null": self.settings.detector_n_null,
                                    "ablation": self.settings.detector_ablation}
        self.answerer = Answerer(self.session, self._compute)
        self.choice = _backend(self.settings, llm)

    # ------------------------------------------------------------------------------------ turns
    def handle(self, line: str) -> bool:
        """Answer one line; False when the session should end. Ctrl-C during the answer cancels it only."""
        text = line.strip()
        if not text:
            return True
        if text in ("/quit", "/exit", "quit", "exit"):
            return False
        self.session.trace.event("turn", text=text)
        try:
            asyncio.run(self._turn(text))
        except KeyboardInterrupt:
            self._cancelled()
        return True

    def _cancelled(self) -> None:
        from agents.worker import interrupt_worker

        stopped = interrupt_worker()
        self.session.trace.event("cancelled", worker_stopped=stopped)
        self.view.note("cancelled (Ctrl-C); the session goes on")

    async def _turn(self, text: str) -> None:
        try:
            if text.startswith("/"):
                await self._command(text)
            else:
                await self._sentence(text)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            self._cancelled()

    async def _sentence(self, text: str) -> None:
        followup = parse_followup(text)
        self.session.trace.event("followup", **followup.model_dump(mode="json", exclude={"text"}))
        if self.choice.tool_calling and followup.intent in QUESTIONS and self.session.state.runs:
            from workflows.chat_llm import llm_answer

            reply = await llm_answer(self, text)
        else:
            reply = await self.answerer.answer(followup)
        self._show(followup, reply)

    def _show(self, followup: FollowUp, reply: Any) -> None:
        from workflows.session import AnswerRecord

        if reply.question:
            self.view.question(reply.question)
            return
        self.view.answer(reply.text, reply.table, reply.data)
        for sentence in reply.removed:
            self.view.note(f"(removed by the claim check: {sentence})")
        self.session.state.answers.append(AnswerRecord(question=followup.text, intent=followup.intent,
                                                       text=reply.text, runs=reply.runs, figures=reply.figures,
                                                       removed=reply.removed, data=reply.data[:12]))
        self.session.trace.event("answer", intent=followup.intent, text=reply.text, runs=reply.runs,
                                 removed=reply.removed, findings=[f.id for f in reply.findings])
        self.session.save()

    # ------------------------------------------------------------------------------------ computing
    async def _compute(self, model: str, layers: list[int], why: str, resume: str | None,
                       request: str | None) -> Any:
        """A run for layers the session lacks: the user's request with the chosen backend, else a scripted
        investigation of just those layers (profile, detection, figures, report; no LLM needed)."""
        from pydantic import ValidationError

        from workflows.investigation import Investigation, RunOptions, option_error
        from workflows.session import RunEntry, entry_of

        text = request or f"investigate layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))} of {model}"
        llm = self.llm if request else "scripted"
        pinned = {} if request else {"model": model, "layers": layers}
        try:
            options = RunOptions(request=text, llm=llm, out=str(self.session.root), resume=resume,
                                 **{**self.defaults, **pinned})
        except ValidationError as exc:
            self.view.note(f"error: {option_error(exc)}")
            return RunEntry(run_dir="", model=model, layers=layers, status="failed", computed_for=why)
        self.view.note(("resuming " if resume else "computing ") + f"{text} ({why})")
        result = await Investigation(options, self.settings, models=self.models, echo=self.view.event,
                                     client=self.client).run()
        if result.status != "done":
            self.view.note(f"{result.status}: {result.reason}")
        entry = entry_of(result.run_dir, why) if result.run_dir else None
        return entry or RunEntry(run_dir=result.run_dir or "", model=model, layers=layers, status=result.status,
                                 request=text, computed_for=why)

    # ------------------------------------------------------------------------------------ commands
    async def _command(self, text: str) -> None:
        name, _, rest = text.partition(" ")
        rest = rest.strip()
        sentences = {"/neuron": f"explain {rest}", "/examples": f"show me the examples of {rest}",
                     "/compare": f"compare with layers {rest}", "/report": "save the report"}
        if name == "/help":
            self.view.note(HELP)
        elif name in sentences and (rest or name == "/report"):
            await self._sentence(sentences[name])
        elif name == "/model" and rest:
            self.session.focus.model = rest
            self.session.save()
            self.view.note(f"follow-ups are now about {rest}")
        elif name == "/layers":
            self._layers()
        elif name == "/findings":
            self._findings(rest)
        elif name == "/reset":
            from workflows.session import Focus

            self.session.state.focus = Focus(model=self.session.focus.model)
            self.session.save()
            self.view.note("the conversation's focus is reset; the session's runs stay")
        elif name == "/watch" and rest:
            await self._watch(rest)
        elif name in USAGE:
            self.view.note(f"usage: {USAGE[name]}")
        else:
            self.view.note(f"unknown command {text!r}; /help lists them")

    def _layers(self) -> None:
        runs = self.session.state.runs
        if not runs:
            self.view.note("no layers yet: type a request, e.g. investigate layer 3 of smollm2-135m")
        rows = [[r.model, ", ".join(map(str, r.layers)), r.status, Path(r.run_dir).name] for r in runs]
        self.view.answer("", (["model", "layers", "status", "run"], rows), [])

    def _findings(self, kind: str) -> None:
        from tools import call_tool

        focus = self.session.focus
        entry = (self.session.run_for(focus.model, focus.layer) if focus.model and focus.layer is not None
                 else None)
        if entry is None:
            self.view.note("no investigation yet: type a request, e.g. investigate layer 3 of smollm2-135m")
            return
        out = call_tool(self.session.context(entry), "read_findings", {"kind": kind} if kind else {}, caller="chat")
        if not out.ok:
            self.view.note(out.error.line() if out.error else "failed")
            return
        for f in out.result.findings:
            self.view.note(f"{f.id} [{f.kind}{', ' + f.verdict if f.verdict else ''}] {f.claim}")

    async def _watch(self, prompt: str) -> None:
        from agents.worker import run_in_thread
        from workflows.watch import watch_lines

        focus = self.session.focus
        if focus.neuron is None or focus.model is None:
            self.view.note("no neuron to watch yet: ask about one first (e.g. why is the top neuron polysemantic?)")
            return
        entry = self.session.run_for(focus.model, focus.layer or 0)
        interface = self.session.ctx_for(entry).interface if entry else None
        if interface is None:
            self.view.note(f"{focus.model} is not loaded")
            return
        self.session.trace.event("watch", neuron=focus.neuron, prompt=prompt)
        await run_in_thread(watch_lines, interface, [focus.neuron], prompt, self.view.note)

    def loop(self, lines: Iterable[str]) -> None:
        for line in lines:
            if not self.handle(line):
                break

    def close(self) -> None:
        self.session.close()


def _backend(settings: Any, llm: str | None) -> Any:
    from agents import choose_backend

    try:
        return choose_backend(settings, llm)
    except ValueError:
        return choose_backend(settings, "scripted")


class _View:
    """The terminal side: rich output (or a plain ``say`` for tests), and events streamed as the agents work."""

    def __init__(self, say: Callable[[str], None] | None) -> None:
        self.say = say
        self.console: Any = None
        if say is None:
            from rich.console import Console

            self.console = Console(highlight=False, soft_wrap=True)

    def note(self, text: str, style: str = "") -> None:
        if self.say is not None:
            self.say(text)
        else:
            self.console.print(text, style=style or None, markup=False)

    def event(self, event: dict[str, Any]) -> None:
        from workflows.run import event_line

        kind = event.get("kind")
        if kind == "reused":
            what = event.get("what") or f"layer(s) {', '.join(map(str, event.get('layers', [])))}"
            self.note(f"  (the session has {what}: nothing recomputed)", "dim")
            return
        line = event_line(event)
        if line is not None:
            self.note(line, "dim")

    def question(self, text: str) -> None:
        self.note("? " + text, "yellow")

    def answer(self, text: str, table: tuple[list[str], list[list[str]]] | None, data: list[str]) -> None:
        if text:
            self.note(text, "bold")
        if table is not None:
            self._table(*table)
        for line in data:
            self.note("  │ " + line, "cyan")

    def _table(self, header: list[str], rows: list[list[str]]) -> None:
        if self.console is None:
            self.note(" | ".join(header))
            for row in rows:
                self.note(" | ".join(row))
            return
        from rich.table import Table

        table = Table(*header, show_lines=False)
        for row in rows:
            table.add_row(*row)
        self.console.print(table)


def _lines(history: str | None) -> Iterable[str]:
    """Input lines: prompt_toolkit (history, line editing) in a terminal, plain lines otherwise. Ctrl-C at the
    prompt clears the line; Ctrl-D ends the session."""
    if sys.stdin.isatty():
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, InMemoryHistory

        prompt: Any = PromptSession(history=FileHistory(history) if history else InMemoryHistory())
        while True:
            try:
                yield prompt.prompt("> ")
            except KeyboardInterrupt:
                continue
            except EOFError:
                return
    while True:
        try:
            line = input("> ")
        except KeyboardInterrupt:
            continue
        except EOFError:
            return
        yield line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflows.chat", description=__doc__.split("\n\n")[0],
                                epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", default=None, help="LLM backend (default NW_LLM, auto); 'scripted' needs none")
    p.add_argument("--out", default=None, help="parent folder of the session folder")
    p.add_argument("--resume", default=None, metavar="DIR", help="a session folder to reopen, or one run folder")
    p.add_argument("--max-tokens", type=int, default=None, help="corpus tokens profiled per layer")
    p.add_argument("--max-neurons", type=int, default=None, help="neurons per layer analysed for modes")
    p.add_argument("--top-n", type=int, default=None, help="neurons reported in detail")
    p.add_argument("--corpus", default=None, help="corpus (default: the built-in one)")
    p.add_argument("--embedder", default=None, choices=["auto", "subject", "minilm", "hidden"])
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError

    from neuron_core.errors import NeuronCoreError
    from workflows.investigation import RequestOptions, option_error

    args = build_parser().parse_args(argv)
    defaults = {k: v for k, v in {"max_tokens": args.max_tokens, "max_neurons": args.max_neurons,
                                  "top_n": args.top_n, "corpus": args.corpus, "embedder": args.embedder,
                                  "device": args.device, "seed": args.seed}.items() if v is not None}
    try:
        RequestOptions(request="chat", **defaults)
        session = ChatSession(out=args.out, llm=args.llm, resume=args.resume, defaults=defaults)
    except ValidationError as exc:
        print(f"error: {option_error(exc)}", file=sys.stderr)
        return 2
    except (NeuronCoreError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"neuron workbench chat ({session.choice.backend}); session folder {session.session.root}\n"
          "type a request, or /help", flush=True)
    try:
        session.loop(_lines(str(session.session.root / ".history")))
    finally:
        session.close()
    print(f"session saved: python -m workflows.chat --resume {session.session.root}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
