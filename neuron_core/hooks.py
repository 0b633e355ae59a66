"""PyTorch forward hooks on sites: the primitive every capture and the streaming profiler share.

Usage::

    with attach(resolver, sites, lambda site, tensor: seen.append((site.name, tensor.shape)), stop_early=True):
        run_forward(model, batch.model_kwargs(model))     # the forward ends after the last needed block

Hooks are registered inside a ``try`` and removed in ``finally`` (success, exception, KeyboardInterrupt); hooks the
user registered are never touched. :func:`attach` knows nothing about statistics: it only hands each site's tensor
to a callback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from neuron_core.sites import Site

if TYPE_CHECKING:
    from neuron_core.backend import Resolver

__all__ = ["attach", "run_forward", "run_forward_positional", "StopForward", "SiteCallback"]

SiteCallback = Callable[[Site, torch.Tensor], None]


class StopForward(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by the early-stop hook after the last needed block; caught by :func:`run_forward`."""


def _first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            if isinstance(item, torch.Tensor):
                return item
    if hasattr(value, "last_hidden_state"):
        return value.last_hidden_state  # type: ignore[no-any-return]
    raise TypeError(f"cannot read a tensor from a {type(value).__name__}")


@contextmanager
def attach(resolver: Resolver, sites: Sequence[Site], callback: SiteCallback, *,
           stop_early: bool = False) -> Iterator[int | None]:
    """Register one hook per site, each calling ``callback(site, tensor)``; always remove them on exit.

    With ``stop_early`` and every site inside a block, a hook on the last needed block raises :class:`StopForward`
    so later blocks and the LM head never run; yields the stopping block's index (or None).
    """
    handles: list[torch.utils.hooks.RemovableHandle] = []
    stop_block: int | None = None
    try:
        for site in sites:
            module = resolver.module(site)
            if site.read == "input":
                def pre_hook(_m: nn.Module, args: tuple[Any, ...], _site: Site = site) -> None:
                    callback(_site, _first_tensor(args).detach())

                handles.append(module.register_forward_pre_hook(pre_hook))
            else:
                def post_hook(_m: nn.Module, _args: Any, output: Any, _site: Site = site) -> None:
                    callback(_site, _first_tensor(output).detach())

                handles.append(module.register_forward_hook(post_hook))
        if stop_early and resolver.blocks_path is not None:
            orders = [resolver.block_order(s) for s in sites]
            if orders and all(o is not None for o in orders):
                stop_block = max(o for o in orders if o is not None)
                # Even for the last block this skips the final norm and the LM head.
                block = resolver.block_module(stop_block)

                def stop_hook(_m: nn.Module, _args: Any, _output: Any) -> None:
                    raise StopForward

                handles.append(block.register_forward_hook(stop_hook))
        yield stop_block
    finally:
        for handle in handles:
            handle.remove()


def run_forward(model: nn.Module, kwargs: dict[str, Any]) -> Any:
    """Call the model under inference mode; an early stop is a normal end (returns None)."""
    with torch.inference_mode():
        try:
            return model(**kwargs)
        except StopForward:
            return None


def run_forward_positional(model: nn.Module, inputs: torch.Tensor) -> Any:
    """Call the model on one positional tensor under inference mode; an early stop is a normal end."""
    with torch.inference_mode():
        try:
            return model(inputs)
        except StopForward:
            return None
