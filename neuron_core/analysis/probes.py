"""Concept selectivity: how strongly a neuron responds to each probe concept's marked spans (held-out split).

Usage::

    sel = probe_selectivity(interface, "layer 6", neurons=[12, 99])   # DataFrame: neuron, concept, median, auc
    acts = ProbeActivations.compute(interface, {"blocks.6.mlp.hook_post": [12, 99]})   # one pass, many sites

For each probe sentence the neuron's activation on the concept is the maximum over the span's tokens; the
selectivity AUC compares those with the neuron's activation on tokens outside the spans (a bounded sample).
Only the asked-for neurons are kept, and every site is read in the same forward passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from neuron_core.corpus import ConceptProbes, ProbeExample, load_probes

__all__ = ["ProbeActivations", "probe_selectivity"]


@dataclass
class ProbeActivations:
    """For one site: span-max activations per concept ([n_sentences, n_kept] each), background activations of
    non-span tokens ([n_background, n_kept]), and which neuron each column is."""

    site: str
    columns: dict[int, int]
    concepts: dict[str, np.ndarray]
    examples: dict[str, list[ProbeExample]]
    background: np.ndarray

    def neuron(self, neuron: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        col = self.columns[neuron]
        return {c: v[:, col] for c, v in self.concepts.items()}, self.background[:, col]

    @classmethod
    def compute(cls, interface: Any, site_neurons: dict[str, list[int]],
                probes: dict[str, ConceptProbes] | None = None, split: str = "held_out", chunk: int = 64,
                max_background: int = 4000) -> dict[str, ProbeActivations]:
        from neuron_core.capture import ActivationMonitor

        probes = probes if probes is not None else load_probes()
        examples = {name: (p.held_out if split == "held_out" else p.all) for name, p in probes.items()}
        flat = [(name, ex) for name, exs in examples.items() for ex in exs]
        monitor = ActivationMonitor(interface)
        sites = monitor.resolver.resolve_many(list(site_neurons))
        keep = {s.name: list(site_neurons[key]) for s, key in zip(sites, site_neurons)}
        spans: dict[str, dict[str, list[np.ndarray]]] = {s.name: {c: [] for c in examples} for s in sites}
        background: dict[str, list[np.ndarray]] = {s.name: [] for s in sites}
        n_background = 0
        tok = interface.tokenizer
        for lo in range(0, len(flat), chunk):
            part = flat[lo:lo + chunk]
            record = monitor.capture([ex.text for _, ex in part], sites=sites, batch_size=32, overflow="truncate")
            doc_ids = record.doc_ids.numpy()
            for doc, (name, ex) in enumerate(part):
                rows = np.nonzero(doc_ids == doc)[0]
                offsets = np.array(tok(ex.text, return_offsets_mapping=True)["offset_mapping"][:len(rows)])
                in_span = (offsets[:, 0] < ex.end) & (offsets[:, 1] > ex.start) if len(offsets) == len(rows) \
                    else np.zeros(len(rows), dtype=bool)
                for s in sites:
                    acts = record[s.name][rows][:, keep[s.name]].numpy()  # [n_tok, n_kept]
                    if in_span.any():
                        spans[s.name][name].append(acts[in_span].max(0))
                    if n_background < max_background:
                        background[s.name].append(acts[~in_span])
                n_background += int((~in_span).sum())
        out = {}
        for s in sites:
            cols = {n: i for i, n in enumerate(keep[s.name])}
            concepts = {c: np.stack(v) for c, v in spans[s.name].items() if v}
            bg = np.concatenate(background[s.name]) if background[s.name] else np.zeros((0, len(cols)))
            out[s.name] = cls(s.name, cols, concepts, examples, bg)
        return out


def selectivity_auc(values: np.ndarray, background_sorted: np.ndarray) -> float:
    """Probability that a span value beats a background value (ties count half); background sorted ascending."""
    lo = np.searchsorted(background_sorted, values, side="left")
    hi = np.searchsorted(background_sorted, values, side="right")
    return float(((lo + hi) / 2).mean() / max(len(background_sorted), 1))


def probe_selectivity(interface: Any, site: str, neurons: list[int], probes: dict[str, ConceptProbes] | None = None
                      ) -> Any:
    """DataFrame (neuron, concept, median, mean, auc): the neuron's span activations per concept, and the
    probability that a concept span out-activates a random non-span token."""
    import pandas as pd

    pa = next(iter(ProbeActivations.compute(interface, {site: list(neurons)}, probes).values()))
    rows = []
    for neuron in neurons:
        concepts, bg = pa.neuron(neuron)
        b = np.sort(bg)
        for concept, v in concepts.items():
            rows.append({"neuron": neuron, "concept": concept, "median": float(np.median(v)),
                         "mean": float(v.mean()), "auc": selectivity_auc(v, b)})
    return pd.DataFrame(rows)
