"""Clustering neurons by co-activation, and contexts by meaning (scikit-learn does the clustering).

Usage::

    clusters = cluster_neurons(record, "layer 6", n_clusters=8)     # neurons that fire together
    clusters.frame                                                  # neuron, cluster, mean activation
    groups = cluster_contexts(contexts, n_clusters=None)            # contexts by meaning (MiniLM)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from neuron_core.analysis.contexts import Context
from neuron_core.capture import ActivationRecord
from neuron_core.errors import CorpusTooSmallError, InputError

__all__ = ["NeuronClusters", "cluster_neurons", "cluster_contexts"]


@dataclass
class NeuronClusters:
    site: str
    neurons: list[int]
    labels: np.ndarray  # [len(neurons)]
    silhouette: float
    frame: Any  # DataFrame: neuron, cluster, mean_activation


def cluster_neurons(record: ActivationRecord, site: str, n_clusters: int | None = None,
                    neurons: Sequence[int] | None = None, max_neurons: int = 512) -> NeuronClusters:
    """Agglomerative clustering (average linkage) of neurons on the correlation distance of their activations
    over the record's tokens. ``n_clusters=None`` picks k in 2..12 by the best silhouette. Constant neurons are
    left out (their correlation is undefined)."""
    import pandas as pd
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import silhouette_score

    acts = record[site].double().numpy()  # [T, N]
    if acts.shape[0] < 3:
        raise CorpusTooSmallError(f"clustering neurons needs at least 3 tokens, got {acts.shape[0]}")
    if neurons is None:
        std = acts.std(0)
        candidates = np.nonzero(np.isfinite(std) & (std > 0))[0]
        neurons = list(candidates[np.argsort(-std[candidates])][:max_neurons])
    neurons = [int(n) for n in neurons]
    if len(neurons) < 3:
        raise CorpusTooSmallError("fewer than 3 non-constant neurons to cluster")
    X = acts[:, neurons].T  # [n, T]
    X = X - X.mean(1, keepdims=True)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)  # cosine on centred = correlation
    options = [n_clusters] if n_clusters is not None else list(range(2, min(12, len(neurons) - 1) + 1))
    if any(k < 2 or k >= len(neurons) for k in options):
        raise InputError(f"n_clusters must be in 2..{len(neurons) - 1}")
    best: tuple[float, np.ndarray] | None = None
    for k in options:
        labels = AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(X)
        sil = float(silhouette_score(X, labels, metric="cosine"))
        if best is None or sil > best[0]:
            best = (sil, labels)
    assert best is not None
    frame = pd.DataFrame({"neuron": neurons, "cluster": best[1], "mean_activation": acts[:, neurons].mean(0)})
    return NeuronClusters(record.key(site), neurons, best[1], best[0], frame)


def cluster_contexts(contexts: Sequence[Context], n_clusters: int | None = None, embedder: Any = None) -> Any:
    """Group contexts by meaning: MiniLM token-in-context embeddings, agglomerative clustering (k by silhouette
    when not given). Returns a DataFrame: text (token marked), token, value, cluster."""
    import pandas as pd
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import silhouette_score

    from neuron_core.analysis.embed import MiniLMEmbedder

    if len(contexts) < 3:
        raise CorpusTooSmallError(f"clustering contexts needs at least 3, got {len(contexts)}")
    X = (embedder or MiniLMEmbedder()).embed(list(contexts))
    options = [n_clusters] if n_clusters is not None else list(range(2, min(8, len(contexts) - 1) + 1))
    best: tuple[float, np.ndarray] | None = None
    for k in options:
        labels = AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(X)
        sil = float(silhouette_score(X, labels, metric="cosine")) if 1 < k < len(contexts) else 0.0
        if best is None or sil > best[0]:
            best = (sil, labels)
    assert best is not None
    return pd.DataFrame({"text": [c.marked() for c in contexts], "token": [c.token for c in contexts],
                         "value": [c.value for c in contexts], "cluster": best[1]})
