"""Logit-level views of neurons: what a neuron's output direction writes into the vocabulary.

Usage::

    neuron_logit_effects(interface, "layer 6", [12, 99], k=10)     # promoted / suppressed tokens per neuron
    direct_effect(interface, "The cat sat on the", "layer 6", 12)  # change of the next-token logits at a position
    logit_lens(interface, "The capital of France is", layers=[3, 6, 9])   # top prediction per layer

The output direction of neuron n is the n-th column of the MLP's down projection (GPT-2: row n of ``c_proj``). It
reaches the logits through the final norm and the unembedding; the norm is linearised as its learned scale (the
per-token normalisation only rescales all logits of a position together, so rankings are unchanged).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from neuron_core.analysis.types import DirectEffect, NeuronLogitEffects
from neuron_core.errors import InputError, UnsupportedModelError

__all__ = ["neuron_logit_effects", "direct_effect", "logit_lens", "output_directions"]


def _interface(model: Any) -> Any:
    from neuron_core.interface import ModelInterface

    return model if isinstance(model, ModelInterface) else ModelInterface(model)


def _down_proj(interface: Any, layer: int) -> nn.Module:
    resolver = interface.resolver
    block = interface.module.get_submodule(f"{resolver.blocks_path}.{layer}")
    for name in ("mlp.down_proj", "mlp.c_proj", "mlp.fc2", "mlp.dense_4h_to_h", "output.dense", "ffn.lin2"):
        try:
            return block.get_submodule(name)
        except AttributeError:
            continue
    raise UnsupportedModelError(f"cannot find the down projection of block {layer}")


def output_directions(interface: Any, site: str, neurons: list[int]) -> torch.Tensor:
    """[len(neurons), d_model] output directions of the neurons."""
    interface = _interface(interface)
    s = interface.resolve(site)
    if s.layer is None:
        raise InputError(f"logit effects need a canonical MLP site, not {s.name!r}")
    down = _down_proj(interface, s.layer)
    weight = torch.as_tensor(down.weight).detach().float()
    # nn.Linear stores [out, in]; GPT-2's Conv1D stores [in, out]
    cols = weight[neurons] if type(down).__name__ == "Conv1D" else weight[:, neurons].T
    return cols  # [n, d_model]


def _unembed(interface: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    model = interface.module
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise UnsupportedModelError("this model has no unembedding (LM head); logit views need a causal LM")
    scale = None
    for name in ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.final_layernorm",
                 "model.decoder.final_layer_norm"):
        try:
            norm = model.get_submodule(name)
        except AttributeError:
            continue
        if getattr(norm, "weight", None) is not None:
            scale = norm.weight.detach().float()
            if "gemma" in type(model).__name__.lower():
                scale = 1.0 + scale  # Gemma's RMSNorm multiplies by (1 + weight)
        break
    return head.weight.detach().float(), scale


def neuron_logit_effects(interface: Any, site: str, neurons: list[int], k: int = 10) -> list[NeuronLogitEffects]:
    """Top ``k`` promoted and suppressed tokens of each neuron's output direction."""
    interface = _interface(interface)
    if not neurons:
        raise InputError("no neurons given")
    if k < 1:
        raise InputError("k must be >= 1")
    W_U, scale = _unembed(interface)  # [V, d]
    dirs = output_directions(interface, site, list(neurons)).to(W_U.device)  # [n, d]
    if scale is not None:
        dirs = dirs * scale
    logits = dirs @ W_U.T  # [n, V]
    name = interface.resolve(site).name
    out = []
    for row, neuron in zip(logits, neurons):
        up = torch.topk(row, k)
        down = torch.topk(-row, k)
        strings = interface.token_strings(up.indices.tolist() + down.indices.tolist())
        out.append(NeuronLogitEffects(
            site=name, neuron=int(neuron),
            promoted=[(t, float(v)) for t, v in zip(strings[:k], up.values.tolist())],
            suppressed=[(t, -float(v)) for t, v in zip(strings[k:], down.values.tolist())]))
    return out


