"""The polysemantic detector on planted ground truth in a real model (SmolLM2), and on the seed's small records."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuron_core import ActivationMonitor, CorpusTooSmallError, InputError, ModelInterface, load_model, profile
from neuron_core.analysis import DetectorConfig, PolysemanticDetector, PolysemanticNeuron
from neuron_core.corpus import builtin_corpus, load_probes
from tests.neuron_core.planting import LEXICAL, auc, plant

SITE = "blocks.6.mlp.hook_post"


@pytest.fixture(scope="module")
def planted():
    """A fresh SmolLM2 with 8 OR neurons (two unrelated concepts) and 16 single-concept neurons in layer 6 (4 of
    them lexically diverse: unit symbols, number words in three languages, sentence-final punctuation in four,
    Python identifiers), profiled over part of the built-in corpus plus the probes' held-out sentences."""
    lm = load_model("smollm2-135m", device="cpu")  # a private copy: planting writes into the weights
    truth = plant(lm, layer=6, n_or=8, n_single=12, n_lexical=5)
    held_out = [e.text for p in load_probes().values() for e in p.held_out]
    interface = ModelInterface(lm)
    prof = profile(interface, ["layer 6"], builtin_corpus().texts(1200) + held_out, top_k=32, n_samples=64,
                   batch_size=32, progress=False)
    det = PolysemanticDetector(prof, interface=interface, neurons=list(truth.neurons))
    return truth, prof, det


def test_or_neurons_outrank_single_concept_neurons(planted):
    truth, _, det = planted
    scores = {r.neuron: r.score for r in det.results}
    value = auc([scores[n] for n in truth.or_neurons], [scores[n] for n in truth.single_neurons])
    print(f"planted AUC = {value:.3f}")
    assert value >= 0.95


def test_both_concepts_recovered(planted):
    truth, _, det = planted
    for n in truth.or_neurons:
        verdict = det.describe(SITE, n)
        found = {m.probe_concept for m in verdict.modes}
        assert set(truth.neurons[n]) <= found, (n, truth.neurons[n], verdict.summary)
        assert verdict.n_modes >= 2
    verdicts = {r.neuron: r.verdict for r in det.results}
    detected = {n for n, v in verdicts.items() if v == "detected"}
    assert detected == {r.neuron for r in det.detect()}
    assert len(detected & set(truth.or_neurons)) >= 5
    assert sum(verdicts[n] != "not detected" for n in truth.or_neurons) >= 6
    assert not detected & set(truth.single_neurons)


def test_single_concepts_are_one_mode(planted):
    """A concept that spans many tokens (unit symbols, number words in three languages, punctuation in four,
    identifiers of one language, month names) is one mode, not one per token: none is detected, and the single-
    concept neurons average at most 1.3 modes."""
    truth, _, det = planted
    lexical = [n for n in truth.single_neurons if truth.neurons[n][0] in LEXICAL]
    assert len(lexical) == 5
    verdicts = {n: det.describe(SITE, n) for n in truth.single_neurons}
    for n in lexical:
        assert verdicts[n].verdict == "not detected", verdicts[n].summary
    mean_modes = float(np.mean([v.n_modes for v in verdicts.values()]))
    print(f"modes per single-concept neuron: {mean_modes:.2f}")
    assert mean_modes <= 1.3


def test_results_are_typed_and_complete(planted):
    truth, _, det = planted
    found = det.detect()
    assert found == sorted(found, key=lambda r: -r.score)
    top = found[0]
    assert isinstance(top, PolysemanticNeuron) and top.site == SITE and isinstance(top.neuron, int)
    assert 0 <= top.score <= 1 and 0 < top.p_value <= 1 and top.summary.startswith(top.ref)
    assert abs(sum(m.share for m in top.modes) - 1) < 0.2
    assert all(m.examples and "[[" in m.examples[0].text for m in top.modes)
    assert any(m.effect is not None for m in top.modes)  # the causal check ran (zero-ablation)
    frame = det.scores()
    assert {"site", "neuron", "score", "p_value", "n_modes"} <= set(frame.columns)
    assert len(frame) == len(truth.neurons)
    assert set(det.timings) >= {"contexts", "embed", "cluster", "null", "probes"}


def test_single_concept_modes_named(planted):
    truth, _, det = planted
    named = 0
    for n in truth.single_neurons:
        verdict = det.describe(SITE, n)
        named += verdict.modes[0].probe_concept == truth.neurons[n][0]
    assert named >= len(truth.single_neurons) - 2


