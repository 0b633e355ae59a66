"""Hook-based capture of activations.

Usage::

    monitor = ActivationMonitor(ModelInterface.from_pretrained("smollm2-135m"))
    monitor.register_layers(["mlp.3", "layer 6"])
    record = monitor.capture(["The cat sat.", "Le chat dort."])
    record["blocks.6.mlp.hook_post"].shape      # [n_tokens, 1536]; padding removed, texts in order
    record.tokens, record.doc_ids, record.positions

    with monitor.trace() as record:              # your own forward
        model(**batch)

Records live on the host by default. ``capture(..., keep_on="device")`` / ``trace(keep_on="device")`` keep them on
the model's device (a GPU capture then never crosses to the host; ``record.to("cpu")`` moves it later).

The monitor chooses the sites; the interface's backend captures them (:mod:`neuron_core.torch_backend`: forward
hooks, :mod:`neuron_core.hooks`; :mod:`neuron_core.keras_backend`: a derived sub-model). The record is an
:class:`~neuron_core.record.ActivationRecord`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch

from neuron_core.backend import Resolver
from neuron_core.batching import Overflow
from neuron_core.errors import InputError
from neuron_core.hooks import StopForward, attach, run_forward
from neuron_core.interface import ModelInterface
from neuron_core.record import ActivationRecord
from neuron_core.sites import Site

__all__ = ["ActivationRecord", "ActivationMonitor", "attach", "run_forward", "StopForward"]


def _keep_on(keep_on: str | torch.device, model_device: torch.device) -> torch.device:
    """Where a capture keeps its activations: "cpu" (the host), "device" (the model's device) or a device."""
    if keep_on == "device":
        return model_device
    try:
        return torch.device(keep_on)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"keep_on must be 'cpu', 'device' or a torch device, not {keep_on!r}") from err


class ActivationMonitor:
    """Captures activations of registered sites. See the module docstring."""

    def __init__(self, interface: ModelInterface | Any, layers: Sequence[str | int] | None = None) -> None:
        self.interface = interface if isinstance(interface, ModelInterface) else ModelInterface(interface)
        self._sites: list[Site] = []
        if layers is not None:
            self.register_layers(layers)

    @property
    def resolver(self) -> Resolver:
        return self.interface.resolver

    @property
    def sites(self) -> list[Site]:
        return list(self._sites)

    def register_layers(self, layers: Sequence[str | int | Site] | str | int) -> list[Site]:
        """Resolve and remember sites; every name is checked before anything is registered."""
        resolved = self.resolver.resolve_many(layers)  # type: ignore[arg-type]
        for site in resolved:
            if site not in self._sites:
                self._sites.append(site)
        return resolved

    def clear(self) -> None:
        self._sites.clear()

    def _active_sites(self, sites: Sequence[str | int | Site] | None) -> list[Site]:
        if sites is not None:
            return self.resolver.resolve_many(sites)  # type: ignore[arg-type]
        if self._sites:
            return list(self._sites)
        if self.resolver.has_mlp_sites:
            return [self.resolver.mlp_site(i) for i in range(self.resolver.n_layers)]
        raise InputError("no layers registered; call register_layers([...]) first")

    def capture(self, texts: str | Sequence[str] | torch.Tensor, *, max_length: int | None = None,
                overflow: Overflow = "error", batch_size: int = 8,
                padding_side: Literal["left", "right"] = "right",
                sites: Sequence[str | int | Site] | None = None, stop_early: bool = True,
                keep_on: str | torch.device = "cpu") -> ActivationRecord:
        """Run texts (or a tensor of inputs) through the model and keep every registered site's activations.

        ``keep_on``: where the activations are kept: "cpu" (default), "device" (the model's device: a GPU capture
        never crosses to the host) or any torch device."""
        chosen = self._active_sites(sites)
        target = _keep_on(keep_on, self.interface.device)
        return self.interface.backend.capture(texts, chosen, target, max_length=max_length, overflow=overflow,
                                              batch_size=batch_size, padding_side=padding_side,
                                              stop_early=stop_early)

    @contextmanager
    def trace(self, sites: Sequence[str | int | Site] | None = None,
              keep_on: str | torch.device = "cpu") -> Iterator[ActivationRecord]:
        """Capture during your own forward passes: ``with monitor.trace() as record: model(**batch)``.

        The record is filled when the block exits. Padding is removed when the forward received an
        ``attention_mask``; token strings come from ``input_ids`` when the forward received them. ``keep_on`` as
        in :meth:`capture`. PyTorch models only (a Keras backend says so).
        """
        target = _keep_on(keep_on, self.interface.device)
        with self.interface.backend.trace(lambda: self._active_sites(sites), target) as record:
            yield record
