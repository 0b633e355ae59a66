"""Embedding activating contexts, so that contexts that mean the same thing land close together.

Usage::

    emb = MiniLMEmbedder()                      # bundled all-MiniLM-L6-v2, offline
    X = emb.embed(contexts)                     # [m, 384] float32, rows L2-normalised
    emb = HiddenStateEmbedder(interface, layer=6)   # the subject model's own residual stream at the token

Both embed the *token in its context*: MiniLM mixes the contextual vectors of the word pieces covering the
activating token (weight ``token_weight``) with the mean of the window, so a mode is "what the token is", coloured by
where it stands. Results are cached per (text, span), so contexts shared by many neurons are embedded once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from neuron_core.analysis.contexts import Context

__all__ = ["Embedder", "MiniLMEmbedder", "HiddenStateEmbedder", "make_embedder"]


class Embedder(Protocol):
    name: str

    def embed(self, contexts: Sequence[Context]) -> np.ndarray:
        """[len(contexts), d] float32, rows L2-normalised."""
        ...


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class _Cached:
    name = "cached"

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self._cache: dict[tuple[str, int, int], np.ndarray] = {}
        self.n_computed = 0

    def _compute(self, contexts: Sequence[Context]) -> np.ndarray:
        raise NotImplementedError

    def embed(self, contexts: Sequence[Context]) -> np.ndarray:
        keys = [(c.text, c.start, c.end) for c in contexts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if missing:
            by_key = {(c.text, c.start, c.end): c for c in contexts}
            todo = [by_key[k] for k in missing]
            # sort by length so batches pad little
            order = sorted(range(len(todo)), key=lambda i: len(todo[i].text))
            for lo in range(0, len(order), self.batch_size):
                chunk = [todo[i] for i in order[lo:lo + self.batch_size]]
                vecs = self._compute(chunk)
                for ctx, vec in zip(chunk, vecs):
                    self._cache[(ctx.text, ctx.start, ctx.end)] = vec
                self.n_computed += len(chunk)
        if not keys:
            return np.zeros((0, 1), dtype=np.float32)
        return np.stack([self._cache[k] for k in keys])


class MiniLMEmbedder(_Cached):
    """all-MiniLM-L6-v2 (bundled): token-in-context vectors mixed with the window's mean, L2-normalised."""

    name = "minilm"

    def __init__(self, token_weight: float = 0.75, batch_size: int = 128, device: str = "cpu") -> None:
        super().__init__(batch_size)
        from neuron_core.models import load_model

        self.lm = load_model("minilm", device=device)
        self.token_weight = token_weight

    @torch.no_grad()
    def _compute(self, contexts: Sequence[Context]) -> np.ndarray:
        tok = self.lm.tokenizer
        enc = tok([c.text for c in contexts], return_tensors="pt", padding=True, truncation=True, max_length=128,
                  return_offsets_mapping=True)
        offsets = enc.pop("offset_mapping")  # [B, T, 2]
        enc = {k: v.to(self.lm.device) for k, v in enc.items()}
        hidden = self.lm.model(**enc).last_hidden_state.float().cpu()  # [B, T, d]
        mask = enc["attention_mask"].cpu().bool()  # [B, T]
        starts = torch.tensor([c.start for c in contexts])[:, None]
        ends = torch.tensor([c.end for c in contexts])[:, None]
        # word pieces overlapping the activating token's characters (special tokens have empty offsets)
        nonempty = offsets[..., 1] > offsets[..., 0]
        span = mask & nonempty & (offsets[..., 0] < ends) & (offsets[..., 1] > starts)  # [B, T]
        empty_span = ~span.any(1)
        span[empty_span] = mask[empty_span]  # a token MiniLM cannot see (e.g. a space): fall back to the window
        tok_vec = (hidden * span[..., None]).sum(1) / span.sum(1, keepdim=True)  # [B, d]
        mean_vec = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # [B, d]
        tok_n = _normalise(tok_vec.numpy())
        mean_n = _normalise(mean_vec.numpy())
        return _normalise(self.token_weight * tok_n + (1 - self.token_weight) * mean_n)


class HiddenStateEmbedder(_Cached):
    """The subject model's residual stream after block ``layer`` at the activating token."""

    name = "hidden"

    def __init__(self, interface: object, layer: int, batch_size: int = 64) -> None:
        super().__init__(batch_size)
        from neuron_core.interface import ModelInterface

        self.interface = interface if isinstance(interface, ModelInterface) else ModelInterface(interface)  # type: ignore[arg-type]
        resolver = self.interface.resolver
        if resolver.blocks_path is None:
            raise ValueError("the hidden-state embedder needs a model with blocks")
        self.layer = layer + resolver.n_layers if layer < 0 else layer
        self.block = f"{resolver.blocks_path}.{self.layer}"
        self._center: torch.Tensor | None = None

    def _ids(self, ctx: Context) -> tuple[list[int], int]:
        if ctx.ids and ctx.index >= 0:
            return list(ctx.ids), ctx.index
        enc = self.interface.tokenizer(ctx.text, return_offsets_mapping=True, add_special_tokens=False)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        cover = [i for i, (a, b) in enumerate(offsets) if a < ctx.end and b > ctx.start]
        return list(ids), (cover[-1] if cover else len(ids) - 1)

    @torch.no_grad()
    def _compute(self, contexts: Sequence[Context]) -> np.ndarray:
        from neuron_core.batching import Segment, make_batches, pad_token_id
        from neuron_core.capture import StopForward, run_forward

        pairs = [self._ids(c) for c in contexts]
        segs = [Segment(i, 0, tuple(ids)) for i, (ids, _) in enumerate(pairs)]
        batch = next(make_batches(segs, batch_size=len(segs), pad_id=pad_token_id(self.interface.tokenizer)))
        batch = batch.to(self.interface.device)
        got: list[torch.Tensor] = []

        def grab(_m: torch.nn.Module, _a: object, out: object) -> None:
            tensor = out[0] if isinstance(out, tuple) else out
            got.append(torch.as_tensor(tensor).detach())
            raise StopForward

        handle = self.interface.module.get_submodule(self.block).register_forward_hook(grab)
        try:
            run_forward(self.interface.module, batch.model_kwargs(self.interface.module))
        finally:
            handle.remove()
        hidden = got[0].float().cpu()  # [B, T, d]
        index = torch.tensor([idx for _, idx in pairs])
        vecs = hidden[torch.arange(len(pairs)), index]  # [B, d]
        # Residual streams share a large common offset that swamps cosine similarity: remove a fixed centre
        # (estimated once, from the first batch, so every later vector is treated the same way).
        if self._center is None:
            self._center = vecs.mean(0, keepdim=True) if len(pairs) > 1 else torch.zeros_like(vecs)
        return _normalise((vecs - self._center).numpy())


def make_embedder(spec: str | Embedder, interface: object = None, layer: int | None = None) -> Embedder:
    if not isinstance(spec, str):
        return spec
    if spec == "minilm":
        return MiniLMEmbedder()
    if spec == "hidden":
        if interface is None or layer is None:
            raise ValueError("embedder='hidden' needs the model interface and a layer")
        return HiddenStateEmbedder(interface, layer)
    raise ValueError(f"unknown embedder {spec!r}; choose 'minilm', 'hidden' or pass an object with .embed()")