def test_null_is_calibrated(planted):
    """Random context sets through the same procedure (clustered, merged, scored over the same bags): few of them
    reach the score a verdict needs."""
    _, prof, det = planted
    from neuron_core.analysis.contexts import random_contexts
    from neuron_core.analysis.modes import bagged_score, cluster

    det.run()  # the embedder is fitted to the layer's random contexts
    pool = random_contexts(prof, SITE, 400, seed=7)
    X, ev = det._evidence(pool)
    rng = np.random.default_rng(3)
    scores = []
    ones = np.ones(40)
    for _ in range(60):
        idx = rng.choice(len(pool), size=40, replace=False)
        vals = rng.uniform(1, 10, size=40)
        clustering = cluster(X[idx], vals, ones, det.config)
        scores.append(bagged_score(X[idx], clustering, vals, ones, ev.take(idx), det.config, rng)[1])
    null = np.array(scores)
    assert float((null >= det.config.min_score).mean()) <= 0.2


@pytest.fixture(scope="module")
def seed_record(smollm):
    texts = ["The cat sat on the mat while the dog slept by the fire.",
             "Stock prices rose sharply after the quarterly earnings report in March.",
             "def add(a, b): return a + b  # a tiny Python function",
             "Le chat dort sur le canapé pendant que la pluie tombe.",
             "ERROR 2026-03-01 12:00:01 connection refused on port 5432",
             "She played a slow waltz on the violin, then a fast reel on the fiddle."] * 3
    monitor = ActivationMonitor(ModelInterface(smollm))
    monitor.register_layers(["layer 3", "layer 6"])
    return monitor.capture(texts)


def test_detector_on_a_small_record(seed_record, smollm):
    det = PolysemanticDetector(seed_record, interface=ModelInterface(smollm),
                               config=DetectorConfig(max_neurons=40, n_null=50))
    frame = det.scores()
    assert len(frame) == 80 and frame["site"].nunique() == 2
    assert frame["score"].between(0, 1).all() and frame["p_value"].between(0, 1).all()


def test_deep_view_is_opt_in_and_holds_the_analysed_sites(seed_record, smollm):
    """DetectorConfig.deep_view: the subject embedder reads a later layer with every analysed site's neurons held
    at their mean over the record (checked against the record itself), and the modes' evidence carries that view
    with its own random scale; the default has two views."""
    det = PolysemanticDetector(seed_record, interface=ModelInterface(smollm),
                               config=DetectorConfig(max_neurons=10, n_null=50, deep_view=0.6))
    frame = det.scores()
    assert len(frame) == 20
    emb = det.embedder
    assert emb.deep_layer == round(0.6 * smollm.model.config.num_hidden_layers)
    held = {site.name: mean for site, mean in emb.held.items()}
    assert sorted(held) == sorted(det.site_names)
    for site, mean in held.items():
        torch.testing.assert_close(mean, seed_record[site].float().mean(0), atol=1e-5, rtol=1e-4)
    assert len(det._scale) == 3 and det._scale[2] != 1.0  # set from the reference draws, not the default
    ctxs = det._contexts(det.site_names[0], int(frame["neuron"].iloc[0]))
    assert det._evidence(ctxs)[1].deep_vecs.shape[0] == len(ctxs)
    plain = PolysemanticDetector(seed_record, interface=ModelInterface(smollm), config=DetectorConfig(max_neurons=10))
    assert plain.embedder.deep_layer is None and not plain.embedder.held


def test_screen_keeps_the_best_quick_scores(seed_record, smollm):
    """DetectorConfig.select: with max_neurons, "screen" analyses the neurons whose contexts, clustered, merged and
    scored once, score highest (checked against every neuron scored with one subset: n_bags=1 scores all the
    contexts once) and "peak" the highest maximum activations (checked against the record)."""
    interface, site = ModelInterface(smollm), seed_record.site_names[1]
    quiet = dict(n_null=0, probe_modes=False, ablation=False)
    every = PolysemanticDetector(seed_record, interface=interface, sites=[site],
                                 config=DetectorConfig(n_bags=1, **quiet))
    quick = {r.neuron: r.score for r in every.results}
    screened = PolysemanticDetector(seed_record, interface=interface, sites=[site],
                                    config=DetectorConfig(max_neurons=12, **quiet))
    chosen = {r.neuron for r in screened.results}
    assert len(chosen) == 12 and screened.n_screened[site] == len(quick)
    assert min(quick[n] for n in chosen) >= max(quick[n] for n in quick if n not in chosen)
    assert min(quick[n] for n in chosen) > 0  # a small record still has more than 12 neurons with two modes
    assert "screen" in screened.timings
    peak = PolysemanticDetector(seed_record, interface=interface, sites=[site],
                                config=DetectorConfig(max_neurons=12, select="peak", **quiet))
    highest = seed_record[site].amax(0).argsort(descending=True)[:12]
    assert {r.neuron for r in peak.results} == {int(n) for n in highest} and not peak.n_screened
    with pytest.raises(InputError, match="select"):
        PolysemanticDetector(seed_record, config=DetectorConfig(select="best"))  # type: ignore[arg-type]


