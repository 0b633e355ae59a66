"""The rules that make a mode a concept, not a token (neuron_core/analysis/modes.py), on the failing cases of the
issue that introduced them: unit symbols split by symbol, a period split by language, a word split into pieces.

Every case clusters two groups whose embeddings are made far apart on purpose, so that only the rule under test
can merge them; a control with the same far-apart embeddings and unrelated words must stay two modes."""

from __future__ import annotations

import numpy as np
import pytest

from neuron_core.analysis import DetectorConfig
from neuron_core.analysis.contexts import Context
from neuron_core.analysis.modes import (
    Clustering,
    ModeEvidence,
    cluster,
    concept_distances,
    merge_modes,
    score_modes,
    token_family,
)

CFG = DetectorConfig()


def ctx(marked: str, value: float = 1.0) -> Context:
    """A context from 'text with [[token]] marked'."""
    start = marked.index("[[")
    end = marked.index("]]") - 2
    text = marked.replace("[[", "").replace("]]", "")
    return Context(text, start, end, value, 0, 1, text[start:end])


def two_groups(first: list[str], second: list[str], seed: int = 0) -> tuple[list[Context], np.ndarray]:
    """Contexts of two groups and embeddings that put each group in its own tight, far-apart blob."""
    rng = np.random.default_rng(seed)
    ctxs = [ctx(m) for m in first + second]
    centres = rng.normal(size=(2, 32))
    X = np.concatenate([centres[0] + 0.05 * rng.normal(size=(len(first), 32)),
                        centres[1] + 0.05 * rng.normal(size=(len(second), 32))])
    return ctxs, (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def modes_of(ctxs: list[Context], X: np.ndarray) -> Clustering:
    values = np.linspace(2.0, 1.0, len(ctxs))
    ev = ModeEvidence.of(ctxs, X, X, scale=(1.0, 1.0))
    clustered = cluster(X, values, np.ones(len(ctxs)), CFG)
    assert len(clustered.modes) == 2  # the embeddings alone split them
    return merge_modes(X, clustered, ev, CFG)


UNITS_SPEED = ["The train reached 280 [[km/h]] on the coast.", "Wind gusts of 90 [[km/h]] were recorded.",
               "It sprints at 12 m/[[s]] at most.", "The ball left the bat at 40 m/[[s]] today.",
               "She drove at 50 [[mph]] through town.", "Sound travels at 343 m/[[s]] in air."]
UNITS_PRESSURE = ["Inflate the tyre to 220 [[kPa]] before driving.", "The gauge read 101 [[kPa]] at sea level.",
                  "The storm's centre fell to 950 [[hPa]] overnight.", "Set the boiler to 150 [[kPa]] again.",
                  "Cook the rice at 80 [[kPa]] for eight minutes.", "Air pressure was 1013 [[hPa]] at noon."]
PERIOD_EN = ["We finished the project last night[[.]]", "The cat slept on the warm mat[[.]]",
             "It rained all afternoon in the valley[[.]]", "They walked home after the concert[[.]]"]
PERIOD_FR = ["Nous avons fini le projet hier soir[[.]]", "Le chat dort sur le canapé[[.]]",
             "Il a plu tout l'après-midi[[.]]", "Ils sont rentrés après le concert[[.]]"]
KNIT_START = ["She took up [[knit]]ting last winter.", "Her [[knit]]ting circle meets on Fridays.",
              "A [[knit]]ting pattern lay on the table.", "He bought [[knit]]ting needles in town."]
KNIT_END = ["She took up knit[[ting]] last winter.", "Her knit[[ting]] circle meets on Fridays.",
            "A knit[[ting]] pattern lay on the table.", "He bought knit[[ting]] needles in town."]
ANIMALS = ["The [[dog]] barked at the mail carrier.", "A [[cat]] slept in the sun.",
           "The [[horse]] galloped across the field.", "A [[fox]] crept past the henhouse."]
PREPOSITIONS = ["Take two tablets [[of]] aspirin daily.", "Bake the bread [[for]] forty minutes.",
                "Stir the sauce [[in]] a small pan.", "Apply the cream [[to]] the affected skin."]
ARTICLES = ["Preheat [[the]] oven to 200 degrees.", "Add [[a]] pinch of salt to taste.",
            "Shake [[the]] bottle well before use.", "Store [[the]] tablets in a dry place."]
MONTHS = ["The festival is held every [[October]] in the square.", "Her birthday falls in late [[March]] each year.",
          "The lake freezes by the middle of [[January]] here.", "They moved in at the start of [[June]] last year."]


def test_token_families():
    assert token_family(ctx("reached 280 [[km/h]] on")) == "unit"
    assert token_family(ctx("read 101 [[kPa]] at")) == "unit"
    assert token_family(ctx("a dose of 5[[mg]] daily")) == "unit"
    assert token_family(ctx("up 3.4[[%]] this year")) == "unit"
    assert token_family(ctx("last night[[.]]")) == "punctuation"
    assert token_family(ctx("¿Dónde está[[?]]")) == "punctuation"
    assert token_family(ctx("in [[2024]] they")) == "number"
    assert token_family(ctx("the[[ ]]end")) == "space"
    assert token_family(ctx("the [[dog]] barked")) is None
    assert token_family(ctx("two [[dogs]] barked")) is None  # a word after a number word is not a unit
    assert token_family(ctx("a dose [[of]] aspirin")) == "function"
    assert token_family(ctx("The [[shall]] clause")) == "function"
    assert token_family(ctx("a [[the]]ory of mind")) is None  # a piece of a longer word is not the word 'the'


def test_whole_word_of_a_piece():
    assert ctx("She took up knit[[ting]] last winter.").word == "knitting"
    assert ctx("Der[[ Met]]zger hat").word == "Metzger"
    assert ctx("last night[[.]]").word == "."
    assert ctx("items.[[reduce]]((sum").word == "reduce"


def test_unit_symbols_are_one_mode():
    """Speed units and pressure units: one token family (a symbol after a number), however far apart."""
    assert len(modes_of(*two_groups(UNITS_SPEED, UNITS_PRESSURE)).modes) == 1


def test_a_period_in_english_and_in_french_is_one_mode():
    assert len(modes_of(*two_groups(PERIOD_EN, PERIOD_FR)).modes) == 1


def test_pieces_of_one_word_are_one_mode():
    assert len(modes_of(*two_groups(KNIT_START, KNIT_END)).modes) == 1


def test_prepositions_and_articles_are_one_mode():
    """Function words are one syntactic-role family, however far apart their embeddings put 'of' and 'the'."""
    assert len(modes_of(*two_groups(PREPOSITIONS, ARTICLES)).modes) == 1


def test_function_words_and_content_words_stay_apart():
    assert len(modes_of(*two_groups(PREPOSITIONS, ANIMALS)).modes) == 2


def test_unrelated_concepts_stay_apart():
    """The control: the same far-apart embeddings with unrelated words and no shared family stay two modes."""
    ctxs, X = two_groups(ANIMALS, MONTHS)
    merged = modes_of(ctxs, X)
    assert len(merged.modes) == 2
    ev = ModeEvidence.of(ctxs, X, X, scale=(1.0, 1.0))
    score, separation = score_modes(X, merged, ev, CFG, np.linspace(2.0, 1.0, len(ctxs)))
    assert score > 0.5 and separation > 0.9


@pytest.mark.parametrize("view", ["word", "window", "deep"])
def test_close_in_any_view_is_one_concept(view):
    """Two modes whose words differ but sit in one setting (or share meaning in different settings, or that a
    later layer reads as one kind of thing) are one concept: the concept distance is the smallest of the views'
    distances, each over its random scale."""
    ctxs, far = two_groups(ANIMALS, MONTHS)
    rng = np.random.default_rng(1)
    near = np.repeat(rng.normal(size=(1, 32)), len(ctxs), axis=0) + 0.05 * rng.normal(size=(len(ctxs), 32))
    near = (near / np.linalg.norm(near, axis=1, keepdims=True)).astype(np.float32)
    words, windows, deep = (near if view == v else far for v in ("word", "window", "deep"))
    ev = ModeEvidence.of(ctxs, words, windows, scale=(1.0, 1.0, 1.0), deep_vecs=deep)
    split = Clustering(np.array([0] * 4 + [1] * 4), [0, 1], 0.5, {0: 0.5, 1: 0.5}, {0: 0.5, 1: 0.5})
    assert concept_distances(split, ev, CFG)[0, 1] < CFG.merge_distance
    assert len(merge_modes(far, split, ev, CFG).modes) == 1
    apart = ModeEvidence.of(ctxs, far, far, scale=(1.0, 1.0, 1.0), deep_vecs=far)
    assert concept_distances(split, apart, CFG)[0, 1] > 1.0
    assert len(merge_modes(far, split, apart, CFG).modes) == 2


def test_concept_distance_is_the_smallest_scaled_view_distance():
    """Against a direct computation: per view, 1 - cosine of the two modes' mean vectors over that view's scale;
    the concept distance is the smallest (the deep view counts only when the evidence has it)."""
    ctxs, _ = two_groups(ANIMALS, MONTHS)
    rng = np.random.default_rng(5)
    views = [rng.normal(size=(len(ctxs), 16)).astype(np.float32) for _ in range(3)]
    scale = (0.9, 1.1, 0.7)
    split = Clustering(np.array([0] * 4 + [1] * 4), [0, 1], 0.5, {0: 0.5, 1: 0.5}, {0: 0.5, 1: 0.5})

    def direct(X: np.ndarray, s: float) -> float:
        a, b = X[:4].mean(0), X[4:].mean(0)
        return float(1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b)) / s

    want = [direct(X, s) for X, s in zip(views, scale)]
    three = ModeEvidence.of(ctxs, *views[:2], scale=scale, deep_vecs=views[2])
    two = ModeEvidence.of(ctxs, *views[:2], scale=scale[:2])
    assert concept_distances(split, three, CFG)[0, 1] == pytest.approx(max(0.0, min(want)), abs=1e-5)
    assert concept_distances(split, two, CFG)[0, 1] == pytest.approx(max(0.0, min(want[:2])), abs=1e-5)
    assert three.take(np.array([0, 5])).deep_vecs.shape == (2, 16)
    assert three.extend(three).deep_vecs.shape == (16, 16)


