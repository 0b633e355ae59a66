"""Embedding activating contexts, so that contexts that mean the same thing land close together.

Usage::

    emb = MiniLMEmbedder()                      # bundled all-MiniLM-L6-v2, offline
    X = emb.embed(contexts)                     # [m, 384] float32, rows L2-normalised
    emb = SubjectEmbedder(interface); emb.fit(random_contexts)   # the subject model's own reading (the default)
    word, window = emb.embed_views(contexts)    # the token as the model reads it; the window without the word
    emb = SubjectEmbedder(interface, deep=0.6); emb.fit(random_contexts)
    deep = emb.embed_deep(contexts)             # a later layer's reading, for the merge rules (opt-in)
    emb = HiddenStateEmbedder(interface, layer=6)   # one layer's residual stream at the token

Each embeds the *token in its context*. MiniLM mixes the contextual vectors of the whole word the token belongs to
(weight ``token_weight``) with the rest of the window; the subject model reads the token with everything before it.
Results are cached per (text, span), so contexts shared by many neurons are embedded once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from neuron_core.analysis.contexts import Context
from neuron_core.sites import Site, layer_of_site_name

__all__ = ["Embedder", "MiniLMEmbedder", "SubjectEmbedder", "HiddenStateEmbedder", "make_embedder"]


class Embedder(Protocol):
    name: str

    def embed(self, contexts: Sequence[Context]) -> np.ndarray:
        """[len(contexts), d] float32, rows L2-normalised."""
        ...


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class _Cached:
    """Embeds each distinct (text, span) once. ``_compute`` returns [B, d] or [B, views, d]; ``_combine`` turns a
    cached row into the one vector :meth:`embed` returns."""

    name = "cached"

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self._cache: dict[tuple[str, int, int], np.ndarray] = {}
        self.n_computed = 0

    def _compute(self, contexts: Sequence[Context]) -> np.ndarray:
        raise NotImplementedError

    def _combine(self, rows: np.ndarray) -> np.ndarray:
        return rows

    def _rows(self, contexts: Sequence[Context]) -> np.ndarray:
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
        return np.stack([self._cache[k] for k in keys])

    def embed(self, contexts: Sequence[Context]) -> np.ndarray:
        if not contexts:
            return np.zeros((0, 1), dtype=np.float32)
        return self._combine(self._rows(contexts))


class MiniLMEmbedder(_Cached):
    """all-MiniLM-L6-v2 (bundled): the whole word the token belongs to, in its window, mixed with the rest of the
    window (``token_weight`` : 1 - ``token_weight``), L2-normalised.

    The word, not the token: the pieces of one word ('knit' + 'ting') land where the word does. The two views stay
    apart in :meth:`embed_views`, for the detector's merge rules (same word, same setting)."""

    name = "minilm"

    def __init__(self, token_weight: float = 0.75, batch_size: int = 128, device: str = "cpu") -> None:
        super().__init__(batch_size)
        from neuron_core.models import load_model

        self.lm = load_model("minilm", device=device)
        self.token_weight = token_weight

    def embed_views(self, contexts: Sequence[Context]) -> tuple[np.ndarray, np.ndarray]:
        """(word, window): each [len(contexts), d], rows L2-normalised. The window view leaves the word out."""
        rows = self._rows(contexts)  # [m, 2, d]
        return rows[:, 0], rows[:, 1]

    def _combine(self, rows: np.ndarray) -> np.ndarray:
        return _normalise(self.token_weight * rows[:, 0] + (1 - self.token_weight) * rows[:, 1])

    @torch.no_grad()
    def _compute(self, contexts: Sequence[Context]) -> np.ndarray:
        tok = self.lm.tokenizer
        enc = tok([c.text for c in contexts], return_tensors="pt", padding=True, truncation=True, max_length=128,
                  return_offsets_mapping=True)
        offsets = enc.pop("offset_mapping")  # [B, T, 2]
        enc = {k: v.to(self.lm.device) for k, v in enc.items()}
        hidden = self.lm.model(**enc).last_hidden_state.float().cpu()  # [B, T, d]
        mask = enc["attention_mask"].cpu().bool()  # [B, T]
        spans = [c.word_span for c in contexts]
        starts = torch.tensor([a for a, _ in spans])[:, None]
        ends = torch.tensor([b for _, b in spans])[:, None]
        # word pieces overlapping the word's characters (special tokens have empty offsets)
        nonempty = offsets[..., 1] > offsets[..., 0]
        span = mask & nonempty & (offsets[..., 0] < ends) & (offsets[..., 1] > starts)  # [B, T]
        empty_span = ~span.any(1)
        span[empty_span] = mask[empty_span]  # a token MiniLM cannot see (e.g. a space): fall back to the window
        rest = mask & nonempty & ~span  # [B, T]: the window without the word
        empty_rest = ~rest.any(1)
        rest[empty_rest] = mask[empty_rest]
        word_vec = (hidden * span[..., None]).sum(1) / span.sum(1, keepdim=True)  # [B, d]
        rest_vec = (hidden * rest[..., None]).sum(1) / rest.sum(1, keepdim=True)  # [B, d]
        return np.stack([_normalise(word_vec.numpy()), _normalise(rest_vec.numpy())], axis=1)  # [B, 2, d]


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
        self._center: torch.Tensor | None = None

    @torch.no_grad()
    def _compute(self, contexts: Sequence[Context]) -> np.ndarray:
        vecs = _residuals_at_token(self.interface, contexts, [self.layer])[0]  # [B, d]
        # Residual streams share a large common offset that swamps cosine similarity: remove a fixed centre
        # (estimated once, from the first batch, so every later vector is treated the same way).
        if self._center is None:
            self._center = vecs.mean(0, keepdim=True) if len(contexts) > 1 else torch.zeros_like(vecs)
        return _normalise((vecs - self._center).numpy())


