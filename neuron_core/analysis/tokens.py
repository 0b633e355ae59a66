"""Token-level views: which tokens activate a neuron, and which neurons fire at each token of a text.

Usage::

    token_activations(record_or_profile, "layer 6", 12)   # per token string: count, mean, max (sorted by mean)
    text_neuron_map(interface, "The cat sat.", "layer 6", top=5)   # per position: the most active neurons
"""

from __future__ import annotations

from typing import Any

import torch

from neuron_core.capture import ActivationMonitor, ActivationRecord
from neuron_core.errors import InputError
from neuron_core.profile import NeuronProfile

__all__ = ["token_activations", "text_neuron_map"]


def token_activations(source: ActivationRecord | NeuronProfile, site: str, neuron: int) -> Any:
    """Mean activation per token string. From a record: over every token (exact). From a profile: over the kept
    examples (top, bottom and the random sample), marked ``source='examples'`` because it is not the full corpus."""
    import pandas as pd

    if isinstance(source, ActivationRecord):
        acts = source.neuron(site, neuron).double()
        frame = pd.DataFrame({"token": source.tokens, "activation": acts.numpy()})
        origin = "record"
    elif isinstance(source, NeuronProfile):
        view = source[site]
        rows = [(e.token, e.value) for kind in ("top", "bottom", "sample")
                for e in view.examples(neuron, kind)]  # type: ignore[arg-type]
        frame = pd.DataFrame(rows, columns=["token", "activation"])
        origin = "examples"
    else:
        raise InputError(f"token_activations needs a record or a profile, not {type(source).__name__}")
    out = frame.groupby("token").agg(count=("activation", "size"), mean=("activation", "mean"),
                                     max=("activation", "max")).reset_index()
    out["source"] = origin
    return out.sort_values(["mean", "count"], ascending=[False, False], ignore_index=True)


def text_neuron_map(interface: Any, text: str, site: str, top: int = 5) -> Any:
    """For each token of ``text``, the ``top`` most active neurons of ``site`` (rows: position, token, rank,
    neuron, activation)."""
    import pandas as pd

    if top < 1:
        raise InputError("top must be >= 1")
    record = ActivationMonitor(interface).capture(text, sites=[site])
    acts = record[site]  # [T, N]
    k = min(top, acts.shape[1])
    values, idx = torch.topk(acts, k, dim=1)
    rows = [{"position": int(record.positions[t]), "token": record.tokens[t], "rank": r, "neuron": int(idx[t, r]),
             "activation": float(values[t, r])} for t in range(acts.shape[0]) for r in range(k)]
    return pd.DataFrame(rows)