def test_verdict_against_scipy_exact_interval():
    """detected / borderline / not detected from the null count, checked against scipy's Clopper-Pearson interval
    of the same proportion (the p-value with its +1 correction)."""
    from scipy.stats import binomtest

    from neuron_core.analysis.polysemantic import verdict_of

    seen = set()
    for n_null in (50, 200, 400):
        for n_above in range(0, 40):
            k, n = n_above + 1, n_null + 1
            ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
            want = "detected" if ci.high < CFG.alpha else "borderline" if ci.low < CFG.alpha else "not detected"
            got = verdict_of(0.5, 2, n_above, n_null, CFG)
            assert got == want, (n_above, n_null, ci)
            seen.add(got)
    assert seen == {"detected", "borderline", "not detected"}
    assert verdict_of(0.5, 1, 0, 200, CFG) == "not detected"  # one mode
    assert verdict_of(CFG.min_score - 0.01, 2, 0, 200, CFG) == "not detected"  # below the score threshold
    assert verdict_of(0.5, 2, 0, 0, CFG) == "not detected"  # no null


def test_silhouette_equals_sklearn():
    from scipy.spatial.distance import pdist, squareform
    from sklearn.metrics import silhouette_score

    from neuron_core.analysis.modes import silhouette_precomputed

    rng = np.random.default_rng(0)
    for m, k in ((12, 2), (30, 3), (41, 4), (9, 2)):
        X = rng.normal(size=(m, 8))
        labels = rng.integers(k, size=m)
        labels[:k] = np.arange(k)
        labels[-1] = labels[0] if m > k else labels[-1]
        D = squareform(pdist(X, metric="cosine"))
        assert silhouette_precomputed(D, labels) == pytest.approx(silhouette_score(D, labels, metric="precomputed"))
    singleton = np.array([0, 0, 0, 1, 2, 2])
    D = squareform(pdist(rng.normal(size=(6, 4))))
    assert silhouette_precomputed(D, singleton) == pytest.approx(silhouette_score(D, singleton, metric="precomputed"))
    with pytest.raises(ValueError):
        silhouette_precomputed(D, np.zeros(6, dtype=int))