@torch.no_grad()
def direct_effect(interface: Any, text: str, site: str, neuron: int, position: int = -1, k: int = 5) -> DirectEffect:
    """How much the neuron, at ``position`` of ``text``, moves each next-token logit directly (activation x output
    direction, through the final norm at that position, into the unembedding)."""
    from neuron_core.capture import ActivationMonitor

    interface = _interface(interface)
    s = interface.resolve(site)
    monitor = ActivationMonitor(interface)
    final_resid: list[torch.Tensor] = []
    model = interface.module
    W_U, scale = _unembed(interface)
    norm_name = next((n for n in ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm")
                      if _has(model, n)), None)
    handle = model.get_submodule(norm_name).register_forward_pre_hook(
        lambda m, a: final_resid.append(a[0].detach())) if norm_name else None
    try:
        record = monitor.capture(text, sites=[s], stop_early=False)
    finally:
        if handle is not None:
            handle.remove()
    n_tok = len(record)
    pos = position + n_tok if position < 0 else position
    if not 0 <= pos < n_tok:
        raise InputError(f"position {position} out of range for a text of {n_tok} tokens")
    act = float(record[s][pos, neuron])
    direction = output_directions(interface, s.name, [neuron])[0]  # [d]
    contrib = act * direction
    if norm_name == "transformer.ln_f":
        contrib = contrib - contrib.mean()  # LayerNorm centres before scaling
    if scale is not None:
        contrib = contrib * scale
    if final_resid:
        resid = final_resid[0][0, pos].float()
        rms = resid.pow(2).mean().sqrt() if "norm" in (norm_name or "") else resid.std()
        contrib = contrib / rms.clamp(min=1e-6)  # the norm's per-position division, taken as fixed
    delta = W_U @ contrib  # [V]
    with torch.no_grad():
        ids = torch.tensor([record.token_ids.tolist()], device=interface.device)
        logits = model(input_ids=ids).logits[0, pos]
    predicted = int(logits.argmax())
    up, down = torch.topk(delta, k), torch.topk(-delta, k)
    strings = interface.token_strings(up.indices.tolist() + down.indices.tolist() + [predicted])
    return DirectEffect(site=s.name, neuron=neuron, position=pos, token=record.tokens[pos], activation=act,
                        promoted=[(t, float(v)) for t, v in zip(strings[:k], up.values.tolist())],
                        suppressed=[(t, -float(v)) for t, v in zip(strings[k:2 * k], down.values.tolist())],
                        predicted=strings[-1], predicted_change=float(delta[predicted]))


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


@torch.no_grad()
def logit_lens(interface: Any, text: str, layers: list[int] | None = None, k: int = 3) -> Any:
    """Top-``k`` next-token predictions read off the residual stream after each layer (final norm + unembedding).

    Returns a DataFrame with columns layer, position, token, predictions (list of (token, probability))."""
    import pandas as pd

    interface = _interface(interface)
    resolver = interface.resolver
    model = interface.module
    W_U, _ = _unembed(interface)
    norm_name = next((n for n in ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm") if _has(model, n)),
                     None)
    if norm_name is None:
        raise UnsupportedModelError("logit lens needs a final norm it knows (Llama, GPT-2, GPT-NeoX families)")
    norm = model.get_submodule(norm_name)
    chosen = layers if layers is not None else list(range(resolver.n_layers))
    resid: dict[int, torch.Tensor] = {}
    handles = []
    try:
        for layer in chosen:
            block = model.get_submodule(f"{resolver.blocks_path}.{layer}")
            handles.append(block.register_forward_hook(
                lambda m, a, o, layer=layer: resid.__setitem__(layer, (o[0] if isinstance(o, tuple) else o).detach())))
        enc = interface.tokenizer(text, return_tensors="pt").to(interface.device)
        model(**enc)
    finally:
        for h in handles:
            h.remove()
    tokens = interface.token_strings(enc["input_ids"][0].tolist())
    rows = []
    for layer in chosen:
        probs = torch.softmax(norm(resid[layer][0]).float() @ W_U.T, -1)  # [T, V]
        top = torch.topk(probs, k, -1)
        for pos, tok in enumerate(tokens):
            preds = list(zip(interface.token_strings(top.indices[pos].tolist()), top.values[pos].tolist()))
            rows.append({"layer": layer, "position": pos, "token": tok, "predictions": preds})
    return pd.DataFrame(rows)