class SubjectEmbedder(_Cached):
    """The subject model's own reading of each token: its residual stream at the token, at ``depths`` of the way
    through the model (SmolLM2-135M: after blocks 5 and 8 of 30), each layer standardised per dimension against
    random contexts (:meth:`fit`) and the layers concatenated, L2-normalised. The window view comes from MiniLM.
    ``below``: the analysed neurons' layer; the reading is taken before it (at most after block ``below - 1``), so a
    neuron's own output, written into later layers, does not make its contexts look alike.

    ``deep``: a third view for the merge rules only (:meth:`embed_deep`), the residual stream ``deep`` of the way
    through the model (0.6: SmolLM2-135M's block 18 of 30), standardised the same way; two modes close there are
    one concept. On the labelled neurons it merged kinds of one broad concept the early reading and MiniLM's window
    keep apart, partly by the token's place in its window: it also reads unrelated tokens that sit early alike
    (``benchmarks/NOTES.md``). ``None`` (the default): no deep view (``DetectorConfig.deep_view`` says why).
    ``held``: site name -> mean activation per neuron (the analysed sites). During the read those sites' neurons
    are held at their means, so that no analysed neuron's own output, written below the deep layer, makes its
    contexts look alike there (a neuron that fires hard on two unrelated concepts would otherwise read as one).
    Held sites must lie above the word view's layers, which they cannot then touch; a site of no known layer (a raw
    module) is not held.

    Why: what the model itself treats as alike (a word family, a token family, one role) is what a neuron can
    respond to; MiniLM's token vectors are dominated by the token's identity. On the real-neuron benchmark
    (``benchmarks/labelled_neurons``) this view separates POLY from MONO neurons better than MiniLM's; early-middle
    layers beat late ones (whose few huge dimensions swamp cosine similarity even after centring)."""

    name = "subject"

    def __init__(self, interface: object, depths: Sequence[float] = (1 / 6, 1 / 4), *, below: int | None = None,
                 deep: float | None = None, held: Mapping[str, torch.Tensor] | None = None, batch_size: int = 128,
                 window: MiniLMEmbedder | None = None) -> None:
        super().__init__(batch_size)
        from neuron_core.interface import ModelInterface

        self.interface = interface if isinstance(interface, ModelInterface) else ModelInterface(interface)  # type: ignore[arg-type]
        resolver = self.interface.resolver
        if resolver.blocks_path is None:
            raise ValueError("the subject-model embedder needs a model with blocks")
        top = resolver.n_layers - 1 if below is None else below - 1
        self.layers = sorted({max(0, min(top, round(d * resolver.n_layers))) for d in depths})
        self.deep_layer = None if deep is None else max(0, min(resolver.n_layers - 1, round(deep * resolver.n_layers)))
        sites = {resolver.resolve(name): mean.detach().float().cpu() for name, mean in (held or {}).items()}
        self.held = {site: mean for site, mean in sites.items() if layer_of_site_name(site) is not None}
        low = [site.name for site in self.held if layer_of_site_name(site) <= max(self.layers)]  # type: ignore[operator]
        if low:
            raise ValueError(f"held sites {low} lie at or below the word view's layers {self.layers}")
        self._window = window
        self._stats: tuple[np.ndarray, np.ndarray] | None = None  # per-dimension mean and spread of random contexts

    @property
    def window(self) -> MiniLMEmbedder:
        if self._window is None:
            self._window = MiniLMEmbedder()
        return self._window

    def fit(self, contexts: Sequence[Context]) -> None:
        """Standardise against these (random) contexts: every later vector is treated the same way."""
        raw = self._rows(contexts)  # [m, layers * d]
        self._stats = (raw.mean(0), raw.std(0) + 1e-6)

    def _standardised(self, rows: np.ndarray) -> list[np.ndarray]:
        """Each layer's part of the raw rows, standardised against the random contexts: [m, d] per layer read."""
        if self._stats is None:
            raise ValueError("SubjectEmbedder.fit(random contexts) must come before embedding")
        z = (rows - self._stats[0]) / self._stats[1]  # [m, (layers + deep) * d]
        return np.split(z, len(self.layers) + (self.deep_layer is not None), axis=1)

    def _combine(self, rows: np.ndarray) -> np.ndarray:
        parts = self._standardised(rows)[:len(self.layers)]
        return _normalise(np.concatenate([_normalise(p) for p in parts], axis=1))

    def embed_deep(self, contexts: Sequence[Context]) -> np.ndarray | None:
        """[len(contexts), d] the deep view (L2-normalised rows), or None when the embedder has none."""
        if self.deep_layer is None:
            return None
        return _normalise(self._standardised(self._rows(contexts))[-1])

    def embed_views(self, contexts: Sequence[Context]) -> tuple[np.ndarray, np.ndarray]:
        """(the token as the model reads it, the window without the word from MiniLM)."""
        return self.embed(contexts), self.window.embed_views(contexts)[1]

    def _compute(self, contexts: Sequence[Context]) -> np.ndarray:
        reads = self.layers + ([] if self.deep_layer is None else [self.deep_layer])
        vecs = _residuals_at_token(self.interface, contexts, reads, self.held)  # each [B, d]
        return torch.cat(vecs, dim=1).numpy()  # [B, (layers + deep) * d]


