"""A fake OpenAI-compatible server on loopback (stdlib only) and a scripted policy that plays the five agents.

Usage::

    with FakeOpenAI(policy) as server:               # policy(request_json, server) -> Reply
        client = OpenAIChatCompletionClient(model="fake", base_url=server.url, api_key="sk-test", ...)
    server.requests                                  # every request body (parsed JSON), in order

``AgentPolicy`` answers like a tool-calling LLM would: it recognises the agent by its system prompt and reads the
task and the tool results in the conversation. Knobs make it misbehave on purpose (a malformed tool call, a false
number, an illegal proposal, HTTP errors).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    content: str | None = None
    tool_calls: list[tuple[str, str]] | None = None  # (name, arguments as a JSON string, possibly malformed)
    delay: float = 0.0
    retry_after: str | None = None
    tokens: tuple[int, int] = (50, 20)


Policy = Callable[[dict[str, Any], "FakeOpenAI"], Reply]


class FakeOpenAI:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                reply = server.policy(body, server)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.status != 200:
                    payload = json.dumps({"error": {"message": f"fake error {reply.status}", "type": "fake",
                                                    "code": reply.status}}).encode()
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    if reply.retry_after is not None:
                        self.send_header("retry-after", reply.retry_after)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                message: dict[str, Any] = {"role": "assistant", "content": reply.content}
                if reply.tool_calls:
                    message["tool_calls"] = [{"id": f"call_{len(server.requests)}_{i}", "type": "function",
                                              "function": {"name": n, "arguments": a}}
                                             for i, (n, a) in enumerate(reply.tool_calls)]
                out = {"id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion",
                       "created": int(time.time()), "model": body.get("model", "fake"),
                       "choices": [{"index": 0, "message": message,
                                    "finish_reason": "tool_calls" if reply.tool_calls else "stop"}],
                       "usage": {"prompt_tokens": reply.tokens[0], "completion_tokens": reply.tokens[1],
                                 "total_tokens": sum(reply.tokens)}}
                data = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def roles(self) -> list[str]:
        return [role_of(r) for r in self.requests]


def role_of(body: dict[str, Any]) -> str:
    system = next((m.get("content") or "" for m in body["messages"] if m["role"] == "system"), "")
    m = re.match(r"You are the (\w+)", system)
    return m.group(1).lower() if m else "?"


def tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Parsed tool results in this conversation (non-JSON ones as {'raw': text})."""
    out = []
    for m in body["messages"]:
        if m["role"] == "tool":
            try:
                out.append(json.loads(m["content"]))
            except (json.JSONDecodeError, TypeError):
                out.append({"raw": m["content"]})
    return out


def user_task(body: dict[str, Any]) -> str:
    return next((m["content"] for m in body["messages"] if m["role"] == "user"), "")