def test_asked_for_neurons_with_too_few_contexts_get_one_mode(seed_record, smollm):
    """Asked for by id, neurons with fewer than min_contexts strong contexts are reported (one mode, no score, not
    detected); a detector choosing its own neurons says the corpus is too small instead."""
    cfg = DetectorConfig(min_contexts=500, n_null=20, ablation=False, probe_modes=False)
    site = seed_record.site_names[0]
    det = PolysemanticDetector(seed_record, interface=ModelInterface(smollm), config=cfg, sites=[site], neurons=[3, 7])
    assert [(r.neuron, r.n_modes, r.score, r.p_value, r.verdict) for r in sorted(det.results, key=lambda r: r.neuron)
            ] == [(3, 1, 0.0, 1.0, "not detected"), (7, 1, 0.0, 1.0, "not detected")]
    with pytest.raises(CorpusTooSmallError, match="strong contexts"):
        PolysemanticDetector(seed_record, interface=ModelInterface(smollm), config=cfg, sites=[site]).run()


def test_bad_inputs(seed_record, tiny_gpt2):
    with pytest.raises(InputError):
        PolysemanticDetector("not a record")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        PolysemanticDetector(seed_record, neurons=[10**6]).run()
    tiny = ActivationMonitor(tiny_gpt2, ["mlp.0"]).capture(["a b"])
    with pytest.raises(CorpusTooSmallError, match="strong contexts"):
        PolysemanticDetector(tiny, embedder="minilm").run()


def test_dead_constant_and_nonfinite_neurons(tiny_gpt2, builtin_texts):
    """Neurons that never fire, constant neurons and NaN/Inf activations: counted, excluded, reported."""
    model = tiny_gpt2.module
    mlp = model.transformer.h[0].mlp
    handle = mlp.act.register_forward_hook(lambda m, a, out: _poison(out))
    try:
        prof = profile(tiny_gpt2, ["mlp.0"], builtin_texts[:300], progress=False)
    finally:
        handle.remove()
    view = prof["mlp.0"]
    assert view.frac_active[0] == 0 and view.std[1] == 0  # dead, constant
    assert int(view.n_nonfinite[2]) > 0 and math.isfinite(float(view.mean[2]))
    assert int(view.n_nonfinite[3]) > 0 and math.isfinite(float(view.max[3]))
    det = PolysemanticDetector(prof, config=DetectorConfig(max_neurons=12, n_null=20))
    frame = det.scores()
    assert 0 not in set(frame["neuron"])  # a dead neuron has nothing to analyse
    assert det.n_excluded["blocks.0.mlp.hook_post"] == 2  # the NaN and the Inf neuron, reported
    assert frame["score"].notna().all()


def _poison(out: torch.Tensor) -> torch.Tensor:
    out = out.clone()
    out[..., 0] = -1.0  # never active
    out[..., 1] = 0.5  # constant
    out[:, :1, 2] = float("nan")
    out[:, -1:, 3] = float("inf")
    return out