def test_a_neuron_uses_the_first_prefix_of_draws_that_settles_it():
    """Sequential Monte Carlo: a borderline neuron's p-value comes from 800, 1600, ... draws of its size, the first
    count at which its verdict is settled; a neuron settled at 400 keeps 400 whatever else was drawn for others."""
    from neuron_core.analysis.polysemantic import _settled, verdict_of

    rng = np.random.default_rng(0)
    null = rng.uniform(0, 1, 6400)
    score = float(np.quantile(null, 1 - 0.8 * CFG.alpha))  # true p just below alpha: often borderline at 400 draws
    n, settled = _settled(null, score, 2, CFG)
    assert n in (400, 800, 1600, 3200, 6400)
    k = int((null[:n] >= score - 1e-12).sum())
    assert settled == (verdict_of(score, 2, k, n, CFG) != "borderline")
    for shorter in (400, 800, 1600, 3200):
        if shorter < n:  # every shorter prefix left it borderline
            assert verdict_of(score, 2, int((null[:shorter] >= score).sum()), shorter, CFG) == "borderline"
    clear = float(np.quantile(null, 0.999))
    assert _settled(null, clear, 2, CFG) == (400, True) == _settled(null[:400], clear, 2, CFG)
    assert _settled(null, 0.5, 2, CFG) == (400, True)  # clearly not detected
    off = DetectorConfig(n_null_max=0)
    assert _settled(null, score, 2, off)[0] == 400
    # true p = alpha, in every prefix (a low-discrepancy sequence): never settles, uses every draw
    even = (np.arange(6400) * 0.6180339887498949) % 1.0
    assert _settled(even, 1.0 - CFG.alpha, 2, CFG) == (6400, False)


