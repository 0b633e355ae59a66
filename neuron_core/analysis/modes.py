"""A neuron's modes: cluster its contexts, merge clusters that are one concept, score how distinct the rest are.

Usage::

    evidence = ModeEvidence.of(contexts, word_vecs, window_vecs, scale)     # what the merge rules read, per context
    clustering = cluster(X, values, sampled, cfg)                     # k by the silhouette (k = 1 allowed)
    clustering = merge_modes(X, clustering, evidence, cfg, probes)   # one concept, one mode
    score, separation = score_modes(X, clustering, evidence, cfg, values)
    # the detector's: merge the clusters, score as the mean over random subsets (each clustered on its own)
    modes, score, separation = bagged_score(X, cluster(X, values, sampled, cfg), values, sampled, evidence, cfg, rng)

A mode is a concept, not a token (the Mode noun of the design). Clusters of a neuron's contexts often split by
token identity: 'h' in km/h and 'Pa' in kPa; an English and a French period; 'knit' and 'ting'. Two clusters are
**one concept** when any of these holds:

- **same word**: their contexts share their words (a token in several languages or topics);
- **same family**: most contexts of both are tokens of one family: punctuation, numbers, unit symbols after a
  number, white space, English function words (:func:`token_family`);
- **same probe concept**: both are named after the same probe concept;
- **close in meaning or in setting**: their words are close (a word family, inflections, synonyms), or their
  windows are (the same kind of text: one programming language, one register), closer than ``merge_distance``.

Distances are measured per view (the word as the subject model reads it, the window without the word, and, opted
in with ``DetectorConfig.deep_view``, a later layer's reading of the token) between the modes' centroids, divided by
the typical distance between two random contexts of the site in that view (``scale``). The **concept distance** of
two modes is the smallest of them (0 when a rule above says they are one concept): two modes are distinct concepts
only when what they are, where they stand and what the model makes of them all differ.

A mode counts in the score by its **coherence**: a group as spread as random contexts (a scatter of unrelated
tokens the clustering happened to put together) is noise, not a concept. The detector's score is **bagged**: the
mean over random subsets of the contexts, each clustered, merged and scored on its own.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from neuron_core.analysis.contexts import Context

if TYPE_CHECKING:
    from neuron_core.analysis.polysemantic import DetectorConfig

__all__ = ["Clustering", "ModeEvidence", "bagged_score", "cluster", "coherence", "concept_distances",
           "merge_modes", "merge_and_score",
           "score_modes", "token_family", "centroids"]


# Unit symbols written after a number (SI and common ones); a compound is units joined by "/" (km/h, m/s, mg/dL).
UNIT_SYMBOLS = frozenset("""
    m km cm mm µm um nm mi ft yd s ms µs ns min h hr hrs g kg mg µg ug lb lbs oz L mL ml dL cl
    °C °F ° K Pa kPa hPa MPa bar mbar psi atm N kN J kJ cal kcal W kW MW kWh Wh mAh V mV kV A mA Hz kHz MHz GHz
    B KB kB MB GB TB KiB MiB GiB TiB bps kbps Mbps Gbps px pt em rem dpi fps rpm bpm mol mmol dB ppm ppb % ‰ mph
    kph knots kn ha m² m³ cm² cm³ km² s² ×
""".split())
_AFTER_NUMBER = re.compile(r"\d[\d.,]*\s?([^\s\d]+)$")

# English closed-class words: articles and determiners, pronouns, prepositions, conjunctions, auxiliaries and modals.
# One syntactic role family, as punctuation is: 'of'/'for' and 'the' are not two concepts. (sklearn's stop-word list
# mixes in content words such as 'fire', 'system', 'front'; NLTK's needs a download.)
FUNCTION_WORDS = frozenset("""
    a an the this that these those my your his her its our their whose which what whatever whichever
    i me we us you he him she it they them myself yourself himself herself itself ourselves yourselves themselves
    mine yours hers ours theirs who whom whoever one ones someone anyone everyone nobody somebody anybody everybody
    something anything everything nothing
    all some any each every no none both either neither few many much more most several such other another
    about above across after against along amid among amongst around as at before behind below beneath beside
    besides between beyond by despite down during except for from in inside into like near of off on onto out
    outside over past per since than through throughout till to toward towards under underneath unlike until
    unto up upon via with within without
    and but or nor so yet if because although though unless whereas while whether once
    be am is are was were been being have has had having do does did doing done
    will would shall should can could may might must ought
    not n't 's 're 've 'd 'll 'm there
