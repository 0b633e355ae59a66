"""Polysemantic neuron detection: which neurons respond to several unrelated things, how sure we are, which modes.

Usage::

    det = PolysemanticDetector(profile_or_record, interface=interface)     # embedder="minilm" (default) or "hidden"
    for n in det.detect():                     # the polysemantic neurons, best first
        print(n.summary)                       # 'L6/N1234: 2 modes: animals (55%), months (45%); score 0.81, p=0.010'
    det.scores()                               # DataFrame over every analysed neuron

Method, per neuron:
1. contexts: the top band (top examples with value >= ``band`` x max) plus a uniform sample of the neuron's other
   strong tokens (the sample gives unbiased shares of activation mass);
2. embed each token in its context (bundled MiniLM, or the subject model's residual stream);
3. cluster: average-linkage agglomerative clustering on cosine distance for k = 2..``max_modes``; **k is the value
   with the highest mean silhouette** counting only clusters of at least ``min_mode_size`` contexts and at least
   ``min_share`` of the activation mass; k = 1 when no k reaches ``silhouette_min``;
   modes whose centroids are closer than ``merge_distance`` are merged (not clearly distinct);
4. score in [0, 1] = sqrt(balance) x separation term x (1 + quality term) / 2, where balance is the Gini-Simpson
   diversity of the modes' weights (mass share x strength**4, strength = the mode's peak activation over the
   strongest mode's), scaled so two equal modes give 1; the separation term maps the mean cosine distance between
   mode centroids from [``sep_lo``, ``sep_hi``] to [0, 1]; the quality term maps the silhouette from
   [0, ``silhouette_hi``] to [0, 1]; one mode scores 0;
5. null: the same procedure on ``n_null`` random sets of contexts from the analysed sites' tokens, *as many as the
   neuron has* (random sets of 12 contexts split into modes far more often than sets of 40: a p-value against a
   mix of sizes is too small for neurons with few contexts and too large for neurons with many), each set with the
   activation values of one of ``null_value_neurons`` neurons drawn at random from the sites' firing neurons (so a
   neuron's p-value does not depend on which other neurons are analysed); the p-value is the share of null scores
   at least as high (with the +1 correction), the z-score is against their mean and spread. Sizes are rounded down
   to a grid (every size up to 20, then steps of about a tenth), which errs towards larger p-values;
6. name each mode by the probe concept whose centroid is closest (cosine >= ``probe_min_similarity``) and its top
   tokens; modes named after the same concept are merged before scoring (``merge_same_concept``);
7. for detected neurons, zero-ablate the neuron and report the change of the model's next-token loss on
   each mode's contexts.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from neuron_core.analysis.contexts import Context, contexts_from_profile, contexts_from_record, random_contexts
from neuron_core.analysis.embed import Embedder, make_embedder
from neuron_core.analysis.types import Mode, ModeExample, PolysemanticNeuron
from neuron_core.capture import ActivationRecord
from neuron_core.corpus import ConceptProbes, load_probes
from neuron_core.errors import CorpusTooSmallError, InputError
from neuron_core.profile import NeuronProfile

__all__ = ["DetectorConfig", "PolysemanticDetector", "PolysematicDetector", "neuron_ref"]


@dataclass(frozen=True)
class DetectorConfig:
    """Settings of the detector (see the module docstring for how each one is used)."""

    max_neurons: int | None = None
    """Analyse at most this many neurons per site, the ones with the highest maximum activation; None: all."""
    n_top: int = 24
    """Top-band contexts per neuron."""
    n_sample: int = 24
    """Sampled strong contexts per neuron."""
    band: float = 0.2
    """A context is strong when its activation is at least this fraction of the neuron's maximum."""
    min_contexts: int = 6
    """Neurons with fewer strong contexts get one mode and no score."""
    max_modes: int = 4
    min_mode_size: int = 3
    min_share: float = 0.08
    """A mode must carry at least this share of the neuron's strong activation mass."""
    silhouette_min: float = 0.08
    silhouette_hi: float = 0.35
    sep_lo: float = 0.55
    sep_hi: float = 0.85
    merge_distance: float = 0.6
    """Modes whose centroids are closer than this cosine distance are one mode (not clearly distinct)."""
    strength_power: float = 4.0
    """Modes weigh share x strength**strength_power (strength: the mode's peak over the strongest mode's)."""
    merge_same_concept: bool = True
    """Modes named after the same probe concept are one mode."""
    probe_modes: bool = True
    """With a model interface: also look for modes the corpus barely shows, by the neuron's response to each probe
    concept's held-out spans (a concept counts when its median span activation reaches ``probe_mode_strength`` x
    the neuron's peak and its selectivity AUC reaches ``probe_mode_auc``)."""
    probe_mode_strength: float = 0.3
    probe_mode_auc: float = 0.85
    probe_mode_weight: float = 0.25
    """Weight (in place of a share of the strong activations) of a mode found through the probes only."""
    n_null: int = 200
    """Random context sets per set size (see :func:`null_size`)."""
    alpha: float = 0.05
    """detect() keeps neurons with p-value below alpha ..."""
    min_score: float = 0.25
    """... and score at least this."""
    probe_min_similarity: float = 0.40
    null_pool: int = 600
    """Random contexts per site the null sets are drawn from (uniform over the site's tokens)."""
    null_value_neurons: int = 64
    """Neurons (drawn at random from the analysed sites' firing neurons) whose strong contexts' activation values
    the null sets take."""
    ablation: bool = True
    """Measure each mode's loss change under zero-ablation (causal LMs, for detected neurons only)."""
    ablation_contexts: int = 8
    ablation_max_neurons: int = 8
    """Measure effects for at most this many detected neurons (the highest scoring)."""
    window_before: int = 8
    window_after: int = 2
    min_position: int = 1
    """Leave out tokens before this position: a decoder's first token is an attention sink whose huge activations
    say nothing about meaning (0 keeps every position)."""


