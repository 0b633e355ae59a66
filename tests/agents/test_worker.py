"""The model worker's home (``agents.worker``): re-exported by ``agents.runner``, and the LLM clients, the local model
and the AutoGen adapter use it without importing each other in a circle."""

from __future__ import annotations

import ast
import asyncio
import threading
from pathlib import Path

import agents.runner
import agents.worker

AGENTS = Path(agents.worker.__file__).parent


def test_the_runner_reexports_the_worker():
    for name in ("run_in_thread", "interrupt_worker", "set_worker_threads", "default_torch_threads"):
        assert getattr(agents.runner, name) is getattr(agents.worker, name)
    name = asyncio.run(agents.worker.run_in_thread(lambda: threading.current_thread().name))
    assert name == "model-worker"


def _imports(module: str) -> set[str]:
    """The agents modules ``agents/<module>.py`` imports, anywhere in the file (in functions too)."""
    tree = ast.parse((AGENTS / f"{module}.py").read_text())
    found = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    found |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return {m.removeprefix("agents.") for m in found if m.startswith("agents.")}


def test_clients_local_runner_and_worker_import_no_circle():
    order = ["worker", "local", "clients", "runner"]  # each imports only modules before it
    edges = {m: _imports(m) & set(order) for m in order}
    assert edges["worker"] == set()
    for i, module in enumerate(order):
        assert edges[module] <= set(order[:i]), (module, edges[module])