def _blobs(rng: np.random.Generator, sizes: list[int], spread: float, dim: int = 24) -> np.ndarray:
    """Unit vectors in len(sizes) groups around random directions (spread: the noise's scale)."""
    centres = rng.normal(size=(len(sizes), dim))
    X = np.concatenate([c + spread * rng.normal(size=(n, dim)) for c, n in zip(centres, sizes)])
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def test_clustering_equals_sklearn_fit_per_k():
    """The detector cuts one average-linkage tree at each k; sklearn's AgglomerativeClustering fitted for each k
    (and its silhouette on cosine distances) must choose the same partition."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    from neuron_core.analysis.modes import cluster as _cluster

    cfg = DetectorConfig()
    rng = np.random.default_rng(5)
    cases = [_blobs(rng, [20, 15], 0.3), _blobs(rng, [12, 12, 12], 0.5), _blobs(rng, [30, 6, 6, 4], 0.4),
             _blobs(rng, [40], 0.8), _blobs(rng, [9, 9], 2.0), _blobs(rng, [7, 5], 0.2)]
    chosen_ks = []
    for X in cases:
        m = len(X)
        values = rng.uniform(1, 5, size=m)
        sampled = (rng.uniform(size=m) < 0.5).astype(float)
        got = _cluster(X, values, sampled, cfg)
        mass = values * sampled
        best_sil, best_labels = None, None
        for k in range(2, min(cfg.max_modes, m // cfg.min_mode_size) + 1):
            labels = AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(X)
            top = values * (1 - sampled)
            ok = [c for c in range(k) if (labels == c).sum() >= cfg.min_mode_size and max(
                mass[labels == c].sum() / mass.sum(), top[labels == c].sum() / top.sum()) >= cfg.min_share]
            if len(ok) < 2:
                continue
            keep = np.isin(labels, ok)
            sil = silhouette_score(X[keep], labels[keep], metric="cosine")
            if best_sil is None or sil > best_sil:
                best_sil, best_labels = sil, np.where(keep, labels, -1)
        if best_sil is None or best_sil < cfg.silhouette_min:
            assert got.modes == [0] and got.silhouette == 0.0
            chosen_ks.append(1)
            continue
        assert adjusted_rand_score(best_labels, got.labels) == 1.0
        assert ((best_labels == -1) == (got.labels == -1)).all()
        assert abs(got.silhouette - best_sil) < 1e-5
        chosen_ks.append(len(got.modes))
    assert 1 in chosen_ks and len(set(chosen_ks)) >= 3  # the cases exercise k = 1 and several k > 1


def test_mode_shares_of_mass_and_of_the_top_band(seed_record):
    """A mode seen only among the top examples has no share of the sampled mass: the verdict gives its share of the
    top band instead of a bare 0%, and a mode found through the probes says so."""
    from neuron_core.analysis.contexts import Context
    from neuron_core.analysis.modes import Clustering as _Clustering

    det = PolysemanticDetector(seed_record)
    sampled = [Context("a b", 0, 1, 1.0, d, 1, "a", sampled=True) for d in range(4)]
    top_a = [Context("c d", 0, 1, 4.0, 10 + d, 1, "c") for d in range(2)]
    top_b = [Context("e f", 0, 1, 2.0, 20 + d, 1, "e") for d in range(3)]
    probe = [Context("g h", 0, 1, 5.0, -1, -1, "g") for _ in range(2)]
    ctxs = sampled + top_a + top_b + probe
    labels = np.array([0] * 6 + [1] * 3 + [2] * 2)
    clustering = _Clustering(labels, [0, 1, 2], 0.3, {0: 1.0, 1: 0.0, 2: 0.0}, {0: 1.0, 1: 0.4, 2: 0.25})
    X = np.random.default_rng(0).normal(size=(len(ctxs), 8))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    modes = det._modes(ctxs, X, clustering, [], np.zeros((0, 8)), probe_ids={2})
    by_token = {m.top_tokens[0]: m for m in modes}
    top_total = 2 * 4.0 + 3 * 2.0  # the top band: corpus contexts outside the uniform sample
    assert by_token["a"].share == 1.0 and by_token["a"].top_share == pytest.approx(8.0 / top_total)
    assert by_token["e"].share == 0.0 and by_token["e"].top_share == pytest.approx(6.0 / top_total)
    assert by_token["g"].found_by_probes and by_token["g"].top_share == 0.0
    assert not by_token["a"].found_by_probes and not by_token["e"].found_by_probes
    summary = det._summary("L6/N1", modes, 0.5, 0.01, len(ctxs))
    assert "(100%)" in summary and "(0% of the mass, 43% of the top examples)" in summary
    assert "(found through the probes)" in summary and "(0%)" not in summary


def test_p_value_does_not_depend_on_the_other_neurons_analysed(planted):
    """The null is drawn per set size, with activation values from neurons picked at random from the whole site:
    a neuron's p-value is the same whether it is analysed alone, with the planted set, or with the layer."""
    truth, prof, det = planted
    alone = PolysemanticDetector(prof, interface=det.interface, neurons=truth.or_neurons[:3],
                                 config=DetectorConfig(ablation=False))
    with_all = {r.neuron: r for r in det.results}
    for r in alone.results:
        # the subject model embeds contexts in batches whose shapes depend on the company: the last bits may move
        assert r.p_value == with_all[r.neuron].p_value and r.score == pytest.approx(with_all[r.neuron].score, abs=1e-4)
        assert r.z_score == pytest.approx(with_all[r.neuron].z_score)


def test_null_size_grid():
    from neuron_core.analysis.polysemantic import null_size

    sizes = [null_size(m, 6) for m in range(6, 200)]
    assert all(6 <= s <= m for s, m in zip(sizes, range(6, 200)))  # never above the neuron's own size
    assert sizes == sorted(sizes)
    assert [null_size(m, 6) for m in range(6, 21)] == list(range(6, 21))  # every size up to 20
    grid = sorted(set(sizes))
    assert all(b - a <= max(1, a // 10) for a, b in zip(grid, grid[1:]))  # then steps of about a tenth
    assert len(grid) < 45