def _hold(interface: Any, site: Site, mean: torch.Tensor) -> Any:
    """Hold a site's neurons at ``mean`` (one value per neuron) during forwards: a hook handle to remove."""
    module = interface.resolver.module(site)

    def pre(_m: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (mean.to(args[0]).expand_as(args[0]), *args[1:])

    def post(_m: torch.nn.Module, _a: object, out: torch.Tensor) -> torch.Tensor:
        return mean.to(out).expand_as(out)

    return module.register_forward_pre_hook(pre) if site.read == "input" else module.register_forward_hook(post)


@torch.no_grad()
def _residuals_at_token(interface: Any, contexts: Sequence[Context], layers: Sequence[int],
                        held: Mapping[Site, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The residual stream after each block of ``layers`` at each context's activating token: one [B, d] float32
    tensor (CPU) per layer, in one forward pass that stops after the last of them (``held`` sites' neurons held
    at the given values)."""
    from neuron_core.batching import Segment, make_batches, pad_token_id
    from neuron_core.capture import StopForward, run_forward

    pairs = [_subject_ids(interface, c) for c in contexts]
    segs = [Segment(i, 0, tuple(ids)) for i, (ids, _) in enumerate(pairs)]
    batch = next(make_batches(segs, batch_size=len(segs), pad_id=pad_token_id(interface.tokenizer)))
    batch = batch.to(interface.device)
    got: dict[int, torch.Tensor] = {}
    last = max(layers)

    def grab(layer: int) -> Callable[..., None]:
        def hook(_m: torch.nn.Module, _a: object, out: object) -> None:
            got[layer] = torch.as_tensor(out[0] if isinstance(out, tuple) else out).detach()
            if layer == last:
                raise StopForward

        return hook

    blocks = interface.resolver.blocks_path
    handles = [interface.module.get_submodule(f"{blocks}.{layer}").register_forward_hook(grab(layer))
               for layer in layers]
    handles += [_hold(interface, site, mean) for site, mean in (held or {}).items()]
    try:
        run_forward(interface.module, batch.model_kwargs(interface.module))
    finally:
        for handle in handles:
            handle.remove()
    rows = torch.arange(len(pairs))
    index = torch.tensor([idx for _, idx in pairs])
    return [got[layer].float().cpu()[rows, index] for layer in layers]  # each [B, d]


def _subject_ids(interface: Any, ctx: Context, max_before: int = 8) -> tuple[list[int], int]:
    """The subject model's token ids of a context's window up to the activating token, and the token's index
    (tokenised from the text when the context does not carry its ids: probe sentences), at most ``max_before``
    tokens before it (a corpus context's window: ``DetectorConfig.window_before``). A causal model's reading of
    the token does not depend on what follows it, so those tokens are not run; an encoder keeps them."""
    if ctx.ids and ctx.index >= 0:
        ids, index = list(ctx.ids), ctx.index
    else:
        enc = interface.tokenizer(ctx.text, return_offsets_mapping=True, add_special_tokens=False)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        cover = [i for i, (a, b) in enumerate(offsets) if a < ctx.end and b > ctx.start]
        index = cover[-1] if cover else len(ids) - 1
    lo = max(0, index - max_before)  # as much left context as a corpus context has
    causal = bool(getattr(interface.loaded, "is_causal_lm", False))
    return (ids[lo:index + 1] if causal else ids[lo:]), index - lo  # a causal model reads nothing after the token


def make_embedder(spec: str | Embedder, interface: object = None, layer: int | None = None,
                  deep: float | None = None, held: Mapping[str, torch.Tensor] | None = None) -> Embedder:
    """``"subject"`` (the subject model's reading before ``layer``, needs ``interface``; with ``deep``, a deep
    view read with the ``held`` sites at their mean activations), ``"minilm"``, ``"hidden"`` (the residual stream
    after block ``layer``, needs ``interface`` and ``layer``) or an object with ``.embed()``."""
    if not isinstance(spec, str):
        return spec
    if spec == "minilm":
        return MiniLMEmbedder()
    if spec == "subject":
        if interface is None:
            raise ValueError("embedder='subject' needs the model interface; without one use 'minilm'")
        return SubjectEmbedder(interface, below=layer, deep=deep, held=held)
    if spec == "hidden":
        if interface is None or layer is None:
            raise ValueError("embedder='hidden' needs the model interface and a layer")
        return HiddenStateEmbedder(interface, layer)
    raise ValueError(f"unknown embedder {spec!r}; choose 'subject', 'minilm', 'hidden' or pass an object with "
                     ".embed()")
