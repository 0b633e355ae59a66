"""What a framework gives the rest of neuron_core, as one object chosen once by the ModelInterface.

Usage::

    interface = ModelInterface(model)                  # or ModelInterface(keras_model, framework="tensorflow")
    interface.backend                                  # a TorchBackend or a KerasBackend: a Backend
    interface.backend.resolver.resolve("layer 6")      # where the sites live
    interface.backend.capture(texts, sites, target, ...)   # hooks (PyTorch) or a derived sub-model (Keras)

Callers never branch on the framework: they ask the backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

from neuron_core.sites import Site

if TYPE_CHECKING:
    from neuron_core.batching import Overflow, TokenStrings
    from neuron_core.keras_backend import KerasModel
    from neuron_core.models import LoadedModel
    from neuron_core.record import ActivationRecord

__all__ = ["Backend", "Resolver"]


class Resolver(Protocol):
    """Maps names people type to the :class:`Site` objects of one model (``SiteResolver``, ``KerasSiteResolver``)."""

    @property
    def has_mlp_sites(self) -> bool: ...

    @property
    def blocks_path(self) -> str | None: ...

    @property
    def n_layers(self) -> int: ...

    def canonical_names(self) -> list[str]: ...

    def mlp_site(self, layer: int) -> Site: ...

    def resolve(self, name: str | int | Site) -> Site: ...

    def resolve_many(self, names: Iterable[str | int | Site]) -> list[Site]: ...

    def block_order(self, site: Site) -> int | None: ...

    def block_module(self, index: int) -> Any: ...

    def module(self, site: Site) -> Any: ...

    def d_mlp(self) -> int | None: ...


class Backend(Protocol):
    """One framework's model behind a ModelInterface: the loaded model and its facts, where its sites live, the text
    of its tokens, and capture of a few inputs (``trace`` where the framework has hooks)."""

    framework: str
    """``"pytorch"`` or ``"tensorflow"``"""
    tokens: TokenStrings

    @property
    def loaded(self) -> LoadedModel | KerasModel: ...

    @property
    def resolver(self) -> Resolver: ...

    def layer_names(self) -> list[str]: ...

    def module_names(self) -> list[str]: ...

    def capture(self, inputs: Any, sites: list[Site], target: torch.device, *, max_length: int | None,
                overflow: Overflow, batch_size: int, padding_side: Literal["left", "right"],
                stop_early: bool) -> ActivationRecord: ...

    def trace(self, choose: Callable[[], list[Site]],
              target: torch.device) -> AbstractContextManager[ActivationRecord]: ...
