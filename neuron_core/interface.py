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

from neuron_core.errors import InputError  # keras backend: FrameworkNotAvailableError is raised there
from neuron_core.models import LoadedModel, load_model
from neuron_core.sites import Site, SiteResolver

__all__ = ["ModelInterface"]

_FRAMEWORKS = ("pytorch", "torch", "tensorflow", "keras")


class ModelInterface:
    """Wraps a model for capture. ``framework`` is ``"pytorch"`` (also ``"torch"``); see issue notes for Keras."""

    def __init__(self, model: nn.Module | LoadedModel, framework: str = "pytorch", tokenizer: Any = None,
                 *, name: str | None = None) -> None:
        framework = framework.lower()
        if framework not in _FRAMEWORKS:
            raise InputError(f"framework must be one of {', '.join(_FRAMEWORKS)}, not {framework!r}")
        if framework in ("tensorflow", "keras"):  # keras backend
            from neuron_core.keras_backend import KerasModel  # FrameworkNotAvailableError without TensorFlow/Keras

            self.loaded: LoadedModel = KerasModel(model, tokenizer, name=name)  # type: ignore[assignment]
        elif isinstance(model, LoadedModel):  # keras backend: `if` became `elif`
            self.loaded = model
            if tokenizer is not None:
                self.loaded.tokenizer = tokenizer
        elif isinstance(model, nn.Module):
            self.loaded = LoadedModel.from_module(model, tokenizer, name=name)
        else:
            raise InputError(f"framework='pytorch' needs a torch nn.Module, got {type(model).__name__}")
        self.framework = "tensorflow" if framework in ("tensorflow", "keras") else "pytorch"  # keras backend
        self._vocab_cache: dict[int, str] = {}

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> ModelInterface:
        """Load by HF id, folder, GGUF file or alias (see :func:`neuron_core.models.load_model`)."""
        return cls(load_model(name_or_path, **kwargs))

    # facts -------------------------------------------------------------------------------------------------
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
    def resolver(self) -> SiteResolver:
        return self.loaded.resolver

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
        """Canonical MLP site names, or (for networks without blocks of MLPs) every named submodule."""
        if self.framework == "tensorflow":  # keras backend
            return self.loaded.layer_names()  # type: ignore[attr-defined, no-any-return]
        if self.resolver.has_mlp_sites:
            return self.resolver.canonical_names()
        return [name for name, _ in self.module.named_modules() if name]

    def module_names(self) -> list[str]:
        if self.framework == "tensorflow":  # keras backend
            return self.loaded.module_names()  # type: ignore[attr-defined, no-any-return]
        return [name for name, _ in self.module.named_modules() if name]

    def resolve(self, name: str | int | Site) -> Site:
        return self.resolver.resolve(name)

    # tokens ------------------------------------------------------------------------------------------------
    def token_strings(self, ids: list[int]) -> list[str]:
        """Readable text of each token id (decoded one by one; cached)."""
        tok = self.tokenizer
        out: list[str] = []
        for i in ids:
            text = self._vocab_cache.get(i)
            if text is None:
                text = tok.decode([i]) if tok is not None else str(i)
                self._vocab_cache[i] = text
            out.append(text)
        return out

    def vocab_strings(self) -> list[str]:
        """Readable text of every token id in the vocabulary, indexed by id."""
        tok = self.tokenizer
        if tok is None:
            return []
        size = len(tok)
        return self.token_strings(list(range(size)))

    def __repr__(self) -> str:
        lm = self.loaded
        return f"ModelInterface(name={lm.name!r}, family={lm.family!r}, n_layers={lm.n_layers}, device={lm.device})"