""".split())


def token_family(ctx: Context) -> str | None:
    """The token family of a context's token: 'space', 'punctuation', 'number', 'unit' (a unit symbol right after
    a number: the 'h' of 280 km/h, the 'Pa' of 101 kPa, °C, mg, %), 'function' (the token is a whole English
    function word: 'of', 'the', 'is', 'shall'; not a piece of a longer word) or None (an ordinary word piece)."""
    token = ctx.text[ctx.start:ctx.end]
    core = token.strip()
    if not core:
        return "space"
    unit = _AFTER_NUMBER.search(ctx.text[:ctx.start] + token.rstrip())
    if unit and all(part in UNIT_SYMBOLS for part in unit.group(1).split("/") if part):
        return "unit"
    if core.replace(",", "").replace(".", "").isdigit():
        return "number"
    if all(unicodedata.category(ch)[0] in "PS" for ch in core):
        return "punctuation"
    if ctx.word.strip().lower() in FUNCTION_WORDS:
        return "function"
    return None


@dataclass
class ModeEvidence:
    """Per context: the lower-cased whole word, the token family, the views; and the views' random scale. The deep
    view (a later layer's reading, :meth:`SubjectEmbedder.embed_deep`) is optional."""

    words: list[str]
    families: list[str | None]
    word_vecs: np.ndarray  # [m, d] the whole word in its window, rows L2-normalised
    window_vecs: np.ndarray  # [m, d] the window without the word
    scale: tuple[float, ...]  # typical cosine distance of two random contexts: (word, window[, deep]) view
    deep_vecs: np.ndarray | None = None  # [m, d] the deep view, or None

    @classmethod
    def of(cls, contexts: Sequence[Context], word_vecs: np.ndarray, window_vecs: np.ndarray,
           scale: tuple[float, ...], deep_vecs: np.ndarray | None = None) -> ModeEvidence:
        return cls([c.word.strip().lower() for c in contexts], [token_family(c) for c in contexts],
                   word_vecs, window_vecs, scale, deep_vecs)

    def views(self) -> list[tuple[np.ndarray, float]]:
        """(vectors, scale) of each view the evidence has (``scale`` may list more views than there are)."""
        vecs = [self.word_vecs, self.window_vecs] + ([] if self.deep_vecs is None else [self.deep_vecs])
        return list(zip(vecs, self.scale))

    def take(self, index: np.ndarray) -> ModeEvidence:
        return ModeEvidence([self.words[i] for i in index], [self.families[i] for i in index],
                            self.word_vecs[index], self.window_vecs[index], self.scale,
                            None if self.deep_vecs is None else self.deep_vecs[index])

    def extend(self, other: ModeEvidence) -> ModeEvidence:
        deep = None if self.deep_vecs is None or other.deep_vecs is None else np.concatenate(
            [self.deep_vecs, other.deep_vecs])
        return ModeEvidence(self.words + other.words, self.families + other.families,
                            np.concatenate([self.word_vecs, other.word_vecs]),
                            np.concatenate([self.window_vecs, other.window_vecs]), self.scale, deep)


def view_scale(*views: np.ndarray, n_pairs: int = 4000, seed: int = 0) -> tuple[float, ...]:
    """The median cosine distance between random pairs of (random) contexts, per view."""
    rng = np.random.default_rng(seed)
    m = views[0].shape[0]
    if m < 2:
        return tuple(1.0 for _ in views)
    a = rng.integers(m, size=n_pairs)
    b = (a + 1 + rng.integers(m - 1, size=n_pairs)) % m  # never a context with itself
    return tuple(max(float(np.median(1.0 - (X[a] * X[b]).sum(1))), 1e-3) for X in views)


@dataclass
class Clustering:
    labels: np.ndarray  # [m] cluster id per context, -1 = outlier
    modes: list[int]  # ids of substantial clusters
    silhouette: float
    shares: dict[int, float] = field(default_factory=dict)  # share of activation mass (from the sample)
    weights: dict[int, float] = field(default_factory=dict)  # max(mass share, share of the top band): for scoring

    @classmethod
    def single(cls, labels: np.ndarray) -> Clustering:
        """One mode holding every context that is not an outlier (the one place a one-mode clustering is built)."""
        return cls(np.where(labels >= 0, 0, -1), [0], 0.0, {0: 1.0}, {0: 1.0})

    @classmethod
    def of(cls, X: np.ndarray, labels: np.ndarray, modes: list[int], shares: dict[int, float],
           weights: dict[int, float]) -> Clustering:
        """A clustering of the contexts ``X`` with its silhouette computed (by :func:`silhouette`)."""
        clustering = cls(labels, modes, 0.0, shares, weights)
        clustering.silhouette = silhouette(X, clustering)
        return clustering

    def members(self, mode: int) -> np.ndarray:
        return np.nonzero(self.labels == mode)[0]


def centroids(X: np.ndarray, clustering: Clustering) -> np.ndarray:
    """[modes, d] unit centroids of the modes in ``X``."""
    cents = np.stack([X[clustering.labels == c].mean(0) for c in clustering.modes])
    return cents / np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12)