@dataclass
class AgentPolicy:
    """Plays Planner, Capturer, Analyst, Visualizer and Critic through the OpenAI protocol."""

    malformed_first: bool = True  # the Analyst's first tool call has broken JSON
    false_number: str | None = None  # a sentence slipped into every narrative draft
    fix_after_feedback: bool = True  # drop the false sentence once the Critic's feedback arrives
    analyst_proposal: str = "VISUALIZE"  # e.g. "DONE" to test a refused illegal proposal
    capturer_bad_first: bool = False  # the first Capturer turn profiles a non-existent layer
    planner_reply: str = '{"top_n": 3}'
    errors: list[int] = field(default_factory=list)  # HTTP statuses returned for the first requests
    extra_examples: bool = True  # the Analyst reads the top neuron's examples (corpus text)
    pick_examples: Callable[[], dict[str, Any]] | None = None  # which neuron_examples call the Analyst makes
    calls: dict[str, int] = field(default_factory=dict)

    def __call__(self, body: dict[str, Any], server: FakeOpenAI) -> Reply:
        n = len(server.requests)
        if n <= len(self.errors):
            return Reply(status=self.errors[n - 1], retry_after="0")
        role = role_of(body)
        self.calls[role] = self.calls.get(role, 0) + 1
        results = tool_results(body)
        task = user_task(body)
        return getattr(self, role)(task, results, body)

    def planner(self, task: str, results: list[dict[str, Any]], body: dict[str, Any]) -> Reply:
        return Reply(content=f"{self.planner_reply}\nNEXT: CAPTURE")

    def capturer(self, task: str, results: list[dict[str, Any]], body: dict[str, Any]) -> Reply:
        if results:
            return Reply(content="Profiled the planned layers.\nNEXT: ANALYZE")
        args = json.loads(re.search(r"Call profile_corpus with (\{.*?\})\.", task).group(1))
        if self.capturer_bad_first and "previous try failed" not in task:
            args["layers"] = [99]
        return Reply(tool_calls=[("profile_corpus", json.dumps(args))])

    def analyst(self, task: str, results: list[dict[str, Any]], body: dict[str, Any]) -> Reply:
        revising = "The analyses are done" in task
        plan = json.loads(re.search(r"Plan: (\{.*?\})\n", task).group(1))
        layer = plan["layers"][0]
        if not revising:
            if not results:
                if self.malformed_first:
                    return Reply(tool_calls=[("neuron_stats", '{"layer": ' + str(layer) + ', "top": ')])
                return Reply(tool_calls=[("neuron_stats", json.dumps({"layer": layer, "top": 5}))])
            names = [r for r in results]
            if len(names) == 1 and self.malformed_first:
                return Reply(tool_calls=[("neuron_stats", json.dumps({"layer": layer, "top": 5}))])
            if not any("n_polysemantic" in r for r in results):
                return Reply(tool_calls=[("detect_polysemantic", json.dumps(
                    {"layer": layer, "max_neurons": plan["max_neurons"], "top_n": plan["top_n"]}))])
            detection = next(r for r in results if "n_polysemantic" in r)
            if self.extra_examples and not any("examples" in r for r in results):
                stats = next(r for r in results if "top_by_max" in r)
                args = self.pick_examples() if self.pick_examples else {"neuron": stats["top_by_max"][0]["ref"],
                                                                        "kind": "top", "n": 30}
                return Reply(tool_calls=[("neuron_examples", json.dumps(args))])
            self.detection = detection
            self.stats = next(r for r in results if "top_by_max" in r)
        return Reply(content=self._narrative(task) + f"\nNEXT: {self.analyst_proposal}")

    def _narrative(self, task: str) -> str:
        d, s = self.detection, self.stats
        parts = [f"Of the {d['n_analysed']} neurons analysed, {d['n_polysemantic']} are polysemantic "
                 f"[{d['finding_ids'][0]}]."]
        if d["neurons"]:
            top = d["neurons"][0]
            parts.append(f"The strongest is {top['neuron']} with score {top['score']:.2f} [{top['finding_id']}].")
        top = s["top_by_max"][0]
        parts.append(f"The most strongly activating neuron is {top['ref']} (max {top['max']:.3g}).")
        feedback = "Critic's check found problems" in task
        if self.false_number and not (feedback and self.fix_after_feedback):
            parts.append(self.false_number)
        return " ".join(parts)

    def visualizer(self, task: str, results: list[dict[str, Any]], body: dict[str, Any]) -> Reply:
        plan = json.loads(re.search(r"Plan: (\{.*?\})\n", task).group(1))
        if not results:
            return Reply(tool_calls=[("make_figure", json.dumps({"kind": "heatmap", "layer": plan["layers"][0]})),
                                     ("make_figure", json.dumps({"kind": "sparsity"}))])
        if len(results) == 2:
            return Reply(tool_calls=[("make_dashboard", json.dumps({"max_pages": 4}))])
        return Reply(content="Drew a heatmap, the sparsity plot and the dashboard.\nNEXT: CRITIQUE")

    def critic(self, task: str, results: list[dict[str, Any]], body: dict[str, Any]) -> Reply:
        if "do not hold" in task or "does not hold" in task or "state what findings.json does not hold" in task:
            return Reply(content="The draft states a number that the findings do not support.\nNEXT: REVISE")
        return Reply(content="The draft is supported by the findings.\nNEXT: REPORT")


class ChatPolicy(AgentPolicy):
    """AgentPolicy, plus the chat's Analyst: it reads the session summary and the question, calls tools (on the layer
    the question names, else the session's first), then answers with one true sentence and one false one (which the
    chat's claim check must take out)."""

    def analyst(self, task: str, results: list[dict[str, Any]], body: dict[str, Any]) -> Reply:
        if "Question:" not in task:
            return super().analyst(task, results, body)
        summary, question = task.split("Question:", 1)
        named = re.search(r"layer (\d+)", question)
        layer = int(named.group(1)) if named else int(re.search(r"layers \[(\d+)", summary).group(1))
        if "promote" in question:
            neuron = re.search(r"neuron (L\d+/N\d+)", summary).group(1)
            if not results:
                index = int(neuron.split("/N")[1])
                return Reply(tool_calls=[("logit_effects", json.dumps({"layer": int(neuron[1:].split("/")[0]),
                                                                       "neurons": [index]}))])
            e = results[-1]["effects"][0]
            return Reply(content=f"{e['neuron']} most promotes these tokens [{e['finding_id']}].")
        if not results:
            return Reply(tool_calls=[("neuron_stats", json.dumps({"layer": layer, "top": 3}))])
        if len(results) == 1:
            return Reply(tool_calls=[("describe_neuron", json.dumps({"neuron": results[0]["top_by_max"][0]["ref"]}))])
        d = results[-1]
        return Reply(content=f"{d['neuron']} has score {d['score']:.2f} with {d['n_modes']} modes "
                             f"[{d['finding_id']}]. It also has score 0.999 [{d['finding_id']}].")
