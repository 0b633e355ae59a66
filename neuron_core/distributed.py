"""Work spread over processes or machines: Ray when asked for, in this process otherwise.

Usage::

    run_tasks(fn, specs, executor="ray")                   # [fn(spec) for spec in specs], as Ray tasks
    run_tasks(fn, specs, executor="ray", address="auto")   # on a running cluster (``ray start --head``)
    run_tasks(fn, specs)                                   # executor "local": in order, in this process

Ray is an optional extra (``pip install -e .[ray]``); without it, ``executor="ray"`` is refused before any work
with the command that installs it. A local Ray instance started here (no ``address``) is shut down again when the
work is done; one that was already running, or a cluster, is left as it was. Tasks are retried by Ray when a worker
dies or the task raises (``max_retries``); a task that checkpoints (a profile shard does) goes on from its checkpoint.
Functions given to Ray must be importable (module level), and their specs picklable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, TypeVar

from neuron_core.errors import FrameworkNotAvailableError, InputError

__all__ = ["Executor", "EXECUTORS", "check_executor", "ray_session", "run_tasks", "portable_model"]

Executor = Literal["local", "ray"]
EXECUTORS: tuple[str, ...] = ("local", "ray")
S = TypeVar("S")
T = TypeVar("T")


def check_executor(executor: str, address: str | None = None) -> None:
    """A typed error, before any work, for an unknown executor, or Ray asked for and not installed."""
    if executor not in EXECUTORS:
        raise InputError(f"executor must be one of {', '.join(EXECUTORS)}, not {executor!r}")
    if address is not None and executor != "ray":
        raise InputError("an address is for executor='ray' (a Ray cluster), not for the local executor")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise FrameworkNotAvailableError("executor 'ray' needs Ray: pip install -e '.[ray]' (or pip install "
                                             "'ray>=2.9'); the local executor needs nothing") from None


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray, initialised: connected to ``address`` (a cluster; ``"auto"`` finds a local ``ray start``), or a local
    instance started here (no dashboard) and shut down on exit. An instance already initialised is reused as is."""
    check_executor("ray", address)
    import ray

    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False}
        if address is None and num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        ray.init(**kwargs)
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def run_tasks(fn: Callable[[S], T], specs: Sequence[S], *, executor: Executor = "local", address: str | None = None,
              max_retries: int = 2, num_gpus: float = 0.0, on_wait: Callable[[int], None] | None = None,
              poll_seconds: float = 0.5) -> list[T]:
    """``[fn(spec) for spec in specs]``, in order: in this process, or as Ray tasks (``max_retries`` retries each,
    for a dead worker or an exception; ``num_gpus`` per task). ``on_wait(n_done)`` is called while waiting (and
    after each local task): a progress bar's hook."""
    check_executor(executor, address)
    if executor == "local":
        out = []
        for i, spec in enumerate(specs):
            out.append(fn(spec))
            if on_wait is not None:
                on_wait(i + 1)
        return out
    with ray_session(address) as ray:
        remote = ray.remote(fn).options(max_retries=max_retries, retry_exceptions=True, num_gpus=num_gpus)
        refs = [remote.remote(spec) for spec in specs]
        pending = list(refs)
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=poll_seconds)
            if on_wait is not None:
                on_wait(len(refs) - len(pending))
        return list(ray.get(refs))


def portable_model(interface: Any) -> Any:
    """What a Ray task gets for a model: its name when it was loaded by name (each worker loads it once), else the
    model itself, after checking it can be sent. A model built in memory can hold things that cannot be pickled (a
    model transformers has run with ``output_hidden_states`` keeps hooks that hold context variables): that is a
    typed error here, with what to do, rather than Ray's dump of the object."""
    if interface is None or interface.loaded.source != "in-memory":
        return None if interface is None else interface.name
    from ray import cloudpickle

    try:
        cloudpickle.dumps(interface)
    except Exception as exc:  # noqa: BLE001 - any pickling failure means the same thing here
        raise InputError(f"the in-memory model {interface.name!r} cannot be sent to Ray workers ({exc}); save it "
                         "(model.save_pretrained(folder)) and load it by path, or use the local executor") from None
    return interface
