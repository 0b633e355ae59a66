"""Concept selectivity: how strongly a neuron responds to each probe concept's marked spans (held-out split).

Usage::

    sel = probe_selectivity(interface, "layer 6", neurons=[12, 99])   # DataFrame: neuron, concept, median, auc
    acts = ProbeActivations.compute(interface, "layer 6")             # reusable for many neurons

For each probe sentence the neuron's activation on the concept is the maximum over the span's tokens; the
selectivity AUC compares those with the neuron's activation on every token outside the spans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


from neuron_core.corpus import ConceptProbes, ProbeExample, load_probes

__all__ = ["ProbeActivations", "probe_selectivity"]


@dataclass
class ProbeActivations:
    """Span-max activations per concept ([n_sentences, N] each) and the activations of non-span tokens."""

    site: str
    concepts: dict[str, np.ndarray]
    examples: dict[str, list[ProbeExample]]
    background: np.ndarray  # [n_tokens, N]

    @classmethod
    def compute(cls, interface: Any, site: str, probes: dict[str, ConceptProbes] | None = None,
                split: str = "held_out", batch_size: int = 32) -> ProbeActivations:
        from neuron_core.capture import ActivationMonitor

        probes = probes if probes is not None else load_probes()
        examples = {name: (p.held_out if split == "held_out" else p.all) for name, p in probes.items()}
        flat = [(name, ex) for name, exs in examples.items() for ex in exs]
        record = ActivationMonitor(interface).capture([ex.text for _, ex in flat], sites=[site],
                                                     batch_size=batch_size, overflow="truncate")
        acts = record[site].numpy()  # [T, N]
        tok = interface.tokenizer
        per_concept: dict[str, list[np.ndarray]] = {name: [] for name in examples}
        background = []
        start = 0
        for doc, (name, ex) in enumerate(flat):
            n = int((record.doc_ids == doc).sum())
            offsets = np.array(tok(ex.text, return_offsets_mapping=True)["offset_mapping"][:n])
            rows = acts[start:start + n]
            in_span = (offsets[:, 0] < ex.end) & (offsets[:, 1] > ex.start) if len(offsets) == n else \
                np.zeros(n, dtype=bool)
            if in_span.any():
                per_concept[name].append(rows[in_span].max(0))
            background.append(rows[~in_span])
            start += n
        concepts = {name: np.stack(v) for name, v in per_concept.items() if v}
        return cls(record._key(site), concepts, examples, np.concatenate(background))


def probe_selectivity(interface: Any, site: str, neurons: list[int], probes: dict[str, ConceptProbes] | None = None,
                      activations: ProbeActivations | None = None) -> Any:
    """DataFrame (neuron, concept, median, mean, auc): the neuron's span activations per concept, and the
    probability that a concept span out-activates a random non-span token."""
    import pandas as pd

    pa = activations or ProbeActivations.compute(interface, site, probes)
    rows = []
    bg = pa.background
    for neuron in neurons:
        b = np.sort(bg[:, neuron])
        for concept, vals in pa.concepts.items():
            v = vals[:, neuron]
            # AUC via ranks: share of background values below each span value (ties half)
            lo = np.searchsorted(b, v, side="left")
            hi = np.searchsorted(b, v, side="right")
            auc = float(((lo + hi) / 2).mean() / max(len(b), 1))
            rows.append({"neuron": neuron, "concept": concept, "median": float(np.median(v)),
                         "mean": float(v.mean()), "auc": auc})
    return pd.DataFrame(rows)