def null_size(n_contexts: int, min_contexts: int) -> int:
    """The size of the random context sets a neuron with ``n_contexts`` contexts is compared with: the largest
    grid size not above it. The grid holds every size from ``min_contexts`` to 19, then steps of about a tenth
    (20, 22, ..., 28, 30, 33, ..., 39, 42, 46, 50, ...). Random sets split into modes less often the larger they
    are, so rounding down errs towards larger p-values."""
    size = grid = min_contexts
    while grid <= n_contexts:
        size = grid
        grid += max(1, grid // 10)
    return size


def neuron_ref(site: str, neuron: int) -> str:
    if site.startswith("blocks.") and site.endswith(".mlp.hook_post"):
        return f"L{site.split('.')[1]}/N{neuron}"
    return f"{site}/N{neuron}"


@dataclass
class _Clustering:
    labels: np.ndarray  # [m] cluster id per context, -1 = outlier
    modes: list[int]  # ids of substantial clusters
    silhouette: float
    shares: dict[int, float] = field(default_factory=dict)  # share of activation mass (from the sample)
    weights: dict[int, float] = field(default_factory=dict)  # max(mass share, share of the top band): for scoring


def _cluster(X: np.ndarray, values: np.ndarray, sampled: np.ndarray, cfg: DetectorConfig) -> _Clustering:
    """Choose k by the silhouette criterion; return the clustering with its substantial modes.

    One average-linkage tree on cosine distances (what ``AgglomerativeClustering(metric="cosine",
    linkage="average")`` builds for each k) is cut at every k, and the silhouettes reuse its distances."""
    from scipy.cluster.hierarchy import cut_tree, linkage
    from scipy.spatial.distance import pdist, squareform
    from sklearn.metrics import silhouette_score

    m = X.shape[0]
    single = _Clustering(np.zeros(m, dtype=int), [0], 0.0, {0: 1.0}, {0: 1.0})
    ks = list(range(2, min(cfg.max_modes, m // cfg.min_mode_size) + 1))
    if m < cfg.min_contexts or not ks:
        return single
    use_sample = sampled.sum() >= cfg.min_contexts
    mass = values.clip(min=0) * (sampled if use_sample else np.ones_like(sampled))
    if mass.sum() <= 0:
        mass = values.clip(min=0) + 1e-9
    top = values.clip(min=0) * (1.0 - sampled) if use_sample and (1.0 - sampled).sum() > 0 else mass
    dist = np.maximum(pdist(X, metric="cosine"), 0.0)  # float64 [m * (m - 1) / 2]
    cuts = cut_tree(linkage(dist, method="average"), n_clusters=ks)  # [m, len(ks)]: the tree cut at each k
    square = squareform(dist)
    best: _Clustering | None = None
    for col, k in enumerate(ks):
        labels = cuts[:, col].astype(int)
        shares = {c: float(mass[labels == c].sum() / mass.sum()) for c in range(k)}
        # a rare mode can carry little of the mass yet a good part of the strongest activations: count both
        weights = {c: max(shares[c], float(top[labels == c].sum() / max(top.sum(), 1e-12))) for c in range(k)}
        modes = [c for c in range(k) if (labels == c).sum() >= cfg.min_mode_size and weights[c] >= cfg.min_share]
        if len(modes) < 2:
            continue
        keep = np.isin(labels, modes)
        sil = float(silhouette_score(square[np.ix_(keep, keep)], labels[keep], metric="precomputed"))
        if best is None or sil > best.silhouette:
            labels = np.where(keep, labels, -1)
            best = _Clustering(labels, modes, sil, {c: shares[c] for c in modes}, {c: weights[c] for c in modes})
    if best is None or best.silhouette < cfg.silhouette_min:
        return single
    return _merge_close(X, best, cfg, single)


def _merge_close(X: np.ndarray, clustering: _Clustering, cfg: DetectorConfig, single: _Clustering) -> _Clustering:
    """Merge modes whose centroids are closer than ``merge_distance``: they are not clearly distinct."""
    while len(clustering.modes) >= 2:
        cents = _centroids(X, clustering)
        dist = 1.0 - cents @ cents.T
        np.fill_diagonal(dist, np.inf)
        i, j = np.unravel_index(np.argmin(dist), dist.shape)
        if dist[i, j] >= cfg.merge_distance:
            break
        a, b = clustering.modes[i], clustering.modes[j]
        labels = np.where(clustering.labels == b, a, clustering.labels)
        shares, weights = dict(clustering.shares), dict(clustering.weights)
        shares[a] += shares.pop(b)
        weights[a] += weights.pop(b)
        modes = [c for c in clustering.modes if c != b]
        clustering = _Clustering(labels, modes, clustering.silhouette, shares, weights)
    if len(clustering.modes) < 2:
        return _Clustering(np.where(clustering.labels >= 0, 0, -1), [0], 0.0, {0: 1.0}, {0: 1.0}) \
            if clustering.modes else single
    from sklearn.metrics import silhouette_score

    keep = clustering.labels >= 0
    clustering.silhouette = float(silhouette_score(X[keep], clustering.labels[keep], metric="cosine"))
    return clustering


def _merge_same_concept(X: np.ndarray, clustering: _Clustering, concept_cents: np.ndarray | None,
                        min_sim: float) -> _Clustering:
    """Merge modes whose best-matching probe concept is the same (both above ``min_sim``)."""
    if concept_cents is None or len(clustering.modes) < 2:
        return clustering
    sims = _centroids(X, clustering) @ concept_cents.T  # [modes, concepts]
    best = sims.argmax(1)
    ok = sims.max(1) >= min_sim
    labels = clustering.labels.copy()
    shares, weights = dict(clustering.shares), dict(clustering.weights)
    modes = list(clustering.modes)
    for i in range(len(clustering.modes)):
        for j in range(i):
            if ok[i] and ok[j] and best[i] == best[j]:
                a, b = clustering.modes[j], clustering.modes[i]
                root = a
                while root not in modes:  # a was merged already: follow to its survivor
                    root = int(labels[np.nonzero(clustering.labels == root)[0][0]])
                if b in modes and b != root:
                    labels[labels == b] = root
                    shares[root] += shares.pop(b)
                    weights[root] += weights.pop(b)
                    modes.remove(b)
                break
    if len(modes) < 2:
        return _Clustering(np.where(labels >= 0, 0, -1), [0], 0.0, {0: 1.0}, {0: 1.0})
    merged = _Clustering(labels, modes, clustering.silhouette, shares, weights)
    if len(modes) < len(clustering.modes):
        from sklearn.metrics import silhouette_score

        keep = labels >= 0
        merged.silhouette = float(silhouette_score(X[keep], labels[keep], metric="cosine"))
    return merged


def _centroids(X: np.ndarray, clustering: _Clustering) -> np.ndarray:
    cents = np.stack([X[clustering.labels == c].mean(0) for c in clustering.modes])
    return cents / np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12)


def _strengths(values: np.ndarray, clustering: _Clustering) -> np.ndarray:
    """Per mode: mean of its 3 highest activations over that of the strongest mode, in (0, 1]."""
    peaks = []
    for c in clustering.modes:
        v = np.sort(values[clustering.labels == c])[::-1][:3]
        peaks.append(float(v.mean()) if v.size else 0.0)
    top = max(max(peaks), 1e-12)
    return np.clip(np.array(peaks) / top, 1e-6, 1.0)


def _score(X: np.ndarray, clustering: _Clustering, cfg: DetectorConfig, values: np.ndarray) -> tuple[float, float]:
    """(score, separation) of a clustering; one mode scores (0, 0).

    Each mode weighs share x strength**strength_power, where strength compares its peak activation with the
    strongest mode's:
    a neuron is polysemantic when it fires on several things *about as strongly*, not when a weak side-response
    (e.g. to word fragments) sits beside one concept."""
    if len(clustering.modes) < 2:
        return 0.0, 0.0
    weights = np.array([clustering.weights[c] for c in clustering.modes])
    p = weights * _strengths(values, clustering) ** cfg.strength_power
    p = p / p.sum()
    balance = min(1.0, (1.0 - float((p ** 2).sum())) / 0.5)
    cents = _centroids(X, clustering)
    sims = cents @ cents.T
    iu = np.triu_indices(len(cents), 1)
    separation = float((1.0 - sims[iu]).mean())
    sep_term = min(1.0, max(0.0, (separation - cfg.sep_lo) / (cfg.sep_hi - cfg.sep_lo)))
    quality = min(1.0, max(0.0, clustering.silhouette / cfg.silhouette_hi))
    return math.sqrt(balance) * sep_term * (0.5 + 0.5 * quality), separation


class PolysemanticDetector:
    """Finds polysemantic neurons in an ActivationRecord or a NeuronProfile (see the module docstring)."""

    def __init__(self, source: ActivationRecord | NeuronProfile, *, interface: Any = None,
                 embedder: str | Embedder = "minilm", probes: dict[str, ConceptProbes] | str | None = None,
                 config: DetectorConfig | None = None, sites: Sequence[str] | None = None,
                 neurons: Sequence[int] | dict[str, Sequence[int]] | None = None, seed: int = 0) -> None:
        if not isinstance(source, (ActivationRecord, NeuronProfile)):
            raise InputError(f"PolysemanticDetector needs an ActivationRecord or a NeuronProfile, "
                             f"not {type(source).__name__}")
        self.source = source
        self.config = config or DetectorConfig()
        self.seed = seed
        if interface is not None:
            from neuron_core.interface import ModelInterface

            interface = interface if isinstance(interface, ModelInterface) else ModelInterface(interface)
        self.interface = interface
        all_sites = source.sites if isinstance(source, ActivationRecord) else source.site_names
        self.sites = [self._site_key(s) for s in sites] if sites is not None else list(all_sites)
        self._neurons_arg = neurons
        self._embedder_spec = embedder
        self._embedder: Embedder | None = None
        self._probes_arg = probes
        self._probe_centroids: tuple[list[str], np.ndarray] | None = None
        self._results: list[PolysemanticNeuron] | None = None
        self.timings: dict[str, float] = {}
        self._details: dict[tuple[str, int], tuple[list[Context], np.ndarray, _Clustering]] = {}
        self._probe_found: set[tuple[str, int, int]] = set()
        self.n_excluded: dict[str, int] = {}

    # ------------------------------------------------------------------ inputs
    def _site_key(self, site: str) -> str:
        if isinstance(self.source, ActivationRecord):
            return self.source._key(site)
        return self.source._key(site)

    def _acts_max(self, site: str) -> torch.Tensor:
        if isinstance(self.source, ActivationRecord):
            acts = self.source[site]
            return torch.where(torch.isfinite(acts), acts, -torch.inf).amax(0)
        return self.source[site].max.float()

    def _neurons_for(self, site: str) -> list[int]:
        arg = self._neurons_arg
        peak = self._acts_max(site)
        n_total = peak.numel()
        if isinstance(arg, dict):
            chosen = [int(n) for n in arg.get(site, [])]
        elif arg is not None:
            chosen = [int(n) for n in arg]
        else:
            finite = torch.isfinite(peak) & (peak > 0)
            order = torch.argsort(torch.where(finite, peak, -torch.inf), descending=True)
            chosen = [int(n) for n in order[: int(finite.sum())]]
            if self.config.max_neurons is not None:
                chosen = chosen[: self.config.max_neurons]
        bad = [n for n in chosen if not 0 <= n < n_total]
        if bad:
            raise InputError(f"neurons {bad[:5]} out of range for {site} (0-{n_total - 1})")
        excluded = int((~torch.isfinite(peak)).sum())
        if isinstance(self.source, NeuronProfile):
            excluded = int((self.source[site].n_nonfinite > 0).sum())
        self.n_excluded[site] = excluded
        return chosen

    def _contexts(self, site: str, neuron: int) -> list[Context]:
        cfg = self.config
        kw = dict(n_top=cfg.n_top, n_sample=cfg.n_sample, band=cfg.band, before=cfg.window_before,
                  after=cfg.window_after)
        if isinstance(self.source, ActivationRecord):
            ctxs = contexts_from_record(self.source, site, neuron, seed=self.seed, min_position=cfg.min_position,
                                        **kw)  # type: ignore[arg-type]
        else:
            ctxs = contexts_from_profile(self.source, site, neuron, **kw)  # type: ignore[arg-type]
        seen: set[tuple[str, int, int]] = set()
        unique = []
        for c in ctxs:  # a repeated sentence gives identical windows: count each once
            key = (c.text, c.start, c.end)
            if c.position >= cfg.min_position and key not in seen:
                seen.add(key)
                unique.append(c)
        return unique

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            layer = None
            if self.sites and self.sites[0].startswith("blocks."):
                layer = int(self.sites[0].split(".")[1])
            self._embedder = make_embedder(self._embedder_spec, self.interface, layer)
        return self._embedder

    def _probe_sets(self) -> dict[str, ConceptProbes]:
        """The probe sets, read once (a dict given by the user, a folder, or the bundled ones)."""
        if not isinstance(self._probes_arg, dict):
            self._probes_arg = load_probes(self._probes_arg)
        return self._probes_arg

    def _probes(self) -> tuple[list[str], np.ndarray]:
        if self._probe_centroids is None:
            probes = self._probe_sets()
            names: list[str] = []
            cents: list[np.ndarray] = []
            for name, sets in sorted(probes.items()):
                ctxs = [Context(e.text, e.start, e.end, 1.0, -1, -1, e.span_text) for e in sets.fit]
                if not ctxs:
                    continue
                X = self.embedder.embed(ctxs)
                c = X.mean(0)
                cents.append(c / max(float(np.linalg.norm(c)), 1e-12))
                names.append(name)
            self._probe_centroids = (names, np.stack(cents))
        return self._probe_centroids

    # ------------------------------------------------------------------ run
    def run(self) -> list[PolysemanticNeuron]:
        if self._results is not None:
            return self._results
        cfg = self.config
        t0 = time.perf_counter()
        gathered: list[tuple[str, int, list[Context]]] = []
        for site in self.sites:
            for neuron in self._neurons_for(site):
                gathered.append((site, neuron, self._contexts(site, neuron)))
        usable = [g for g in gathered if len(g[2]) >= cfg.min_contexts]
        if gathered and not usable:
            most = max(len(g[2]) for g in gathered)
            raise CorpusTooSmallError(
                f"no neuron has {cfg.min_contexts} strong contexts (the most is {most}); capture more text "
                f"(a few hundred tokens at least) or lower DetectorConfig.min_contexts")
        self.timings["contexts"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        pool: dict[tuple[str, int, int], Context] = {}
        for _, _, ctxs in gathered:
            for c in ctxs:
                pool[(c.text, c.start, c.end)] = c
        pool_list = list(pool.values())
        pool_X = self.embedder.embed(pool_list) if pool_list else np.zeros((0, 1), np.float32)
        index = {(c.text, c.start, c.end): i for i, c in enumerate(pool_list)}
        self.timings["embed"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        names, cents = self._probes()
        self.timings["probes"] = time.perf_counter() - t0
        concept_cents = cents if cfg.merge_same_concept and len(names) else None

        t0 = time.perf_counter()
        probe_acts = {}
        if cfg.probe_modes and self.interface is not None:
            from neuron_core.analysis.probes import ProbeActivations

            probes = self._probe_sets()
            wanted: dict[str, list[int]] = {}
            for site, neuron, ctxs in gathered:
                if len(ctxs) >= cfg.min_contexts:
                    wanted.setdefault(site, []).append(neuron)
            if wanted:
                probe_acts = ProbeActivations.compute(self.interface, wanted, probes)
        self.timings["probe_selectivity"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        per_neuron = []
        for site, neuron, ctxs in gathered:
            X = pool_X[[index[(c.text, c.start, c.end)] for c in ctxs]] if ctxs else np.zeros((0, 1), np.float32)
            values = np.array([c.value for c in ctxs])
            sampled = np.array([c.sampled for c in ctxs], dtype=float)
            clustering = _cluster(X, values, sampled, cfg)
            if site in probe_acts and len(ctxs) >= cfg.min_contexts:
                ctxs, X, values, clustering = self._add_probe_modes(
                    site, neuron, ctxs, X, values, clustering, probe_acts[site], names, cents)
            clustering = _merge_same_concept(X, clustering, concept_cents, cfg.probe_min_similarity)
            score, separation = _score(X, clustering, cfg, values)
            per_neuron.append((site, neuron, ctxs, X, clustering, score, separation))
            self._details[(site, neuron)] = (ctxs, X, clustering)
        self.timings["cluster"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        null_pool = [c for site in self.sites for c in random_contexts(
            self.source, site, cfg.null_pool // max(1, len(self.sites)), seed=self.seed,
            before=cfg.window_before, after=cfg.window_after)]
        null_X = self.embedder.embed(null_pool) if null_pool else np.zeros((0, 1), np.float32)
        known = {(site, neuron): ctxs for site, neuron, ctxs in gathered}  # corpus contexts, before any probe modes
        value_sets = self._null_values(known) or [np.array([c.value for c in g[2]]) for g in usable]
        nulls = self._null_scores(null_X, null_pool, {null_size(len(g[2]), cfg.min_contexts) for g in usable},
                                  value_sets, concept_cents)
        self.timings["null"] = time.perf_counter() - t0

        results = []
        for site, neuron, ctxs, X, clustering, score, separation in per_neuron:
            null = nulls.get(null_size(len(known[(site, neuron)]), cfg.min_contexts), np.zeros(0))
            p_value = float((1 + (null >= score - 1e-12).sum()) / (1 + null.size)) if null.size else 1.0
            if len(clustering.modes) < 2:
                p_value = 1.0
            mu, sd = (float(null.mean()), float(null.std())) if null.size else (0.0, 0.0)
            z = (score - mu) / max(sd, 1e-6)
            probe_ids = {c for (s_, n_, c) in self._probe_found if s_ == site and n_ == neuron}
            modes = self._modes(ctxs, X, clustering, names, cents, probe_ids)
            ref = neuron_ref(site, neuron)
            results.append(PolysemanticNeuron(
                site=site, neuron=neuron, score=round(float(score), 6), p_value=p_value, z_score=float(z),
                n_modes=len(modes), separation=separation, modes=modes,
                summary=self._summary(ref, modes, score, p_value, len(ctxs))))
        t0 = time.perf_counter()
        if cfg.ablation and self.interface is not None and self.interface.loaded.is_causal_lm:
            chosen = sorted((r for r in results if self._is_detected(r)), key=lambda r: -r.score)
            chosen_keys = {(r.site, r.neuron) for r in chosen[: cfg.ablation_max_neurons]}
            results = [self._with_effects(r, per_neuron) if (r.site, r.neuron) in chosen_keys else r
                       for r in results]
        self.timings["ablation"] = time.perf_counter() - t0
        results.sort(key=lambda r: (-r.score, r.p_value, r.site, r.neuron))
        self._results = results
        return results

    def _add_probe_modes(self, site: str, neuron: int, ctxs: list[Context], X: np.ndarray, values: np.ndarray,
                         clustering: _Clustering, pa: Any, names: list[str], cents: np.ndarray
                         ) -> tuple[list[Context], np.ndarray, np.ndarray, _Clustering]:
        """Add a mode for each probe concept the neuron responds to strongly and selectively that no mode covers."""
        cfg = self.config
        peak = float(values.max()) if values.size else 0.0
        if peak <= 0:
            return ctxs, X, values, clustering
        covered = set()
        if len(names):
            sims = _centroids(X, clustering) @ cents.T if X.shape[0] else np.zeros((0, len(names)))
            covered = {names[int(i)] for i, row in zip(sims.argmax(1), sims) if row.max() >= cfg.probe_min_similarity}
        from neuron_core.analysis.probes import selectivity_auc

        concept_acts, background = pa.neuron(neuron)
        bg = np.sort(background)
        new_ctx: list[Context] = []
        new_labels: list[int] = []
        labels = clustering.labels
        modes, shares, weights = list(clustering.modes), dict(clustering.shares), dict(clustering.weights)
        next_id = int(max(labels.max(initial=0), max(modes, default=0))) + 1
        for concept, v in concept_acts.items():
            median = float(np.median(v))
            auc = selectivity_auc(v, bg)
            if concept in covered or median < cfg.probe_mode_strength * peak or auc < cfg.probe_mode_auc:
                continue
            order = np.argsort(-v)[: cfg.min_mode_size * 2]
            for i in order:
                ex = pa.examples[concept][int(i)]
                new_ctx.append(Context(ex.text, ex.start, ex.end, float(v[i]), -1, -1, ex.span_text))
                new_labels.append(next_id)
            modes.append(next_id)
            shares[next_id] = 0.0  # not observed in the corpus's activation mass
            weights[next_id] = cfg.probe_mode_weight
            self._probe_found.add((site, neuron, next_id))
            next_id += 1
        if not new_ctx:
            return ctxs, X, values, clustering
        X2 = np.concatenate([X, self.embedder.embed(new_ctx)])
        values2 = np.concatenate([values, [c.value for c in new_ctx]])
        labels2 = np.concatenate([labels, new_labels])
        merged = _Clustering(labels2, modes, clustering.silhouette, shares, weights)
        if len(modes) >= 2:
            from sklearn.metrics import silhouette_score

            keep = np.isin(labels2, modes)
            merged.silhouette = float(silhouette_score(X2[keep], labels2[keep], metric="cosine"))
        return ctxs + new_ctx, X2, values2, merged

    def _null_values(self, known: dict[tuple[str, int], list[Context]]) -> list[np.ndarray]:
        """The activation values of the strong contexts of ``null_value_neurons`` neurons drawn at random (seeded)
        from every firing neuron of the analysed sites: the same whichever neurons are analysed. ``known``: contexts
        already gathered (the analysed neurons'), reused."""
        cfg = self.config
        rng = np.random.default_rng([self.seed, 1])
        per_site = max(1, cfg.null_value_neurons // max(1, len(self.sites)))
        out = []
        for site in self.sites:
            peak = self._acts_max(site)
            live = torch.nonzero(torch.isfinite(peak) & (peak > 0)).flatten().cpu().numpy()
            for neuron in np.sort(rng.choice(live, size=min(per_site, live.size), replace=False)):
                ctxs = known.get((site, int(neuron)))
                values = np.array([c.value for c in (ctxs if ctxs is not None else self._contexts(site, int(neuron)))])
                if values.size >= cfg.min_contexts:
                    out.append(values)
        return out

    def _null_scores(self, pool_X: np.ndarray, pool: list[Context], sizes: set[int], value_sets: list[np.ndarray],
                     concept_cents: np.ndarray | None) -> dict[int, np.ndarray]:
        """Per set size: the scores of ``n_null`` random context sets of that size, each with the activation values
        of one of ``value_sets`` (drawn at random, unrelated to the contexts). The draws for a size depend only on
        the seed and the size, not on which other sizes are asked for."""
        cfg = self.config
        value_sets = [v for v in value_sets if v.size]
        if len(pool) < cfg.min_contexts or cfg.n_null <= 0 or not value_sets:
            return {}
        out: dict[int, np.ndarray] = {}
        for size in sorted(sizes):
            m = min(size, len(pool))
            rng = np.random.default_rng([self.seed, size])
            scores = np.empty(cfg.n_null)
            for i in range(cfg.n_null):
                idx = rng.choice(len(pool), size=m, replace=False)
                own = value_sets[int(rng.integers(len(value_sets)))]
                vals = rng.choice(own, size=m, replace=own.size < m)
                X = pool_X[idx]
                clustering = _merge_same_concept(X, _cluster(X, vals, np.ones(m), cfg), concept_cents,
                                                 cfg.probe_min_similarity)
                scores[i] = _score(X, clustering, cfg, vals)[0]
            out[size] = scores
        return out

    def _modes(self, ctxs: list[Context], X: np.ndarray, clustering: _Clustering, names: list[str],
               cents: np.ndarray, probe_ids: set[int] | None = None) -> list[Mode]:
        if not ctxs:
            return []
        mode_ids = clustering.modes
        mode_cents = _centroids(X, clustering) if X.shape[0] else np.zeros((1, 1))
        # the top band: the neuron's strongest contexts from the corpus (not the uniform sample, not probe sentences)
        top_band = np.array([not ctx.sampled and ctx.doc_id >= 0 for ctx in ctxs])
        top_mass = np.array([max(ctx.value, 0.0) for ctx in ctxs]) * top_band
        modes = []
        for j, c in enumerate(mode_ids):
            members = [ctx for ctx, lab in zip(ctxs, clustering.labels) if lab == c]
            members.sort(key=lambda ctx: -ctx.value)
            counts = Counter(ctx.token.strip() or repr(ctx.token) for ctx in members)
            top_tokens = [t for t, _ in counts.most_common(5)]
            concept, sim = None, None
            if len(names):
                sims = cents @ mode_cents[j]
                best = int(np.argmax(sims))
                if float(sims[best]) >= self.config.probe_min_similarity:
                    concept, sim = names[best], float(sims[best])
                else:
                    sim = float(sims[best])
            token_label = "/".join(repr(t) for t in top_tokens[:3])
            label = f"{concept} ({token_label})" if concept else f"tokens {token_label}"
            by_probes = bool(probe_ids and c in probe_ids)
            if by_probes:
                label += ", found through the probes"
            top_share = float(top_mass[clustering.labels == c].sum() / top_mass.sum()) if top_mass.sum() > 0 else None
            modes.append(Mode(label=label, share=round(min(1.0, clustering.shares.get(c, 1.0)), 6),
                              top_share=None if top_share is None else round(min(1.0, top_share), 6),
                              found_by_probes=by_probes, n_examples=len(members), top_tokens=top_tokens,
                              probe_concept=concept, probe_similarity=sim,
                              examples=[ModeExample(text=m.marked(), token=m.token, value=m.value, doc_id=m.doc_id,
                                                    position=m.position) for m in members[:5]]))
        modes.sort(key=lambda m: -m.share)
        return modes

    @staticmethod
    def _summary(ref: str, modes: list[Mode], score: float, p_value: float, n_ctx: int) -> str:
        if len(modes) < 2:
            what = modes[0].label if modes else f"too few strong contexts ({n_ctx})"
            return f"{ref}: one mode ({what}); score {score:.2f}"
        parts = ", ".join(f"{m.probe_concept or m.label} ({m.share_text})" for m in modes)
        return f"{ref}: {len(modes)} modes: {parts}; score {score:.2f}, p={p_value:.3f}"

    def _is_detected(self, r: PolysemanticNeuron) -> bool:
        return r.n_modes >= 2 and r.p_value < self.config.alpha and r.score >= self.config.min_score

    # ------------------------------------------------------------------ causal check
    def _with_effects(self, r: PolysemanticNeuron, per_neuron: list[Any]) -> PolysemanticNeuron:
        entry = next(p for p in per_neuron if p[0] == r.site and p[1] == r.neuron)
        _, _, ctxs, _, clustering, _, _ = entry
        by_label = {}
        for c in clustering.modes:
            members = sorted([x for x, lab in zip(ctxs, clustering.labels) if lab == c], key=lambda x: -x.value)
            by_label[c] = [m for m in members if m.ids][: self.config.ablation_contexts]
        effects = self._ablation_effects(r.site, r.neuron, by_label)
        # modes were sorted by share; match them back through their example keys
        new_modes = []
        for mode in r.modes:
            key = {(e.doc_id, e.position) for e in mode.examples}
            c = next((c for c in clustering.modes
                      if key & {(x.doc_id, x.position) for x, lab in zip(ctxs, clustering.labels) if lab == c}), None)
            new_modes.append(mode.model_copy(update={"effect": effects.get(c)}) if c is not None else mode)
        return r.model_copy(update={"modes": new_modes})

    @torch.no_grad()
    def _ablation_effects(self, site: str, neuron: int, by_mode: dict[int, list[Context]]) -> dict[int, float | None]:
        """Per mode: mean next-token loss change (nats) at and after the activating token when the neuron is
        zero-ablated; every mode's contexts go through one clean and one ablated forward pass together."""
        from neuron_core.batching import Segment, make_batches, pad_token_id
        from neuron_core.capture import run_forward

        members = [(c, ctx) for c, ctxs in by_mode.items() for ctx in ctxs]
        out: dict[int, float | None] = {c: None for c in by_mode}
        if not members:
            return out
        interface = self.interface
        s = interface.resolver.resolve(site)
        module = interface.resolver.module(s)
        segs = [Segment(i, 0, tuple(ctx.ids)) for i, (_, ctx) in enumerate(members)]
        batch = next(make_batches(segs, batch_size=len(segs), pad_id=pad_token_id(interface.tokenizer)))
        batch = batch.to(interface.device)
        kwargs = batch.model_kwargs(interface.module)
        start = torch.tensor([ctx.index for _, ctx in members], device=batch.input_ids.device)[:, None]

        def per_row_loss() -> torch.Tensor:
            logits = run_forward(interface.module, kwargs).logits.float()  # [B, T, V]
            logp = torch.log_softmax(logits[:, :-1], -1)
            nll = -logp.gather(-1, batch.input_ids[:, 1:, None])[..., 0]  # [B, T-1]
            pos = torch.arange(nll.shape[1], device=nll.device)[None, :]
            valid = batch.attention_mask[:, 1:].bool() & (pos >= start)  # the neuron can only affect these
            return (nll * valid).sum(1) / valid.sum(1).clamp(min=1)  # [B]

        base = per_row_loss()

        def zero_pre(_m: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0].clone()
            x[..., neuron] = 0
            return (x, *args[1:])

        def zero_post(_m: torch.nn.Module, _a: Any, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            output[..., neuron] = 0
            return output

        handle = module.register_forward_pre_hook(zero_pre) if s.read == "input" else \
            module.register_forward_hook(zero_post)
        try:
            ablated = per_row_loss()
        finally:
            handle.remove()
        diff = (ablated - base).cpu().numpy()
        modes = np.array([c for c, _ in members])
        for c in by_mode:
            if (modes == c).any():
                out[c] = float(diff[modes == c].mean())
        return out

    # ------------------------------------------------------------------ readouts
    @property
    def results(self) -> list[PolysemanticNeuron]:
        return self.run()

    def detect(self, top_n: int | None = None) -> list[PolysemanticNeuron]:
        """The polysemantic neurons (>= 2 modes, p < alpha, score >= min_score), best first."""
        found = [r for r in self.run() if self._is_detected(r)]
        return found[:top_n] if top_n is not None else found

    def describe(self, site: str, neuron: int) -> PolysemanticNeuron:
        key = self._site_key(site)
        for r in self.run():
            if r.site == key and r.neuron == neuron:
                return r
        raise InputError(f"neuron {neuron} of {key} was not analysed")

    def scores(self) -> Any:
        import pandas as pd

        rows = [{"site": r.site, "neuron": r.neuron, "ref": r.ref, "score": r.score, "p_value": r.p_value,
                 "z_score": r.z_score, "n_modes": r.n_modes, "separation": r.separation,
                 "detected": self._is_detected(r), "summary": r.summary} for r in self.run()]
        columns = ["site", "neuron", "ref", "score", "p_value", "z_score", "n_modes", "separation", "detected",
                   "summary"]
        return pd.DataFrame(rows, columns=columns)


PolysematicDetector = PolysemanticDetector  # the seed's spelling