def blob(rng: np.random.Generator, centre: np.ndarray, n: int, spread: float) -> np.ndarray:
    x = centre + spread * rng.normal(size=(n, centre.size))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_coherence_is_one_minus_the_mean_pair_distance_over_the_random_scale():
    from scipy.spatial.distance import pdist

    from neuron_core.analysis.modes import coherence

    rng = np.random.default_rng(0)
    X = np.concatenate([blob(rng, rng.normal(size=16), 5, 0.3), blob(rng, rng.normal(size=16), 4, 2.0)])
    split = Clustering(np.array([0] * 5 + [1] * 4), [0, 1], 0.0)
    got = coherence(X, split, scale=0.9)
    want = [1 - pdist(X[:5], "cosine").mean() / 0.9, 1 - pdist(X[5:], "cosine").mean() / 0.9]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_scatter_of_unrelated_contexts_is_noise_not_a_second_concept():
    """A tight mode beside a group as spread as random contexts: the group weighs nothing, the score is 0; the
    same group made tight counts as a second concept (the annotators' rubric: a scattering is noise)."""
    rng = np.random.default_rng(0)
    ctxs = [ctx(m) for m in ANIMALS + MONTHS + ANIMALS[:2]]
    tight = blob(rng, rng.normal(size=32), 5, 0.05)
    scatter = blob(rng, np.zeros(32), 5, 1.0)  # random directions: a mean pair distance of about 1
    other_tight = blob(rng, rng.normal(size=32), 5, 0.05)
    labels = np.array([0] * 5 + [1] * 5)
    values = np.linspace(2.0, 1.5, 10)
    scores = {}
    for name, second in (("scatter", scatter), ("tight", other_tight)):
        X = np.concatenate([tight, second])
        ev = ModeEvidence.of(ctxs, X, X, scale=(1.0, 1.0))
        split = Clustering.of(X, labels, [0, 1], {0: 0.5, 1: 0.5}, {0: 0.5, 1: 0.5})
        scores[name] = score_modes(X, split, ev, CFG, values)[0]
    assert scores["scatter"] < 0.05
    assert scores["tight"] > 0.5


def test_the_bagged_score_is_the_mean_of_its_subsets_scores():
    """Recomputed independently: the same subsets (the same generator), each clustered, merged and scored by
    hand; n_bags 1 is the score of all the contexts; one mode of all the contexts scores 0."""
    from dataclasses import replace

    from neuron_core.analysis.modes import bagged_score, merge_and_score

    ctxs, X = two_groups(ANIMALS * 3, MONTHS * 3)
    values = np.linspace(2.0, 1.0, len(ctxs))
    ones = np.ones(len(ctxs))
    ev = ModeEvidence.of(ctxs, X, X, scale=(1.0, 1.0))
    cfg = replace(CFG, n_bags=5, bag_fraction=0.6)
    full = cluster(X, values, ones, cfg)
    merged, score, separation = bagged_score(X, full, values, ones, ev, cfg, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    by_hand = []
    for _ in range(5):
        idx = np.sort(rng.choice(len(ctxs), size=round(0.6 * len(ctxs)), replace=False))
        sub = cluster(X[idx], values[idx], ones[idx], cfg)
        by_hand.append(merge_and_score(X[idx], sub, ev.take(idx), cfg, values[idx])[1])
    assert len(merged.modes) == 2 and score == pytest.approx(np.mean(by_hand))
    assert separation == pytest.approx(merge_and_score(X, full, ev, cfg, values)[2])
    one = bagged_score(X, full, values, ones, ev, replace(cfg, n_bags=1), np.random.default_rng(3))[1]
    assert one == pytest.approx(merge_and_score(X, full, ev, cfg, values)[1])
    single = Clustering.single(np.zeros(len(ctxs), dtype=int))
    assert bagged_score(X, single, values, ones, ev, cfg, np.random.default_rng(3))[1] == 0.0


def test_tree_cuts_equal_scipys_cut_tree():
    from scipy.cluster.hierarchy import cut_tree, linkage
    from scipy.spatial.distance import pdist

    from neuron_core.analysis.modes import tree_cuts

    rng = np.random.default_rng(0)
    for _ in range(100):
        m = int(rng.integers(6, 49))
        X = rng.normal(size=(m, 16)) + 2.0 * rng.integers(0, 3, size=(m, 1))
        Z = linkage(pdist(X, "cosine"), "average")
        ks = list(range(2, min(4, m // 3) + 1))
        np.testing.assert_array_equal(tree_cuts(Z, ks), cut_tree(Z, n_clusters=ks))
