"""Zero-ablation of one neuron on chosen contexts: how much the model's next-token loss rises without it.

Usage::

    ctxs = contexts_from_profile(prof, "blocks.3.mlp.hook_post", 344, n_top=64, n_sample=64)
    effects = ablation_effects(interface, "blocks.3.mlp.hook_post", 344, {"log": ctxs[:8], "sign": ctxs[8:16]})
    effects["log"]        # mean loss change in nats per token (positive: the model needs the neuron there)
    per_context_effects(interface, "blocks.3.mlp.hook_post", 344, ctxs[:8])   # one number per context

The loss is averaged over the positions at and after the activating token (the only ones the neuron can affect).
Every group's contexts go through one clean and one ablated forward pass together. Causal LMs only.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from neuron_core.analysis.contexts import Context
from neuron_core.errors import InputError

if TYPE_CHECKING:
    from neuron_core.interface import ModelInterface

__all__ = ["ablation_effects", "per_context_effects"]

K = TypeVar("K", bound=Hashable)


@torch.no_grad()
def per_context_effects(interface: ModelInterface, site: str, neuron: int, contexts: Sequence[Context]) -> np.ndarray:
    """The loss change (nats per token, ablated minus clean) of each context, in order. Contexts need token ids."""
    from neuron_core.batching import Segment, make_batches, pad_token_id
    from neuron_core.capture import run_forward

    if not interface.loaded.is_causal_lm:
        raise InputError(f"ablation needs a causal LM's loss; {interface.name} is not one")
    usable = [c for c in contexts if c.ids and 0 <= c.index < len(c.ids)]
    if len(usable) != len(contexts):
        raise InputError("every context needs its token ids (contexts_from_profile gives them)")
    if not usable:
        return np.zeros(0)
    s = interface.resolver.resolve(site)
    module = interface.resolver.module(s)
    segs = [Segment(i, 0, tuple(c.ids)) for i, c in enumerate(usable)]
    batch = next(make_batches(segs, batch_size=len(segs), pad_id=pad_token_id(interface.tokenizer)))
    batch = batch.to(interface.device)
    kwargs = batch.model_kwargs(interface.module)
    start = torch.tensor([c.index for c in usable], device=batch.input_ids.device)[:, None]

    def per_row_loss() -> torch.Tensor:
        logits = run_forward(interface.module, kwargs).logits.float()  # [B, T, V]
        logp = torch.log_softmax(logits[:, :-1], -1)
        nll = -logp.gather(-1, batch.input_ids[:, 1:, None])[..., 0]  # [B, T-1]
        pos = torch.arange(nll.shape[1], device=nll.device)[None, :]
        valid = batch.attention_mask[:, 1:].bool() & (pos >= start)  # the neuron can only affect these
        return (nll * valid).sum(1) / valid.sum(1).clamp(min=1)  # [B]

    def zero_pre(_m: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0].clone()
        x[..., neuron] = 0
        return (x, *args[1:])

    def zero_post(_m: torch.nn.Module, _a: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[..., neuron] = 0
        return output

    base = per_row_loss()
    handle = module.register_forward_pre_hook(zero_pre) if s.read == "input" else \
        module.register_forward_hook(zero_post)
    try:
        ablated = per_row_loss()
    finally:
        handle.remove()
    return (ablated - base).cpu().numpy()


def ablation_effects(interface: ModelInterface, site: str, neuron: int,
                     groups: Mapping[K, Sequence[Context]]) -> dict[K, float | None]:
    """Per group: the mean loss change of its contexts (None for an empty group); one pass for all groups."""
    members = [(key, c) for key, ctxs in groups.items() for c in ctxs]
    out: dict[K, float | None] = {key: None for key in groups}
    if not members:
        return out
    diff = per_context_effects(interface, site, neuron, [c for _, c in members])
    keys = [key for key, _ in members]
    for key in groups:
        picked = [d for k, d in zip(keys, diff) if k == key]
        if picked:
            out[key] = float(np.mean(picked))
    return out
