"""The model worker: one long-lived daemon thread that runs all model work (tools, local generation), one job at a time.

Usage::

    outcome = await run_in_thread(call_tool, ctx, "profile_corpus", args)   # awaited from the event loop
    set_worker_threads(default_torch_threads())                            # torch threads on the worker
    interrupt_worker()                                                     # Ctrl-C: stop the job, wait until idle

This module imports nothing else of the project, so the LLM clients (``agents.local``), the AutoGen adapter
(``agents.runner``) and the controller all use the worker without importing each other.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["run_in_thread", "interrupt_worker", "set_worker_threads", "default_torch_threads"]

T = TypeVar("T")


class _Worker:
    """One long-lived daemon thread for all model work (tools, local generation).

    One thread, not one per call: each new OS thread that runs torch gets its own OpenMP team, the old teams'
    threads linger, and on a small shared CPU a profile then ran 10x slower (measured: 33 s instead of 3 s).
    A daemon thread, not asyncio's executor: a run bounded by ``asyncio.wait_for`` may abandon a tool that is still
    working, and the process must still be able to exit.
    """

    def __init__(self) -> None:
        self.threads: int | None = None  # torch intra-op threads on this worker (None: torch's default)
        self._applied: int | None = None
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future[Any]]] = \
            queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()

    def _loop(self) -> None:
        while True:
            try:
                self._serve_one()
            except KeyboardInterrupt:  # an interrupt (see :meth:`interrupt`) that landed between two jobs
                self._idle.set()

    def _serve_one(self) -> None:
        job, loop, future = self._queue.get()
        self._idle.clear()
        try:
            if self.threads is not None and self.threads != self._applied:
                import torch  # only once a thread count is set: importing the worker stays light

                torch.set_num_threads(self.threads)  # per thread for OpenMP: must run on this thread
                self._applied = self.threads
            value = job()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task unchanged
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, value, None)
        finally:
            self._idle.set()

    def interrupt(self, timeout: float = 60.0) -> bool:
        """Stop the job the worker is running and wait until it has let go: a KeyboardInterrupt is raised in the
        worker thread at its next Python step (a batch boundary, a hook: torch's C++ calls finish first), so the
        job's own ``finally`` blocks run (hooks removed, temporary files removed). Returns whether the worker is
        idle. Exiting while the worker is inside torch aborts the process (``terminate called without an active
        exception``): every entry point calls this before it exits on Ctrl-C."""
        thread = self._thread
        if thread is None or not thread.is_alive() or self._idle.is_set() or thread.ident is None:
            return True
        set_async = ctypes.pythonapi.PyThreadState_SetAsyncExc
        set_async(ctypes.c_ulong(thread.ident), ctypes.py_object(KeyboardInterrupt))
        idle = self._idle.wait(timeout)
        if idle:  # the interrupt may still be pending if the job ended first: withdraw it
            set_async(ctypes.c_ulong(thread.ident), None)
        return idle

    def submit(self, job: Callable[[], Any]) -> asyncio.Future[Any]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="model-worker", daemon=True)
                self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put((job, loop, future))
        return future


def _settle(future: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if future.done():  # abandoned (the run was bounded and cancelled)
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)


_WORKER = _Worker()


def default_torch_threads() -> int | None:
    """1 on a machine with at most 2 cores, else None (torch's default).

    With 2 cores shared with anything else, every intra-op barrier of a second thread waits for a descheduled
    worker: a profile of 3,000 tokens took 36 s with 2 threads and 3 s with 1 (measured on such a machine); on an
    idle one 2 threads gain at most 1.6x.
    """
    return 1 if (os.cpu_count() or 1) <= 2 else None


def interrupt_worker(timeout: float = 60.0) -> bool:
    """Stop the model worker's current job and wait until it is idle (see :meth:`_Worker.interrupt`)."""
    return _WORKER.interrupt(timeout)


def set_worker_threads(threads: int | None) -> None:
    """Torch intra-op threads for the model worker (applied before its next job)."""
    _WORKER.threads = threads


async def run_in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on the model worker thread and await it (see :class:`_Worker` for why one thread)."""
    return await _WORKER.submit(lambda: fn(*args, **kwargs))  # type: ignore[no-any-return]
