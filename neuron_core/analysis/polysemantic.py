"""Polysemantic neuron detection: which neurons respond to several unrelated things, how sure we are, which modes.

Usage::

    det = PolysemanticDetector(profile_or_record, interface=interface)     # embedder: "subject" with an interface
    for n in det.detect():                     # the polysemantic neurons, best first
        print(n.summary)                       # 'L6/N1234: 2 modes: animals (55%), months (45%); score 0.81, p=0.010'
    det.scores()                               # DataFrame over every analysed neuron

Which neurons: every firing neuron of the sites, or with ``max_neurons`` the most promising of them by a screen
(``select="screen"``: steps 1-4 once for every neuron, without subsets or null) or the highest peaks
(``select="peak"``). Method, per neuron:

1. contexts: the top band (top examples with value >= ``band`` x max) plus a uniform sample of the neuron's other
   strong tokens (the sample gives unbiased shares of activation mass);
2. embed each token in its context: by default as the subject model reads it, before the neuron's layer, beside
   MiniLM's view of the window without the word (:class:`~neuron_core.analysis.embed.SubjectEmbedder`);
3. cluster (average linkage, k by the silhouette, k = 1 allowed), then merge the clusters that are one concept:
   same words, one token family, one probe concept, or close in either view (:mod:`neuron_core.analysis.modes`);
4. score in [0, 1] = balance**``balance_power`` x separation term x (1 + quality term) / 2 (see
   :func:`~neuron_core.analysis.modes.score_modes`), where a mode weighs by its coherence (a scatter of unrelated
   contexts is noise, not a concept); one mode scores 0. The score is the mean over ``n_bags`` random subsets of the
   contexts, each clustered, merged and scored on its own (:func:`~neuron_core.analysis.modes.bagged_score`), so
   that it does not hang on one context or on where a cluster's edge falls. It judges the corpus's contexts: modes
   found through the probes only (step 7) are reported, not scored;
5. null: the same procedure on ``n_null`` random sets of contexts from the analysed sites' tokens, *as many as the
   neuron has* (random sets of 12 contexts split into modes far more often than sets of 40: a p-value against a
   mix of sizes is too small for neurons with few contexts and too large for neurons with many), each set with the
   activation values of one of ``null_value_neurons`` neurons drawn at random from the sites' firing neurons (so a
   neuron's p-value does not depend on which other neurons are analysed); the p-value is the share of null scores
   at least as high (with the +1 correction), the z-score is against their mean and spread. Sizes are rounded down
   to a grid (every size up to 20, then steps of about a tenth), which errs towards larger p-values;
6. verdict (:func:`verdict_of`): detected, borderline (the p-value's exact interval holds ``alpha``: another seed
   could decide either way) or not detected. A size with a borderline neuron gets more random sets, doubling, up to
   ``n_null_max`` (sequential Monte Carlo): the verdicts near ``alpha`` are settled by more draws, not by the seed;
7. name each mode by the probe concept whose centroid is closest (cosine >= ``probe_min_similarity``) and its top
   tokens; add a mode for each probe concept the neuron answers strongly and selectively that no mode covers;
8. for the best detected neurons, zero-ablate the neuron and report the change of the model's next-token loss on
   each mode's contexts.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from neuron_core.analysis.contexts import Context, contexts_from_profile, contexts_from_record, random_contexts
from neuron_core.analysis.embed import Embedder, make_embedder
from neuron_core.analysis.modes import (
    Clustering,
    ModeEvidence,
    bagged_score,
    centroids,
    cluster,
    merge_and_score,
    merge_modes,
    view_scale,
)
from neuron_core.analysis.types import Mode, ModeExample, PolysemanticNeuron, Verdict
from neuron_core.capture import ActivationRecord
from neuron_core.corpus import ConceptProbes, load_probes
from neuron_core.distributed import Executor, check_executor, run_tasks
from neuron_core.errors import CorpusTooSmallError, InputError
from neuron_core.profile import NeuronProfile
from neuron_core.sites import neuron_ref

__all__ = ["DetectorConfig", "PolysemanticDetector", "PolysematicDetector", "neuron_ref", "verdict_of"]


@dataclass(frozen=True)
class DetectorConfig:
    """Settings of the detector (see the module docstring for how each one is used)."""

    max_neurons: int | None = None
    """Analyse at most this many neurons per site (chosen by ``select``); None: all."""
    select: Literal["screen", "peak"] = "screen"
    """Which ``max_neurons`` neurons get the full analysis. "screen": every firing neuron of the site is clustered,
    merged and scored once (no subsets, no null; embedding every neuron's contexts is most of its cost: 1-4 minutes
    for a SmolLM2 layer on 2 CPU cores) and the best go on. "peak": the highest maximum activations (only they are
    embedded). Those are mostly broad role and format neurons whose kinds split into modes ('-ly' adverbs | 'very';
    Unix paths | git commands): by blind labels, 10 of the 19 neurons a report of the 64 highest peaks led with on
    four SmolLM2 layers are one concept; with the screen none of 20 is, nor of 5 on a fifth layer
    (``benchmarks/NOTES.md``, thirteenth session)."""
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
    """Modes whose concept distance is below this are one mode (see :mod:`neuron_core.analysis.modes`: the smallest
    of the views' distances between the modes, 1.0 = as far apart as two random contexts)."""
    deep_view: float | None = None
    """With the subject embedder: a third view for the merge rules, the model's residual stream this far through
    its depth (0.6: SmolLM2-135M's block 18 of 30), read with the analysed sites' neurons held at their mean
    activations (:class:`~neuron_core.analysis.embed.SubjectEmbedder`). Off by default: on the blind-labelled
    neurons it cuts the MONO neurons among a report's top 5 from 10 of 19 to 6 of 17 at about the same AUC, but it
    merges one planted OR neuron's two concepts ('vehicles' + 'legal terms'), a goal the default keeps
    (``benchmarks/NOTES.md``, twelfth session)."""
    same_word_share: float = 0.5
    """Two modes are one concept when at least this share of each one's contexts are words the other has too."""
    family_share: float = 0.7
    """Two modes are one concept when at least this share of each are tokens of one family (punctuation,
    numbers, unit symbols after a number, white space)."""
    n_bags: int = 16
    """The score is the mean over this many random subsets of the contexts (each clustered, merged and scored on its
    own; the null's random sets too): one score of all the contexts hangs on where a cluster's edge falls and on each
    context in or out. 0 or 1: the score of all the contexts."""
    bag_fraction: float = 0.6
    """Each subset holds this share of the neuron's corpus contexts (at least ``min_contexts``)."""
    balance_power: float = 0.5
    """The score grows with the modes' balance to this power (0: a clear second mode counts whatever its size)."""
    strength_power: float = 4.0
    """Modes weigh share x strength**strength_power (strength: the mode's peak over the strongest mode's)."""
    coherence_hi: float = 0.2
    """A mode weighs its coherence (1 - the mean distance between two of its contexts over that of two random
    contexts) over this, at most 1: a scatter of unrelated contexts, as spread as random text, is noise, not a
    concept (0 turns it off)."""
    merge_same_concept: bool = True
    """Modes named after the same probe concept are one mode."""
    probe_modes: bool = True
    """With a model interface: also report modes the corpus barely shows, by the neuron's response to each probe
    concept's held-out spans (a concept counts when its median span activation reaches ``probe_mode_strength`` x
    the neuron's peak and its selectivity AUC reaches ``probe_mode_auc``). They are leads to check on more text:
    the score and the verdict judge the corpus's contexts only."""
    probe_mode_strength: float = 0.3
    probe_mode_auc: float = 0.85
    n_null: int = 400
    """Random context sets per set size (see :func:`null_size`) in the first round."""
    n_null_max: int = 6400
    """Sequential refinement: while a neuron's verdict is borderline (the p-value's interval holds ``alpha``), its
    set size gets more random sets, doubling the count each round, up to this many. Sets already drawn are kept, so
    the rounds only add evidence; a size whose neurons are all settled stops. ``n_null_max <= n_null`` turns it
    off."""
    alpha: float = 0.15
    """detect() keeps neurons with p-value below alpha ... The p-value says how often a random set of the layer's
    strong contexts scores as high; it is not a test over the whole layer (no multiple-testing correction). 0.15 is
    where the verdict meets the blind-labelled benchmark's goal, precision >= 0.85 at recall >= 0.75, on the dev
    layers and on layer 6 (0.05: the same precision at recall 0.49); see benchmarks/NOTES.md."""
    min_score: float = 0.25
    """... and score at least this."""
    probe_min_similarity: float = 0.40
    null_pool: int = 600
    """Random contexts per site the null sets are drawn from, uniform over the site's tokens: from a profile, its
    token reservoir (``StatsConfig.n_reservoir``, 512 by default: all of it when this asks for more); a profile saved
    before the reservoir existed falls back to the union of the neurons' samples (about 200 distinct contexts)."""
    null_value_neurons: int = 256
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


def verdict_of(score: float, n_modes: int, n_above: int, n_null: int, cfg: DetectorConfig) -> Verdict:
    """Detected when the null settles it: ``n_above`` of ``n_null`` random sets scored at least as high, and the
    p-value's exact 95 % interval (Clopper-Pearson, over the null's draws, the neuron counted as one draw) lies
    wholly below alpha; borderline when the interval holds alpha (another seed could decide either way); not
    detected when it lies above alpha, or with fewer than two modes or a score below ``min_score``."""
    if n_modes < 2 or score < cfg.min_score or n_null == 0:
        return "not detected"
    from scipy.stats import beta

    k, n = n_above + 1, n_null + 1  # the +1 correction of the p-value
    lower = float(beta.ppf(0.025, k, n - k + 1))
    upper = float(beta.ppf(0.975, k + 1, n - k)) if k < n else 1.0
    if upper < cfg.alpha:
        return "detected"
    return "borderline" if lower < cfg.alpha else "not detected"


_T = TypeVar("_T")
REFERENCE_SEED = 0  # the draw of random contexts the embedding is standardised against, whatever the seed


def _settled(null: np.ndarray, score: float, n_modes: int, cfg: DetectorConfig) -> tuple[int, bool]:
    """How many of a size's null draws a neuron's p-value uses, and whether its verdict is settled there: the first
    of ``n_null``, 2 ``n_null``, 4 ``n_null``, ... (up to ``n_null_max`` and the draws there are) at which the
    verdict is not borderline, else all of them. It depends only on the neuron's own score and its size's sequence of
    draws, never on which other neurons were analysed."""
    n = min(cfg.n_null, null.size)
    while True:
        if verdict_of(score, n_modes, int((null[:n] >= score - 1e-12).sum()), n, cfg) != "borderline":
            return n, True
        longer = min(2 * n, cfg.n_null_max, null.size)
        if longer <= n:
            return n, False
        n = longer


@dataclass
class _NullDraws:
    """Random context sets of the null, drawn on demand: each set takes ``size`` contexts of the pool and the
    activation values of one of ``value_sets`` (drawn at random, unrelated to the contexts), and is scored by the
    same clustering, merging and scoring as a neuron. Round ``r`` of a size has its own generator
    (seed, size, r): the draws of a size depend only on the seed, the size and the round, not on which other sizes
    are asked for or refined."""

    pool_x: np.ndarray
    pool_ev: ModeEvidence
    value_sets: list[np.ndarray]
    concept_cents: np.ndarray | None
    config: DetectorConfig
    seed: int

    def more(self, size: int, round_: int, n: int) -> np.ndarray:
        cfg, pool = self.config, len(self.pool_x)
        m = min(size, pool)
        rng = np.random.default_rng([self.seed, size] + ([round_] if round_ else []))
        scores = np.empty(n)
        for i in range(n):
            idx = rng.choice(pool, size=m, replace=False)
            own = self.value_sets[int(rng.integers(len(self.value_sets)))]
            vals = rng.choice(own, size=m, replace=own.size < m)
            X, ev = self.pool_x[idx], self.pool_ev.take(idx)
            ones = np.ones(m)
            scores[i] = bagged_score(X, cluster(X, vals, ones, cfg), vals, ones, ev, cfg, rng, self.concept_cents)[1]
        return scores


@dataclass
class _Gathered:
    """One chosen neuron and its corpus contexts (before any probe mode is added)."""

    site: str
    neuron: int
    contexts: list[Context]


@dataclass
class _WorkSummary:
    """What the null needs of an analysed neuron: its set size (-1: too few contexts for a null), score and modes."""

    size: int
    score: float
    n_modes: int

    @classmethod
    def of(cls, w: _Work, cfg: DetectorConfig) -> _WorkSummary:
        size = null_size(w.n_corpus, cfg.min_contexts) if w.n_corpus >= cfg.min_contexts else -1
        return cls(size, float(w.score), len(w.clustering.modes))


@dataclass
class _Prepared:
    """A run up to its null: the analysed neurons, what the null is drawn from, the probe concepts' centroids."""

    work: list[_Work]
    draws: _NullDraws | None
    names: list[str]
    cents: np.ndarray


class _Parts:
    """The parts of a neuron-split run: detectors in this process, or Ray actors holding one each."""

    def __init__(self, parts: list[Any], ray: Any = None) -> None:
        self.parts, self.ray = parts, ray

    def call(self, method: str, *args: Any) -> list[Any]:
        if self.ray is None:
            return [getattr(part, method)(*args) for part in self.parts]
        refs = [getattr(part, method).remote(*args) for part in self.parts]
        return list(self.ray.get(refs))


@contextlib.contextmanager
def _parts(source: Any, interface: Any, groups: list[dict[str, list[int]]], kwargs: dict[str, Any],
           executor: Executor, address: str | None) -> Iterator[_Parts]:
    """One detector per group of neurons: here, or each in a Ray actor (a model loaded by name is loaded by the
    actor; one built in memory is sent)."""
    if executor == "local":
        yield _Parts([PolysemanticDetector(source, interface=interface, neurons=g, **kwargs) for g in groups])
        return
    from neuron_core.distributed import portable_model, ray_session

    spec = portable_model(interface)
    with ray_session(address) as ray:
        actor = ray.remote(_DetectorPart)
        shared = ray.put(source)
        yield _Parts([actor.remote(shared, spec, g, kwargs) for g in groups], ray)


class _DetectorPart:
    """A Ray actor holding the detector of one group of neurons (module level, so Ray can import it)."""

    def __init__(self, source: Any, model: Any, neurons: dict[str, list[int]], kwargs: dict[str, Any]) -> None:
        interface = model
        if isinstance(model, str):
            from neuron_core.interface import ModelInterface

            interface = ModelInterface.from_pretrained(model)
        self.detector = PolysemanticDetector(source, interface=interface, neurons=neurons, **kwargs)

    def prepare_part(self) -> tuple[_NullDraws | None, list[_WorkSummary]]:
        return self.detector.prepare_part()

    def finish_part(self, nulls: dict[int, np.ndarray]) -> list[PolysemanticNeuron]:
        return self.detector.finish_part(nulls)


@dataclass
class _NullTask:
    """The null of one set size: its draws, and the (score, mode count) of the neurons compared with it."""

    draws: _NullDraws
    size: int
    neurons: list[tuple[float, int]]


def _null_of_size(task: _NullTask) -> np.ndarray:
    """``n_null`` random sets of the task's size, then more, doubling, while one of its neurons is not settled (up
    to ``n_null_max``). Module level: it runs as a Ray task too."""
    cfg, draws, size = task.draws.config, task.draws, task.size
    null = draws.more(size, 0, cfg.n_null)
    rounds = 0
    while null.size < cfg.n_null_max and any(not _settled(null, score, n_modes, cfg)[1]
                                              for score, n_modes in task.neurons):
        rounds += 1
        null = np.concatenate([null, draws.more(size, rounds, min(null.size, cfg.n_null_max - null.size))])
    return null


@dataclass
class _Work:
    """One analysed neuron between the stages of :meth:`PolysemanticDetector.run`."""

    site: str
    neuron: int
    contexts: list[Context]  # the corpus contexts, then any probe-mode contexts
    n_corpus: int  # how many of them came from the corpus (the size the null is matched to)
    X: np.ndarray  # [m, d] the contexts' embeddings
    evidence: ModeEvidence
    values: np.ndarray  # [m] activations
    clustering: Clustering
    score: float = 0.0
    separation: float = 0.0
    probe_modes: set[int] = field(default_factory=set)  # mode ids found through the probes only


class PolysemanticDetector:
    """Finds polysemantic neurons in an ActivationRecord or a NeuronProfile (see the module docstring)."""

    def __init__(self, source: ActivationRecord | NeuronProfile, *, interface: Any = None,
                 embedder: str | Embedder = "auto", probes: dict[str, ConceptProbes] | str | None = None,
                 config: DetectorConfig | None = None, sites: Sequence[str] | None = None,
                 neurons: Sequence[int] | Mapping[str, Sequence[int]] | None = None, seed: int = 0,
                 executor: Executor = "local", address: str | None = None, shards: int = 1) -> None:
        check_executor(executor, address)
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise InputError(f"shards must be a whole number >= 1, got {shards!r}")
        if not isinstance(source, (ActivationRecord, NeuronProfile)):
            raise InputError(f"PolysemanticDetector needs an ActivationRecord or a NeuronProfile, "
                             f"not {type(source).__name__}")
        self.source = source
        self.config = config or DetectorConfig()
        if self.config.select not in ("screen", "peak"):
            raise InputError(f"DetectorConfig.select must be 'screen' or 'peak', got {self.config.select!r}")
        self.seed = seed
        self.executor, self.address, self.shards = executor, address, shards
        self._prepared: _Prepared | None = None  # a part's run between its two halves
        if interface is not None:
            from neuron_core.interface import ModelInterface

            interface = interface if isinstance(interface, ModelInterface) else ModelInterface(interface)
        self.interface = interface
        self.site_names = [source.key(s) for s in sites] if sites is not None else list(source.site_names)
        self._neurons_arg = neurons
        self._embedder_spec = embedder
        self._embedder: Embedder | None = None
        self._probes_arg = probes
        self._probe_centroids: tuple[list[str], np.ndarray] | None = None
        self._results: list[PolysemanticNeuron] | None = None
        self.timings: dict[str, float] = {}
        self.null_draws: dict[int, int] = {}  # random sets drawn per null set size (after the refinement)
        self._scale: tuple[float, ...] = (1.0, 1.0, 1.0)  # random-pair distance per view (set from reference draws)
        self.n_excluded: dict[str, int] = {}
        self.n_screened: dict[str, int] = {}  # per site: neurons the screen scored (select="screen")
        self._chosen: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ inputs
    @property
    def sites(self) -> list[str]:
        """Deprecated alias of :attr:`site_names` (the analysed site names)."""
        return self.site_names

    def _acts_max(self, site: str) -> torch.Tensor:
        if isinstance(self.source, ActivationRecord):
            acts = self.source[site]
            return torch.where(torch.isfinite(acts), acts, -torch.inf).amax(0)
        return self.source[site].max.float()

    def _neurons_for(self, site: str) -> list[int]:
        if site not in self._chosen:
            self._chosen[site] = self._choose(site)
        return self._chosen[site]

    def _choose(self, site: str) -> list[int]:
        """The asked-for neurons, or the site's firing neurons (highest peak first), at most ``max_neurons`` of
        them by ``select``."""
        arg, cfg = self._neurons_arg, self.config
        peak = self._acts_max(site)
        n_total = peak.numel()
        if isinstance(arg, Mapping):
            chosen = [int(n) for n in arg.get(site, [])]
        elif arg is not None:
            chosen = [int(n) for n in arg]
        else:
            finite = torch.isfinite(peak) & (peak > 0)
            order = torch.argsort(torch.where(finite, peak, -torch.inf), descending=True)
            chosen = [int(n) for n in order[: int(finite.sum())]]
            if cfg.max_neurons is not None and len(chosen) > cfg.max_neurons:
                chosen = self._screen(site, chosen) if cfg.select == "screen" else chosen[: cfg.max_neurons]
        bad = [n for n in chosen if not 0 <= n < n_total]
        if bad:
            raise InputError(f"neurons {bad[:5]} out of range for {site} (0-{n_total - 1})")
        excluded = int((~torch.isfinite(peak)).sum())
        if isinstance(self.source, NeuronProfile):
            excluded = int((self.source[site].n_nonfinite > 0).sum())
        self.n_excluded[site] = excluded
        return chosen

    def _screen(self, site: str, neurons: list[int]) -> list[int]:
        """The ``max_neurons`` of ``neurons`` whose contexts, clustered, merged and scored once (no subsets, no
        null), score highest; ties keep the given order. The embeddings stay cached for the full analysis."""
        cfg = self.config
        gathered = [_Gathered(site, n, self._contexts(site, n)) for n in neurons]
        self._embed_all(gathered)
        names, cents = self._probes()
        concept_cents = cents if cfg.merge_same_concept and len(names) else None
        quick = {}
        for g in gathered:
            if len(g.contexts) < cfg.min_contexts:
                quick[g.neuron] = -1.0
                continue
            X, ev = self._evidence(g.contexts)
            values = np.array([c.value for c in g.contexts])
            sampled = np.array([c.sampled for c in g.contexts], dtype=float)
            quick[g.neuron] = merge_and_score(X, cluster(X, values, sampled, cfg), ev, cfg, values, concept_cents)[1]
        self.n_screened[site] = len(neurons)
        return sorted(neurons, key=lambda n: -quick[n])[: cfg.max_neurons]

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
            layers = [int(s.split(".")[1]) for s in self.site_names if s.startswith("blocks.")]
            layer = min(layers) if layers else None
            spec = self._embedder_spec
            if spec == "auto":
                spec = "subject" if self.interface is not None else "minilm"
            deep = self.config.deep_view if spec == "subject" else None
            held = self._mean_activations() if deep is not None else None
            self._embedder = make_embedder(spec, self.interface, layer, deep=deep, held=held)
        return self._embedder

    def _mean_activations(self) -> dict[str, torch.Tensor]:
        """Each analysed site's mean activation per neuron over the source's tokens: what the subject embedder's
        deep view holds the analysed neurons at (non-finite values count as 0)."""
        out = {}
        for site in self.site_names:
            if isinstance(self.source, ActivationRecord):
                acts = self.source[site].float()
                mean = torch.where(torch.isfinite(acts), acts, 0.0).mean(0)
            else:
                mean = self.source[site].mean.float()
            out[site] = torch.nan_to_num(mean, nan=0.0, posinf=0.0, neginf=0.0)
        return out

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
        """Analyse every chosen neuron (once; later calls return the same results): gather its contexts, embed
        them, cluster and merge them into modes, score, test against the size-matched null, give the verdict,
        and measure the top detections' ablation effects. ``timings`` holds each stage's seconds. With
        ``shards`` > 1 the neurons are split into that many parts, each prepared and finished by its own worker
        (a Ray actor with ``executor="ray"``), the null computed once for all of them."""
        if self._results is not None:
            return self._results
        if self.shards > 1:
            self._results = self._run_in_parts()
            return self._results
        prepared = self._prepare()
        nulls = self._stage("null", lambda: self._nulls(prepared.draws, prepared.work))
        self._results = self._finish(prepared, nulls)
        return self._results

    def _prepare(self) -> _Prepared:
        """Everything before the null: contexts, embeddings, probes, clusters merged into modes, scores; and what
        the null is drawn from."""
        self._stage("screen", lambda: [self._neurons_for(site) for site in self.site_names])
        gathered = self._stage("contexts", self._gather)
        null_pool = self._stage("embed", lambda: self._embed_all(gathered))
        names, cents = self._stage("probes", self._probes)
        concept_cents = cents if self.config.merge_same_concept and len(names) else None
        probe_acts = self._stage("probe_selectivity", lambda: self._probe_selectivity(gathered))
        work = self._stage("cluster", lambda: [self._analyse(g, probe_acts, concept_cents) for g in gathered])
        draws = self._stage("null_inputs", lambda: self._draws(gathered, null_pool, concept_cents))
        return _Prepared(work, draws, names, cents)

    def _finish(self, prepared: _Prepared, nulls: dict[int, np.ndarray]) -> list[PolysemanticNeuron]:
        """p-values, verdicts, named modes and the ablation effects, best first."""
        results = [self._result(w, nulls, prepared.names, prepared.cents) for w in prepared.work]
        results = self._stage("ablation", lambda: self._ablate(results, prepared.work))
        results.sort(key=lambda r: (-r.score, r.p_value, r.site, r.neuron))
        return results

    def _run_in_parts(self) -> list[PolysemanticNeuron]:
        """The neurons in ``shards`` parts (round robin, so each part gets strong and weak ones); each part is
        prepared by its own worker, the null is computed once over every part's neurons, then each part finishes.
        A neuron's result does not depend on its company, so this equals one run."""
        chosen = self._stage("screen", lambda: {site: self._neurons_for(site) for site in self.site_names})
        groups = [{site: ns[k::self.shards] for site, ns in chosen.items()} for k in range(self.shards)]
        groups = [g for g in groups if any(g.values())]
        kwargs = {"embedder": self._embedder_spec, "probes": self._probes_arg, "config": self.config,
                  "sites": self.site_names, "seed": self.seed}
        with _parts(self.source, self.interface, groups, kwargs, self.executor, self.address) as parts:
            t0 = time.perf_counter()
            summaries = parts.call("prepare_part")
            self.timings["parts_prepare"] = time.perf_counter() - t0
            draws = next((d for d, _ in summaries if d is not None), None)
            work = [summary for _, part in summaries for summary in part]
            nulls = self._stage("null", lambda: self._nulls(draws, work))
            t0 = time.perf_counter()
            finished = parts.call("finish_part", nulls)
            self.timings["parts_finish"] = time.perf_counter() - t0
        results = [r for part in finished for r in part]
        results.sort(key=lambda r: (-r.score, r.p_value, r.site, r.neuron))
        return results

    # the two halves of a part's run (a Ray actor calls them; see :meth:`_run_in_parts`)
    def prepare_part(self) -> tuple[_NullDraws | None, list[_WorkSummary]]:
        """The first half of a part's run: everything before the null; what the null needs of its neurons."""
        self._prepared = self._prepare()
        return self._prepared.draws, [_WorkSummary.of(w, self.config) for w in self._prepared.work]

    def finish_part(self, nulls: dict[int, np.ndarray]) -> list[PolysemanticNeuron]:
        """The second half of a part's run, given the nulls computed over every part."""
        if self._prepared is None:
            raise RuntimeError("finish_part() before prepare_part()")
        return self._finish(self._prepared, nulls)

    def _stage(self, name: str, fn: Callable[[], _T]) -> _T:
        t0 = time.perf_counter()
        out = fn()
        self.timings[name] = time.perf_counter() - t0
        return out

    def _gather(self) -> list[_Gathered]:
        cfg = self.config
        gathered = [_Gathered(site, neuron, self._contexts(site, neuron)) for site in self.site_names
                    for neuron in self._neurons_for(site)]
        too_small = gathered and not any(len(g.contexts) >= cfg.min_contexts for g in gathered)
        if too_small and self._neurons_arg is None:  # asked-for neurons with few contexts get one mode, no score
            most = max(len(g.contexts) for g in gathered)
            raise CorpusTooSmallError(
                f"no neuron has {cfg.min_contexts} strong contexts (the most is {most}); capture more text "
                f"(a few hundred tokens at least) or lower DetectorConfig.min_contexts")
        return gathered

    def _embed_all(self, gathered: list[_Gathered]) -> list[Context]:
        """Embed every context once (the embedder caches), the null's random pool too. The embedding's reference
        (the subject embedder's standardisation, the views' random-pair scale) comes from a fixed draw of random
        contexts, the same whatever the seed: it is a property of the site, and a seed that moved it would move
        every neuron's score at once. Returns the null pool (drawn with the seed)."""
        cfg = self.config

        def draw(seed: int) -> list[Context]:
            return [c for site in self.site_names for c in random_contexts(
                self.source, site, cfg.null_pool // max(1, len(self.site_names)), seed=seed,
                before=cfg.window_before, after=cfg.window_after)]

        reference, null_pool = draw(REFERENCE_SEED), draw(self.seed)
        fit = getattr(self.embedder, "fit", None)
        if fit is not None and reference:
            fit(reference)  # the subject embedder standardises against random contexts
        # every view, in large batches; the random contexts first and on their own, so that their embeddings (the
        # null's material) come from the same batches whichever neurons are analysed: a batch's shape can move the
        # last bits of a forward
        randoms = {(c.text, c.start, c.end): c for c in reference + null_pool}
        if randoms:
            self._views(list(randoms.values()))
        unique = {(c.text, c.start, c.end): c for g in gathered for c in g.contexts}
        if unique:
            self._views([c for key, c in unique.items() if key not in randoms])
        if len(reference) >= 2:
            _, W, C, deep = self._views(reference)
            self._scale = view_scale(W, C, *([] if deep is None else [deep]), seed=REFERENCE_SEED)
        return null_pool

    def _views(self, ctxs: Sequence[Context]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(X, word view, window view, deep view or None) of contexts; an embedder without views gives X for the
        word and the window view."""
        if not ctxs:
            empty = np.zeros((0, 1), np.float32)
            return empty, empty, empty, None
        X = self.embedder.embed(ctxs)
        deep_of = getattr(self.embedder, "embed_deep", None)
        deep = None if deep_of is None else deep_of(ctxs)
        views = getattr(self.embedder, "embed_views", None)
        if views is None:
            return X, X, X, deep
        W, C = views(ctxs)
        return X, W, C, deep

    def _evidence(self, ctxs: Sequence[Context]) -> tuple[np.ndarray, ModeEvidence]:
        X, W, C, deep = self._views(ctxs)
        return X, ModeEvidence.of(ctxs, W, C, self._scale, deep)

    def _probe_selectivity(self, gathered: list[_Gathered]) -> dict[str, Any]:
        """Per site, each analysed neuron's response to the probes' held-out spans (with a model interface)."""
        cfg = self.config
        if not cfg.probe_modes or self.interface is None:
            return {}
        from neuron_core.analysis.probes import ProbeActivations

        wanted: dict[str, list[int]] = {}
        for g in gathered:
            if len(g.contexts) >= cfg.min_contexts:
                wanted.setdefault(g.site, []).append(g.neuron)
        return ProbeActivations.compute(self.interface, wanted, self._probe_sets()) if wanted else {}

    def _analyse(self, g: _Gathered, probe_acts: dict[str, Any], concept_cents: np.ndarray | None) -> _Work:
        """Cluster one neuron's corpus contexts, merge them into concepts and score them (bagged); then add the
        modes only the probes show, for the report: the score and the verdict judge the corpus's contexts, the
        ones a reader of the neuron's examples sees."""
        cfg, site, neuron, ctxs = self.config, g.site, g.neuron, g.contexts
        X, ev = self._evidence(ctxs)
        values = np.array([c.value for c in ctxs])
        sampled = np.array([c.sampled for c in ctxs], dtype=float)
        w = _Work(site, neuron, ctxs, len(ctxs), X, ev, values, cluster(X, values, sampled, cfg))
        # the subsets depend on the neuron only, not on the seed: a neuron's score is a property of its contexts
        rng = np.random.default_rng([zlib.crc32(site.encode()), neuron])
        w.clustering, w.score, w.separation = bagged_score(X, w.clustering, values, sampled, ev, cfg, rng,
                                                           concept_cents)
        if site in probe_acts and len(ctxs) >= cfg.min_contexts:
            self._add_probe_modes(w, probe_acts[site])
            if w.probe_modes:  # a probe mode close to a corpus mode (or another probe mode) is that concept
                w.clustering = merge_modes(w.X, w.clustering, w.evidence, cfg, concept_cents)
                w.probe_modes &= set(w.clustering.modes)
        return w

    def _draws(self, gathered: list[_Gathered], null_pool: list[Context],
               concept_cents: np.ndarray | None) -> _NullDraws | None:
        """What the null sets are drawn from: the pool's embeddings and the value sets (None: no null possible)."""
        cfg = self.config
        known = {(g.site, g.neuron): g.contexts for g in gathered}  # corpus contexts, before probe modes
        usable = [ctxs for ctxs in known.values() if len(ctxs) >= cfg.min_contexts]
        value_sets = [v for v in self._null_values(known) or [np.array([c.value for c in ctxs]) for ctxs in usable]
                      if v.size]
        if len(null_pool) < cfg.min_contexts or cfg.n_null <= 0 or not value_sets:
            return None
        pool_x, pool_ev = self._evidence(null_pool)
        return _NullDraws(pool_x, pool_ev, value_sets, concept_cents, cfg, self.seed)

    def _nulls(self, draws: _NullDraws | None, work: Sequence[_Work | _WorkSummary]) -> dict[int, np.ndarray]:
        """The null scores per set size: ``n_null`` random sets for every size a neuron needs, then more (doubling,
        up to ``n_null_max``) while one of its neurons is not settled. Sizes are independent: with executor "ray"
        each is a task (the same draws, so the same nulls)."""
        if draws is None:
            return {}
        cfg = self.config
        by_size: dict[int, list[tuple[float, int]]] = {}
        for w in work:
            summary = w if isinstance(w, _WorkSummary) else _WorkSummary.of(w, cfg)
            if summary.size >= 0:
                by_size.setdefault(summary.size, []).append((summary.score, summary.n_modes))
        sizes = sorted(by_size)
        tasks = [_NullTask(draws, size, by_size[size]) for size in sizes]
        nulls = dict(zip(sizes, run_tasks(_null_of_size, tasks, executor=self.executor, address=self.address),
                         strict=True))
        self.null_draws = {size: int(v.size) for size, v in nulls.items()}
        return nulls

    def _result(self, w: _Work, nulls: dict[int, np.ndarray], names: list[str], cents: np.ndarray
                ) -> PolysemanticNeuron:
        cfg = self.config
        null = nulls.get(null_size(w.n_corpus, cfg.min_contexts), np.zeros(0))
        null = null[: _settled(null, w.score, len(w.clustering.modes), cfg)[0]]
        n_above = int((null >= w.score - 1e-12).sum())
        p_value = float((1 + n_above) / (1 + null.size)) if null.size and len(w.clustering.modes) >= 2 else 1.0
        mu, sd = (float(null.mean()), float(null.std())) if null.size else (0.0, 0.0)
        modes = self._modes(w.contexts, w.X, w.clustering, names, cents, w.probe_modes)
        return PolysemanticNeuron(
            site=w.site, neuron=w.neuron, score=round(float(w.score), 6), p_value=p_value,
            z_score=float((w.score - mu) / max(sd, 1e-6)), n_modes=len(modes), separation=w.separation,
            modes=modes, summary=self._summary(neuron_ref(w.site, w.neuron), modes, w.score, p_value, w.n_corpus),
            verdict=verdict_of(w.score, len(modes), n_above, null.size, cfg))

    def _ablate(self, results: list[PolysemanticNeuron], work: list[_Work]) -> list[PolysemanticNeuron]:
        """Each mode's loss change under zero-ablation, for the ``ablation_max_neurons`` best detections."""
        cfg = self.config
        if not (cfg.ablation and self.interface is not None and self.interface.loaded.is_causal_lm):
            return results
        chosen = sorted((r for r in results if self._is_detected(r)), key=lambda r: -r.score)
        by_key = {(w.site, w.neuron): w for w in work}
        keys = {(r.site, r.neuron) for r in chosen[: cfg.ablation_max_neurons]}
        return [self._with_effects(r, by_key[(r.site, r.neuron)]) if (r.site, r.neuron) in keys else r
                for r in results]

    def _add_probe_modes(self, w: _Work, pa: Any) -> None:
        """Add a mode for each probe concept the neuron responds to strongly and selectively that no mode covers."""
        from neuron_core.analysis.probes import selectivity_auc

        cfg = self.config
        names, cents = self._probes()
        peak = float(w.values.max()) if w.values.size else 0.0
        if peak <= 0:
            return
        covered: set[str] = set()
        if len(names):
            sims = centroids(w.X, w.clustering) @ cents.T
            covered = {names[int(i)] for i, row in zip(sims.argmax(1), sims) if row.max() >= cfg.probe_min_similarity}
        concept_acts, background = pa.neuron(w.neuron)
        bg = np.sort(background)
        new_ctx: list[Context] = []
        new_labels: list[int] = []
        c = w.clustering
        modes, shares, weights = list(c.modes), dict(c.shares), dict(c.weights)
        next_id = int(max(c.labels.max(initial=0), max(modes, default=0))) + 1
        for concept, v in concept_acts.items():
            if concept in covered or float(np.median(v)) < cfg.probe_mode_strength * peak \
                    or selectivity_auc(v, bg) < cfg.probe_mode_auc:
                continue
            for i in np.argsort(-v)[: cfg.min_mode_size * 2]:
                ex = pa.examples[concept][int(i)]
                new_ctx.append(Context(ex.text, ex.start, ex.end, float(v[i]), -1, -1, ex.span_text))
                new_labels.append(next_id)
            modes.append(next_id)
            shares[next_id] = 0.0  # not observed in the corpus's activation mass
            weights[next_id] = 0.0  # not in the score: the score judges the corpus's contexts
            w.probe_modes.add(next_id)
            next_id += 1
        if not new_ctx:
            return
        X2, ev2 = self._evidence(new_ctx)
        w.contexts = w.contexts + new_ctx
        w.X = np.concatenate([w.X, X2])
        w.evidence = w.evidence.extend(ev2)
        w.values = np.concatenate([w.values, [x.value for x in new_ctx]])
        w.clustering = Clustering.of(w.X, np.concatenate([c.labels, new_labels]), modes, shares, weights)

    def _null_values(self, known: dict[tuple[str, int], list[Context]]) -> list[np.ndarray]:
        """The activation values of the strong contexts of ``null_value_neurons`` neurons drawn at random (seeded)
        from every firing neuron of the analysed sites: the same whichever neurons are analysed. ``known``: contexts
        already gathered (the analysed neurons'), reused."""
        cfg = self.config
        rng = np.random.default_rng([self.seed, 1])
        per_site = max(1, cfg.null_value_neurons // max(1, len(self.site_names)))
        out = []
        for site in self.site_names:
            peak = self._acts_max(site)
            live = torch.nonzero(torch.isfinite(peak) & (peak > 0)).flatten().cpu().numpy()
            for neuron in np.sort(rng.choice(live, size=min(per_site, live.size), replace=False)):
                ctxs = known.get((site, int(neuron)))
                values = np.array([c.value for c in (ctxs if ctxs is not None else self._contexts(site, int(neuron)))])
                if values.size >= cfg.min_contexts:
                    out.append(values)
        return out

    def _modes(self, ctxs: list[Context], X: np.ndarray, clustering: Clustering, names: list[str],
               cents: np.ndarray, probe_ids: set[int] | None = None) -> list[Mode]:
        if not ctxs:
            return []
        mode_ids = clustering.modes
        mode_cents = centroids(X, clustering) if X.shape[0] else np.zeros((1, 1))
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
            by_probes = bool(probe_ids and c in probe_ids)  # said by Mode.share_text, not in the label
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
        return r.verdict == "detected"

    # ------------------------------------------------------------------ causal check
    def _with_effects(self, r: PolysemanticNeuron, w: _Work) -> PolysemanticNeuron:
        ctxs, clustering = w.contexts, w.clustering
        by_label = {}
        for c in clustering.modes:
            members = sorted([x for x, lab in zip(ctxs, clustering.labels) if lab == c], key=lambda x: -x.value)
            by_label[c] = [m for m in members if m.ids][: self.config.ablation_contexts]
        effects = self._ablation_effects(r.site, r.neuron, by_label)
        # modes were sorted by share; match them back through their example keys
        new_modes = []
        for mode in r.modes:
            key = {(e.doc_id, e.position) for e in mode.examples}
            match = next((c for c in clustering.modes
                          if key & {(x.doc_id, x.position) for x, lab in zip(ctxs, clustering.labels) if lab == c}),
                         None)
            new_modes.append(mode.model_copy(update={"effect": effects.get(match)}) if match is not None else mode)
        return r.model_copy(update={"modes": new_modes})

    def _ablation_effects(self, site: str, neuron: int, by_mode: dict[int, list[Context]]) -> dict[int, float | None]:
        """Per mode: mean next-token loss change (nats) at and after the activating token when the neuron is
        zero-ablated (``neuron_core.analysis.ablation``: every mode's contexts in one clean and one ablated pass)."""
        from neuron_core.analysis.ablation import ablation_effects

        return ablation_effects(self.interface, site, neuron, by_mode)

    # ------------------------------------------------------------------ readouts
    @property
    def results(self) -> list[PolysemanticNeuron]:
        return self.run()

    def detect(self, top_n: int | None = None) -> list[PolysemanticNeuron]:
        """The polysemantic neurons (>= 2 modes, p < alpha, score >= min_score), best first."""
        found = [r for r in self.run() if self._is_detected(r)]
        return found[:top_n] if top_n is not None else found

    def describe(self, site: str, neuron: int) -> PolysemanticNeuron:
        key = self.source.key(site)
        for r in self.run():
            if r.site == key and r.neuron == neuron:
                return r
        raise InputError(f"neuron {neuron} of {key} was not analysed")

    def scores(self) -> Any:
        import pandas as pd

        rows = [{"site": r.site, "neuron": r.neuron, "ref": r.ref, "score": r.score, "p_value": r.p_value,
                 "z_score": r.z_score, "n_modes": r.n_modes, "separation": r.separation,
                 "detected": self._is_detected(r), "verdict": r.verdict, "summary": r.summary} for r in self.run()]
        columns = ["site", "neuron", "ref", "score", "p_value", "z_score", "n_modes", "separation", "detected",
                   "verdict", "summary"]
        return pd.DataFrame(rows, columns=columns)


PolysematicDetector = PolysemanticDetector  # the seed's spelling