def silhouette_precomputed(dist: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette of a labelling from a square distance matrix: what ``sklearn.metrics.silhouette_score(dist,
    labels, metric="precomputed")`` returns (a point alone in its cluster scores 0), without its per-call
    validation, which dominates on the detector's small matrices (tested equal)."""
    ids, inverse = np.unique(labels, return_inverse=True)
    if not 1 < len(ids) < len(labels):
        raise ValueError(f"a silhouette needs 2 to {len(labels) - 1} clusters, got {len(ids)}")
    onehot = np.eye(len(ids))[inverse]  # [m, k]
    counts = onehot.sum(0)  # [k]
    sums = dist @ onehot  # [m, k]: summed distance from each point to each cluster
    own = counts[inverse]
    a = sums[np.arange(len(labels)), inverse] / np.maximum(own - 1, 1)
    other = np.where(onehot > 0, np.inf, sums / counts)
    b = other.min(1)
    s = np.where(own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def silhouette(X: np.ndarray, clustering: Clustering) -> float:
    """Mean silhouette (cosine) of the contexts that belong to a mode; 0 with fewer than two modes."""
    keep = clustering.labels >= 0
    if len(clustering.modes) < 2 or len(set(clustering.labels[keep])) < 2:
        return 0.0
    Xk = X[keep] / np.maximum(np.linalg.norm(X[keep], axis=1, keepdims=True), 1e-12)
    return silhouette_precomputed(np.maximum(1.0 - Xk @ Xk.T, 0.0), clustering.labels[keep])


def tree_cuts(Z: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """[m, len(ks)] the labels of a linkage tree ``Z`` cut into each k of ``ks`` clusters, numbered by first
    appearance: what ``scipy.cluster.hierarchy.cut_tree(Z, n_clusters=ks)`` returns (tested equal), by replaying the
    merges once with a union-find, about ten times faster on the detector's small trees."""
    m = Z.shape[0] + 1
    parent = list(range(2 * m - 1))
    column = {m - k: col for col, k in enumerate(ks)}  # merges applied -> the column of that k
    out = np.empty((m, len(ks)), dtype=int)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for step in range(m):
        if step in column:
            ids: dict[int, int] = {}
            out[:, column[step]] = [ids.setdefault(root(i), len(ids)) for i in range(m)]
        if step < m - 1:
            parent[int(Z[step, 0])] = parent[int(Z[step, 1])] = m + step
    return out


def cluster(X: np.ndarray, values: np.ndarray, sampled: np.ndarray, cfg: DetectorConfig,
            square: np.ndarray | None = None) -> Clustering:
    """Choose k by the silhouette criterion; return the clustering with its substantial modes.

    One average-linkage tree on cosine distances (what ``AgglomerativeClustering(metric="cosine",
    linkage="average")`` builds for each k) is cut at every k, and the silhouettes reuse its distances.
    ``square``: the [m, m] cosine distances of ``X``, when the caller has them."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import pdist, squareform

    m = X.shape[0]
    single = Clustering.single(np.zeros(m, dtype=int))
    ks = list(range(2, min(cfg.max_modes, m // cfg.min_mode_size) + 1))
    if m < cfg.min_contexts or not ks:
        return single
    use_sample = sampled.sum() >= cfg.min_contexts
    mass = values.clip(min=0) * (sampled if use_sample else np.ones_like(sampled))
    if mass.sum() <= 0:
        mass = values.clip(min=0) + 1e-9
    top = values.clip(min=0) * (1.0 - sampled) if use_sample and (1.0 - sampled).sum() > 0 else mass
    if square is None:
        dist = np.maximum(pdist(X, metric="cosine"), 0.0)  # float64 [m * (m - 1) / 2]
        square = squareform(dist)
    else:
        dist = squareform(square, checks=False)
    cuts = tree_cuts(linkage(dist, method="average"), ks)  # [m, len(ks)]: the tree cut at each k
    best: Clustering | None = None
    for col, k in enumerate(ks):
        labels = cuts[:, col].astype(int)
        shares = {c: float(mass[labels == c].sum() / mass.sum()) for c in range(k)}
        # a rare mode can carry little of the mass yet a good part of the strongest activations: count both
        weights = {c: max(shares[c], float(top[labels == c].sum() / max(top.sum(), 1e-12))) for c in range(k)}
        modes = [c for c in range(k) if (labels == c).sum() >= cfg.min_mode_size and weights[c] >= cfg.min_share]
        if len(modes) < 2:
            continue
        keep = np.isin(labels, modes)
        sil = silhouette_precomputed(square[np.ix_(keep, keep)], labels[keep])
        if best is None or sil > best.silhouette:
            labels = np.where(keep, labels, -1)
            best = Clustering(labels, modes, sil, {c: shares[c] for c in modes}, {c: weights[c] for c in modes})
    if best is None or best.silhouette < cfg.silhouette_min:
        return single
    return best


def _share_of(items: list[str | None], value: str | None) -> float:
    return sum(1 for i in items if i == value) / max(len(items), 1)


def _one_concept_by_rule(ev: ModeEvidence, a: np.ndarray, b: np.ndarray, cfg: DetectorConfig) -> bool:
    """Same word, or same token family (see the module docstring)."""
    words_a, words_b = [ev.words[i] for i in a], [ev.words[i] for i in b]
    shared = set(words_a) & set(words_b)
    if shared:
        overlap = min(sum(w in shared for w in words_a) / len(words_a),
                      sum(w in shared for w in words_b) / len(words_b))
        if overlap >= cfg.same_word_share:
            return True
    fam_a = Counter(ev.families[i] for i in a).most_common(1)[0][0]
    if fam_a is None:
        return False
    fams_a, fams_b = [ev.families[i] for i in a], [ev.families[i] for i in b]
    return _share_of(fams_a, fam_a) >= cfg.family_share and _share_of(fams_b, fam_a) >= cfg.family_share


def concept_distances(clustering: Clustering, ev: ModeEvidence, cfg: DetectorConfig,
                      concepts: list[int | None] | None = None) -> np.ndarray:
    """[modes, modes] concept distance between the modes (see the module docstring); the diagonal is 0.
    ``concepts``: each mode's probe concept (an index) or None."""
    k = len(clustering.modes)
    members = [clustering.members(c) for c in clustering.modes]
    views = []
    for X, scale in ev.views():
        cents = np.stack([X[idx].mean(0) for idx in members])
        cents /= np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12)
        views.append((1.0 - cents @ cents.T) / scale)
    dist = np.minimum.reduce(views)
    for i in range(k):
        dist[i, i] = 0.0
        for j in range(i):
            same_probe = concepts is not None and concepts[i] is not None and concepts[i] == concepts[j]
            if same_probe or _one_concept_by_rule(ev, members[i], members[j], cfg):
                dist[i, j] = dist[j, i] = 0.0
    return np.maximum(dist, 0.0)


def merge_modes(X: np.ndarray, clustering: Clustering, ev: ModeEvidence, cfg: DetectorConfig,
                concept_cents: np.ndarray | None = None) -> Clustering:
    """Merge the closest pair of modes while their concept distance is below ``merge_distance``."""
    return _merge(X, clustering, ev, cfg, concept_cents)[0]


def merge_and_score(X: np.ndarray, clustering: Clustering, ev: ModeEvidence, cfg: DetectorConfig, values: np.ndarray,
                    concept_cents: np.ndarray | None = None) -> tuple[Clustering, float, float]:
    """:func:`merge_modes` then :func:`score_modes`, the merged modes' distances computed once:
    (clustering, score, separation)."""
    merged, dist = _merge(X, clustering, ev, cfg, concept_cents)
    return (merged, *score_modes(X, merged, ev, cfg, values, concept_cents, dist=dist))


def _merge(X: np.ndarray, clustering: Clustering, ev: ModeEvidence, cfg: DetectorConfig,
           concept_cents: np.ndarray | None) -> tuple[Clustering, np.ndarray | None]:
    """The merged clustering and its modes' concept distances (None with fewer than two modes)."""
    while len(clustering.modes) >= 2:
        concepts = probe_concepts(X, clustering, concept_cents, cfg.probe_min_similarity)
        dist = concept_distances(clustering, ev, cfg, concepts)
        off = dist + np.diag(np.full(len(dist), np.inf))
        i, j = np.unravel_index(np.argmin(off), off.shape)
        if off[i, j] >= cfg.merge_distance:
            return clustering, dist
        a, b = clustering.modes[min(i, j)], clustering.modes[max(i, j)]
        labels = np.where(clustering.labels == b, a, clustering.labels)
        shares, weights = dict(clustering.shares), dict(clustering.weights)
        shares[a] += shares.pop(b)
        weights[a] += weights.pop(b)
        clustering = Clustering.of(X, labels, [c for c in clustering.modes if c != b], shares, weights)
    return Clustering.single(clustering.labels), None


def bagged_score(X: np.ndarray, clustering: Clustering, values: np.ndarray, sampled: np.ndarray, ev: ModeEvidence,
                 cfg: DetectorConfig, rng: np.random.Generator,
                 concept_cents: np.ndarray | None = None) -> tuple[Clustering, float, float]:
    """(modes, score, separation): the clustering of all the contexts merged into modes (:func:`merge_and_score`),
    and its score as the mean score of ``cfg.n_bags`` random subsets of ``cfg.bag_fraction`` of the contexts, each
    clustered, merged and scored on its own (bagging): one score of all the contexts hangs on where a cluster's edge
    falls and on each context in or out; the mean over subsets does not. One mode of all the contexts scores 0.
    ``n_bags`` <= 1: the score of all the contexts."""
    merged, score, separation = merge_and_score(X, clustering, ev, cfg, values, concept_cents)
    n = len(X)
    if cfg.n_bags <= 1 or len(merged.modes) < 2 or n < cfg.min_contexts:
        return merged, score, separation
    size = max(cfg.min_contexts, int(round(cfg.bag_fraction * n)))
    from scipy.spatial.distance import pdist, squareform

    square = squareform(np.maximum(pdist(X, metric="cosine"), 0.0))  # the subsets' distances are its blocks
    scores = []
    for _ in range(cfg.n_bags):
        idx = np.sort(rng.choice(n, size=size, replace=False))
        sub = cluster(X[idx], values[idx], sampled[idx], cfg, square[np.ix_(idx, idx)])
        scores.append(merge_and_score(X[idx], sub, ev.take(idx), cfg, values[idx], concept_cents)[1])
    return merged, float(np.mean(scores)), separation


def probe_concepts(X: np.ndarray, clustering: Clustering, concept_cents: np.ndarray | None,
                   min_sim: float) -> list[int | None] | None:
    """Each mode's best-matching probe concept (an index into ``concept_cents``), None below ``min_sim``."""
    if concept_cents is None or not len(concept_cents):
        return None
    sims = centroids(X, clustering) @ concept_cents.T  # [modes, concepts]
    return [int(row.argmax()) if row.max() >= min_sim else None for row in sims]


def _strengths(values: np.ndarray, clustering: Clustering) -> np.ndarray:
    """Per mode: mean of its 3 highest activations over that of the strongest mode, in (0, 1]."""
    peaks = []
    for c in clustering.modes:
        v = np.sort(values[clustering.labels == c])[::-1][:3]
        peaks.append(float(v.mean()) if v.size else 0.0)
    top = max(max(peaks), 1e-12)
    return np.clip(np.array(peaks) / top, 1e-6, 1.0)


def coherence(X: np.ndarray, clustering: Clustering, scale: float) -> np.ndarray:
    """Per mode: 1 - the mean cosine distance between two of its contexts over ``scale`` (that of two random
    contexts): 1 for identical contexts, about 0 for a set as spread as random text."""
    Xn = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    gram = Xn @ Xn.T
    out = []
    for c in clustering.modes:
        idx = clustering.members(c)
        n = len(idx)
        mean_dist = (n * n - float(gram[np.ix_(idx, idx)].sum())) / (n * (n - 1)) if n > 1 else scale
        out.append(1.0 - mean_dist / scale)
    return np.array(out)


def _coherent(clustering: Clustering, ev: ModeEvidence, cfg: DetectorConfig) -> np.ndarray:
    """Per mode, in [0, 1]: how far it is a concept rather than a scatter of unrelated contexts, its
    :func:`coherence` mapped from [0, ``coherence_hi``] to [0, 1] (``coherence_hi`` 0: every mode counts fully)."""
    if cfg.coherence_hi <= 0:
        return np.ones(len(clustering.modes))
    return np.clip(coherence(ev.word_vecs, clustering, ev.scale[0]) / cfg.coherence_hi, 0.0, 1.0)


def score_modes(X: np.ndarray, clustering: Clustering, ev: ModeEvidence, cfg: DetectorConfig, values: np.ndarray,
                concept_cents: np.ndarray | None = None, dist: np.ndarray | None = None) -> tuple[float, float]:
    """(score, separation) of a clustering; one mode scores (0, 0).

    score = balance**balance_power x separation term x (1 + quality term) / 2. Each mode weighs share x
    strength**strength_power (strength: its peak over the strongest mode's): a neuron is polysemantic when it fires
    on several things *about as strongly*, not when a weak side-response sits beside one concept. Balance is the
    Gini-Simpson diversity of those weights (two equal modes: 1); the separation is the mean concept distance
    between the modes, mapped from [``sep_lo``, ``sep_hi``] to [0, 1]; the quality term maps the silhouette from
    [0, ``silhouette_hi``] to [0, 1]."""
    if len(clustering.modes) < 2:
        return 0.0, 0.0
    weights = np.array([clustering.weights[c] for c in clustering.modes])
    p = weights * _strengths(values, clustering) ** cfg.strength_power * _coherent(clustering, ev, cfg)
    if p.sum() <= 0:
        return 0.0, 0.0
    p = p / p.sum()
    balance = min(1.0, (1.0 - float((p ** 2).sum())) / 0.5)
    if dist is None:  # the modes' concept distances, unless the merge step has them
        concepts = probe_concepts(X, clustering, concept_cents, cfg.probe_min_similarity)
        dist = concept_distances(clustering, ev, cfg, concepts)
    iu = np.triu_indices(len(clustering.modes), 1)
    separation = float(dist[iu].mean())
    sep_term = min(1.0, max(0.0, (separation - cfg.sep_lo) / (cfg.sep_hi - cfg.sep_lo)))
    quality = min(1.0, max(0.0, clustering.silhouette / cfg.silhouette_hi))
    return balance ** cfg.balance_power * sep_term * (0.5 + 0.5 * quality), separation
