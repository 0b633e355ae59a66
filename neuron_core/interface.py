"""One interface over a model and its tokenizer, whatever produced them.

Usage::

    interface = ModelInterface.from_pretrained("smollm2-135m")
    interface.layer_names()          # ['blocks.0.mlp.hook_post', ..., 'blocks.29.mlp.hook_post']
    interface = ModelInterface(my_torch_module, framework="pytorch", tokenizer=my_tokenizer)
    interface.layer_names()          # canonical MLP sites, or every named submodule for other networks
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from neuron_core.backend import Backend, Resolver
from neuron_core.errors import InputError
from neuron_core.keras_backend import KerasBackend, KerasModel
from neuron_core.models import LoadedModel, load_model
from neuron_core.sites import Site
from neuron_core.torch_backend import TorchBackend

__all__ = ["ModelInterface"]

_FRAMEWORKS = ("pytorch", "torch", "tensorflow", "keras")


class ModelInterface:
    """Wraps a model for capture. ``framework`` is ``"pytorch"`` (also ``"torch"``) or ``"tensorflow"`` (also
    ``"keras"``: see :mod:`neuron_core.keras_backend`); it picks the :class:`~neuron_core.backend.Backend` once, and
    everything framework-specific goes through ``interface.backend``."""

    def __init__(self, model: nn.Module | LoadedModel, framework: str = "pytorch", tokenizer: Any = None,
                 *, name: str | None = None) -> None:
        framework = framework.lower()
        if framework not in _FRAMEWORKS:
            raise InputError(f"framework must be one of {', '.join(_FRAMEWORKS)}, not {framework!r}")
        self.backend: Backend
        if framework in ("tensorflow", "keras"):
            # FrameworkNotAvailableError (with the install command) without TensorFlow/Keras
            self.backend = KerasBackend(KerasModel(model, tokenizer, name=name))
        elif isinstance(model, LoadedModel):
            if tokenizer is not None:
                model.tokenizer = tokenizer
            self.backend = TorchBackend(model)
        elif isinstance(model, nn.Module):
            self.backend = TorchBackend(LoadedModel.from_module(model, tokenizer, name=name))
        else:
            raise InputError(f"framework='pytorch' needs a torch nn.Module, got {type(model).__name__}")
        self.framework = self.backend.framework

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> ModelInterface:
        """Load by HF id, folder, GGUF file or alias (see :func:`neuron_core.models.load_model`)."""
        return cls(load_model(name_or_path, **kwargs))

    # facts -------------------------------------------------------------------------------------------------
    @property
    def loaded(self) -> LoadedModel | KerasModel:
        """The model, its tokenizer and the facts about it (a KerasModel for Keras)."""
        return self.backend.loaded

    @property
    def module(self) -> nn.Module:
        return self.loaded.model

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def resolver(self) -> Resolver:
        return self.backend.resolver

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def context_length(self) -> int | None:
        return self.loaded.context_length

    @property
    def n_layers(self) -> int:
        return self.loaded.n_layers

    def layer_names(self) -> list[str]:
        """Canonical MLP site names, or (for networks without blocks of MLPs) every named submodule (Keras: every
        layer path)."""
        return self.backend.layer_names()

    def module_names(self) -> list[str]:
        return self.backend.module_names()

    def resolve(self, name: str | int | Site) -> Site:
        return self.resolver.resolve(name)

    # tokens ------------------------------------------------------------------------------------------------
    def token_strings(self, ids: list[int]) -> list[str]:
        """Readable text of each token id (decoded one by one; cached)."""
        return self.backend.tokens(ids)

    def vocab_strings(self) -> list[str]:
        """Readable text of every token id in the vocabulary, indexed by id."""
        return self.backend.tokens.vocab()

    def __repr__(self) -> str:
        lm = self.loaded
        return f"ModelInterface(name={lm.name!r}, family={lm.family!r}, n_layers={lm.n_layers}, device={lm.device})"
