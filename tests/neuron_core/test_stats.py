"""Streaming statistics against brute-force float64 computations on the same data."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from neuron_core.errors import ProfileMismatchError
from neuron_core.stats import SiteStats, StatsConfig, hist_edges, token_priority

N = 48
W = StatsConfig().context_width


def _stream(seed: int, n_tokens: int, doc_start: int = 0):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(n_tokens, N, generator=g) * torch.linspace(0.01, 30, N) + torch.linspace(-2, 2, N)
    acts[:, 0] = 0.0  # a dead neuron
    acts[:, 1] = 3.25  # a constant neuron
    doc = torch.arange(n_tokens) // 10 + doc_start
    pos = torch.arange(n_tokens) % 10
    ctx = torch.randint(0, 1000, (n_tokens, W), generator=g, dtype=torch.int32)
    return acts, doc, pos, ctx


def _feed(stats, acts, doc, pos, ctx, sizes):
    start = 0
    for size in sizes:
        stats.add(acts[start:start + size], doc[start:start + size], pos[start:start + size], ctx[start:start + size])
        start += size
    assert start == acts.shape[0]


@pytest.fixture
def data():
    return _stream(0, 3000)


def test_moments_match_float64(data):
    acts, doc, pos, ctx = data
    stats = SiteStats(N, config=StatsConfig(top_k=5, bottom_k=3, n_samples=7))
    _feed(stats, acts, doc, pos, ctx, [1, 999, 17, 1500, 483])
    x = acts.double().numpy()
    np.testing.assert_allclose(stats.mean.numpy(), x.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.var.numpy(), x.var(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(stats.min.numpy(), x.min(0))
    np.testing.assert_array_equal(stats.max.numpy(), x.max(0))
    np.testing.assert_array_equal(stats.frac_active.numpy(), (x > 0).mean(0))
    assert stats.var[1] == 0 and stats.frac_active[0] == 0  # constant and dead neurons: no NaN, no crash


def test_topk_bottomk_match_brute_force(data):
    acts, doc, pos, ctx = data
    stats = SiteStats(N, config=StatsConfig(top_k=6, bottom_k=4, n_samples=5))
    _feed(stats, acts, doc, pos, ctx, [64] * 46 + [56])
    # neurons 2.. have continuous values (no ties)
    top = torch.topk(acts, 6, dim=0)
    np.testing.assert_array_equal(stats.top.values[2:].numpy(), top.values.T[2:].numpy())
    idx = top.indices.T[2:]
    assert torch.equal(stats.top.doc[2:], doc[idx]) and torch.equal(stats.top.pos[2:], pos[idx])
    assert torch.equal(stats.top.ctx[2:], ctx[idx])
    bottom = torch.topk(-acts, 4, dim=0)
    np.testing.assert_array_equal(stats.bottom.values[2:].numpy(), (-bottom.values.T[2:]).numpy())


def test_kept_examples_do_not_depend_on_batching_even_with_ties():
    """Many equal values (quantised activations) and a steadily rising neuron: whatever the batching, and across
    a save/load in the middle, the kept sets are the same tokens, and each is a true top-k / bottom-k by value."""
    g = torch.Generator().manual_seed(3)
    n_tok = 1200
    acts = torch.round(torch.randn(n_tok, N, generator=g) * 2) / 2  # only a few distinct values: ties everywhere
    acts[:, 5] = torch.arange(n_tok, dtype=torch.float32)  # every batch beats all kept entries: the capped path
    acts[:, 6] = 1.0  # one value for every token
    doc, pos = torch.arange(n_tok) // 50, torch.arange(n_tok) % 50
    ctx = torch.randint(0, 1000, (n_tok, W), generator=g, dtype=torch.int32)
    cfg = StatsConfig(top_k=7, bottom_k=5, n_samples=4)
    runs = []
    for sizes in ([n_tok], [1] * 40 + [1160], [64] * 18 + [48], [300, 3, 597, 300]):
        stats = SiteStats(N, config=cfg)
        _feed(stats, acts, doc, pos, ctx, sizes)
        runs.append(stats)
    half = SiteStats(N, config=cfg)
    _feed(half, acts[:500], doc[:500], pos[:500], ctx[:500], [100] * 5)
    resumed = SiteStats.from_state_dict(half.state_dict(), half.config_dict())
    _feed(resumed, acts[500:], doc[500:], pos[500:], ctx[500:], [33] * 21 + [7])
    runs.append(resumed)
    sync_free = SiteStats(N, config=cfg, sync_free=True)  # the accelerator algorithm, run on CPU
    _feed(sync_free, acts, doc, pos, ctx, [64] * 18 + [48])
    runs.append(sync_free)
    first = runs[0]
    for other in runs[1:]:
        for name in ("top", "bottom", "sample"):
            a, b = getattr(first, name), getattr(other, name)
            for field in ("values", "doc", "pos", "ctx"):
                assert torch.equal(getattr(a, field), getattr(b, field)), (name, field)
    for n in range(N):
        kept = set(zip(first.top.doc[n].tolist(), first.top.pos[n].tolist()))
        assert len(kept) == 7
        rest = torch.tensor([(d, p) not in kept for d, p in zip(doc.tolist(), pos.tolist())])
        assert first.top.values[n].min() >= acts[rest, n].max()  # a true top-7 by value
        low = set(zip(first.bottom.doc[n].tolist(), first.bottom.pos[n].tolist()))
        rest = torch.tensor([(d, p) not in low for d, p in zip(doc.tolist(), pos.tolist())])
        assert first.bottom.values[n].max() <= acts[rest, n].min()
        assert torch.all(first.top.values[n][:-1] >= first.top.values[n][1:])  # read back sorted
    assert first.top.values[5].tolist() == [float(v) for v in range(n_tok - 1, n_tok - 8, -1)]


def test_sync_free_path_equals_cpu_path(data):
    """The accelerator algorithm (dense, fixed shapes, masked moments), run on CPU, gives the same statistics."""
    acts, doc, pos, ctx = data
    acts = acts.clone()
    acts[::7, 3] = torch.round(acts[::7, 3])  # some ties
    acts[11, 4] = float("nan")
    cfg = StatsConfig(top_k=6, bottom_k=4, n_samples=5)
    a, b = SiteStats(N, config=cfg), SiteStats(N, config=cfg, sync_free=True)
    for s in (a, b):
        _feed(s, acts, doc, pos, ctx, [64] * 46 + [56])
    torch.testing.assert_close(a.mean, b.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.var, b.var, rtol=1e-10, atol=1e-12)
    assert torch.equal(a.hist, b.hist) and torch.equal(a.n_active, b.n_active) and torch.equal(a.max, b.max)
    for name in ("top", "bottom", "sample"):
        for field in ("values", "doc", "pos", "ctx"):
            assert torch.equal(getattr(getattr(a, name), field), getattr(getattr(b, name), field)), (name, field)


def test_sample_is_batching_independent_and_exact(data):
    acts, doc, pos, ctx = data
    cfg = StatsConfig(top_k=3, bottom_k=0, n_samples=9)
    a = SiteStats(N, config=cfg)
    _feed(a, acts, doc, pos, ctx, [3000])
    b = SiteStats(N, config=cfg)
    _feed(b, acts, doc, pos, ctx, [7, 93, 900, 2000])
    assert torch.equal(a.sample.doc, b.sample.doc) and torch.equal(a.sample.pos, b.sample.pos)
    # brute force: among active tokens, the 9 with the smallest priority
    prio = token_priority(doc, pos)
    for n in (2, 10, 47):
        active = torch.nonzero(acts[:, n] > 0).flatten()
        chosen = active[torch.argsort(prio[active])[:9]]
        assert set(zip(doc[chosen].tolist(), pos[chosen].tolist())) == set(
            zip(a.sample.doc[n].tolist(), a.sample.pos[n].tolist()))
        assert torch.all(a.sample.values[n] > 0)
    assert torch.all(a.sample.doc[0] == -1)  # a dead neuron has no active samples


def test_token_reservoir_is_uniform_over_all_tokens_and_batching_independent(data):
    acts, doc, pos, ctx = data
    cfg = StatsConfig(top_k=3, bottom_k=0, n_samples=4, n_reservoir=50)
    a, b, first, second = (SiteStats(N, config=cfg) for _ in range(4))
    _feed(a, acts, doc, pos, ctx, [3000])
    _feed(b, acts, doc, pos, ctx, [7, 93, 900, 2000])
    # brute force: among every token (active for some neuron or not), the 50 with the smallest priority
    chosen = torch.argsort(token_priority(doc, pos))[:50]
    expected = set(zip(doc[chosen].tolist(), pos[chosen].tolist()))
    for stats in (a, b):
        assert set(zip(stats.tokens.doc[0].tolist(), stats.tokens.pos[0].tolist())) == expected
    # kept in key order (the smallest priority first), each with its own context
    np.testing.assert_array_equal(a.tokens.ctx[0].numpy(), ctx[chosen].numpy())
    _feed(first, acts[:1200], doc[:1200], pos[:1200], ctx[:1200], [1200])
    _feed(second, acts[1200:], doc[1200:], pos[1200:], ctx[1200:], [1800])
    merged = first.merge(second)
    assert torch.equal(merged.tokens.doc, a.tokens.doc) and torch.equal(merged.tokens.pos, a.tokens.pos)
    loaded = SiteStats.from_state_dict(a.state_dict("s"), a.config_dict(), "s")
    assert torch.equal(loaded.tokens.ctx, a.tokens.ctx)
    old = {k: v for k, v in a.state_dict("s").items() if ".tokens." not in k}  # saved before the reservoir
    assert torch.all(SiteStats.from_state_dict(old, a.config_dict(), "s").tokens.doc == -1)


def test_histogram_counts(data):
    acts, doc, pos, ctx = data
    stats = SiteStats(N, config=StatsConfig(top_k=2, bottom_k=0, n_samples=0))
    _feed(stats, acts, doc, pos, ctx, [1000, 2000])
    mags = hist_edges(stats.config.hist_lo, stats.config.hist_hi, stats.config.hist_bits).double().numpy()
    k = len(mags) - 1
    assert stats.n_bins == 2 * k + 3
    for n in (0, 1, 5, 47):
        x = acts[:, n].double().numpy()
        z = np.searchsorted(mags, np.abs(x), side="right")  # independent of the bit trick
        expected = np.bincount(np.where(np.signbit(x), k + 1 - z, k + 1 + z), minlength=stats.n_bins)
        np.testing.assert_array_equal(stats.hist[n].numpy(), expected)
    assert torch.all(stats.hist.sum(1) == 3000)
    q = stats.quantiles([0.5])
    assert q.shape == (N, 1)


def test_hist_edges_log_spaced():
    mags = hist_edges(2.0**-3, 2.0**3, 2).double()
    assert mags[0] == 0.125 and mags[-1] == 8.0 and len(mags) == 6 * 4 + 1
    ratios = mags[4:] / mags[:-4]
    assert torch.all(ratios == 2.0)  # 4 bins per octave


def test_merge_equals_joint(data):
    acts, doc, pos, ctx = data
    cfg = StatsConfig(top_k=5, bottom_k=3, n_samples=6)
    joint = SiteStats(N, config=cfg)
    _feed(joint, acts, doc, pos, ctx, [500] * 6)
    a, b = SiteStats(N, config=cfg), SiteStats(N, config=cfg)
    _feed(a, acts[:1300], doc[:1300], pos[:1300], ctx[:1300], [650, 650])
    _feed(b, acts[1300:], doc[1300:], pos[1300:], ctx[1300:], [1700])
    a.merge(b)
    torch.testing.assert_close(a.mean, joint.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.var, joint.var, rtol=1e-10, atol=1e-12)
    for name in ("count", "min", "max", "n_active", "hist"):
        assert torch.equal(getattr(a, name), getattr(joint, name)), name
    for which in ("top", "bottom", "sample"):
        ea, ej = getattr(a, which), getattr(joint, which)
        assert torch.equal(ea.values[2:], ej.values[2:]) and torch.equal(ea.doc[2:], ej.doc[2:]), which
        assert torch.equal(ea.ctx[2:], ej.ctx[2:])


def test_state_roundtrip_and_mismatch(data):
    acts, doc, pos, ctx = data
    stats = SiteStats(N, config=StatsConfig(top_k=4))
    _feed(stats, acts, doc, pos, ctx, [3000])
    copy = SiteStats.from_state_dict(stats.state_dict("x"), stats.config_dict(), prefix="x")
    for key, value in stats.state_dict().items():
        assert torch.equal(value, copy.state_dict()[key]), key
    with pytest.raises(ProfileMismatchError):
        stats.merge(SiteStats(N, config=StatsConfig(top_k=5)))
    with pytest.raises(ProfileMismatchError):
        stats.add(torch.zeros(3, N + 1), doc[:3], pos[:3], ctx[:3])


def test_nonfinite_counted_and_excluded(data):
    acts, doc, pos, ctx = data
    acts = acts.clone()
    acts[5, 3] = math.nan
    acts[9, 3] = math.inf
    acts[11, 4] = -math.inf
    stats = SiteStats(N, config=StatsConfig(top_k=4, bottom_k=2, n_samples=3))
    _feed(stats, acts, doc, pos, ctx, [1000, 2000])
    assert stats.n_nonfinite[3] == 2 and stats.n_nonfinite[4] == 1 and stats.n_nonfinite[5] == 0
    clean = acts[:, 3][torch.isfinite(acts[:, 3])].double()
    assert stats.count[3] == clean.numel()
    torch.testing.assert_close(stats.mean[3], clean.mean(), rtol=1e-12, atol=1e-12)
    assert torch.isfinite(stats.max[3]) and torch.isfinite(stats.min[4])
    assert torch.all(torch.isfinite(stats.top.values[3])) and stats.hist[3].sum() == clean.numel()


def test_config_validation():
    with pytest.raises(ValueError):
        StatsConfig(top_k=0)
    with pytest.raises(ValueError):
        StatsConfig(hist_lo=10, hist_hi=1)


def _pass_inputs(n_neurons: int, n_tok: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    vt = torch.randn(n_neurons, n_tok, generator=g) * 2
    vt[:, ::7] = torch.round(vt[:, ::7])  # ties
    vt[3, 5], vt[7, 9], vt[8, 10] = float("nan"), float("inf"), float("-inf")
    doc, pos = torch.arange(n_tok) // 50, torch.arange(n_tok) % 50
    s = SiteStats(n_neurons)
    kwargs = dict(threshold=0.0, code_lo=s._code_lo, k_bins=s._k_bins, bits=s.config.hist_bits,
                  size=n_neurons * s.n_bins, want_low=True, want_sample=True)
    from neuron_core.stats_device import _token_bits

    return (vt, *_token_bits(doc, pos), s._bin_base), kwargs


def test_compiled_batch_pass_equals_eager():
    """The accelerators run the batch pass through torch.compile (fused kernels): on CPU's compiler here, with
    dynamic shapes (a second shape reuses the compiled code), it gives the eager results: integers, keys, extremes
    bit for bit, float64 sums to rounding."""
    from neuron_core.stats_device import _batch_pass

    compiled = torch.compile(_batch_pass, dynamic=True)
    names = "n_good mean m2 min max n_active counts high low sample_keys".split()
    plain, chunked = ((0, 0), (0, 0), (0, 0)), ((4, 6), (8, 3), (2, 5))
    for shape, chunks in (((40, 300), plain), ((24, 517), plain), ((40, 300), chunked), ((24, 517), chunked)):
        args, kwargs = _pass_inputs(*shape, seed=shape[1])
        kwargs["chunks"] = chunks  # chunk maxima (the [N, n] keys never written): n not a multiple of c
        got, want = compiled(*args, **kwargs), _batch_pass(*args, **kwargs)
        for name, a, b in zip(names, got, want):
            if name in ("mean", "m2"):
                torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-12)
            else:
                assert a.dtype == b.dtype and torch.equal(a, b), name


def test_chunk_size_balances_the_two_stages():
    from neuron_core.stats_device import _chunk_size

    assert _chunk_size(32) == 16 and _chunk_size(8) == 32  # 512 maxima, then 512 / 256 candidates a row
    assert _chunk_size(0) == 0 and _chunk_size(10**6) == 2
    for n in (300, 4096, 8192, 10**5):
        for k in (1, 5, 32):
            c = _chunk_size(k, n)
            assert c & (c - 1) == 0 and (c == 2 or c * c * k <= n < 4 * c * c * k)


@pytest.mark.parametrize("n", [3, 8, 64, 257, 1000, 4096])
def test_two_stage_selection_equals_one_topk(n):
    """_select with chunk maxima keeps exactly the keys and tokens of one full top-k, for layouts made to trip a
    chunked selection: the best keys all in one chunk, one in each of k chunks (a selection of k - 1 chunks misses
    one), rising and falling runs, few finite keys (the rest -inf), n not a multiple of the chunk."""
    from neuron_core.stats_device import _chunk_max, _chunk_size, _select

    g = torch.Generator().manual_seed(n)
    k = 6
    rows = [torch.randn(n, generator=g, dtype=torch.float64) for _ in range(4)]
    rows.append(torch.arange(n, dtype=torch.float64))  # rising: the best in the last chunks (padded)
    rows.append(-torch.arange(n, dtype=torch.float64))  # falling
    spread = torch.randn(n, generator=g, dtype=torch.float64) - 100
    c = _chunk_size(k, n)
    spread[torch.arange(min(k, (n + c - 1) // c)) * c] = 100 + torch.arange(min(k, (n + c - 1) // c)).double()
    rows.append(spread)  # one winner per chunk, in k chunks
    one_chunk = torch.randn(n, generator=g, dtype=torch.float64)
    one_chunk[:min(c, n)] += 1000
    rows.append(one_chunk)
    few = torch.full((n,), -math.inf, dtype=torch.float64)
    few[torch.randperm(n, generator=g)[:3]] = torch.randn(3, generator=g, dtype=torch.float64)
    rows.append(few)
    rows.append(torch.full((n,), -math.inf, dtype=torch.float64))  # nothing eligible
    keys = torch.stack(rows)
    want_keys, want_tok = torch.topk(keys, min(k, n), dim=1)
    for chunk in sorted({c, 2, 3, 16}):  # chunks longer than the batch too
        def rekey(tok, keys=keys):
            return torch.where(tok < n, keys.gather(1, tok.clamp(max=n - 1)), -math.inf)

        best, tok = _select(_chunk_max(keys, chunk, k, -math.inf), k, chunk, n, rekey)
        assert best.shape == (len(rows), k) and bool(((tok >= 0) & (tok < n)).all())  # padding never leaks out
        order = torch.argsort(best, dim=1, descending=True, stable=True)
        assert torch.equal(best.gather(1, order)[:, :n], want_keys), chunk
        assert bool((best.gather(1, order)[:, n:] == -math.inf).all())  # n < k: filler, left out
        finite = torch.isfinite(want_keys)
        assert torch.equal(tok.gather(1, order)[:, :n][finite], want_tok[finite]), chunk  # -inf: any token


def test_sync_free_path_equals_cpu_path_on_large_batches():
    """Batches large enough for the two-stage selection (chunks of 2 to 32 tokens), with the layouts that would
    trip it: a neuron's best values all in one chunk, one per chunk, ties (quantised values, a constant neuron),
    a dead ReLU-like neuron, NaN and inf, a batch whose length is not a multiple of any chunk."""
    g = torch.Generator().manual_seed(11)
    n_tok, width = 5000, 24
    acts = torch.randn(n_tok, width, generator=g) * 2
    acts[:, 0] = torch.relu(torch.randn(n_tok, generator=g)) * (torch.rand(n_tok, generator=g) < 0.002)  # ~dead
    acts[:, 1] = 1.5  # constant: every key tied on value
    acts[:, 2] = torch.round(acts[:, 2])
    acts[1000:1016, 3] += 50  # the best 16 values in one chunk
    acts[::97, 4] += 40  # one best value per chunk, far apart
    acts[7, 5], acts[8, 5], acts[9, 6] = float("nan"), float("inf"), float("-inf")
    acts[:, 7] = torch.arange(n_tok, dtype=torch.float32)  # rising: every batch beats the kept set
    doc, pos = torch.arange(n_tok) // 300, torch.arange(n_tok) % 300
    ctx = torch.randint(0, 1000, (n_tok, W), generator=g, dtype=torch.int32)
    cfg = StatsConfig(top_k=32, bottom_k=8, n_samples=16)
    a, b = SiteStats(width, config=cfg), SiteStats(width, config=cfg, sync_free=True)
    for s in (a, b):
        _feed(s, acts, doc, pos, ctx, [1999, 2048, 953])
    assert torch.equal(a.hist, b.hist) and torch.equal(a.n_active, b.n_active)
    for name in ("top", "bottom", "sample"):
        for field in ("values", "doc", "pos", "ctx"):
            assert torch.equal(getattr(getattr(a, name), field), getattr(getattr(b, name), field)), (name, field)
    assert b.top.values[3, :16].min() >= 40 and torch.equal(b.top.values[7], torch.arange(n_tok - 1, n_tok - 33,
                                                                                         -1).float())


def test_sync_free_path_compiled_equals_cpu_path(monkeypatch):
    """The accelerator path as it runs there, its batch pass and set updates through torch.compile (here CPU's
    compiler; dynamic shapes: batches of several lengths, one compile per function and set), equals the CPU path."""
    from neuron_core import stats_device as stats_mod

    monkeypatch.setattr(stats_mod, "_COMPILED", {})
    monkeypatch.setattr(stats_mod, "_EAGER_DEVICES", set())  # compile on CPU as on an accelerator
    acts, doc, pos, ctx = _stream(4, 2601)
    acts[5, 9], acts[6, 10] = float("nan"), float("inf")
    cfg = StatsConfig(top_k=12, bottom_k=4, n_samples=6)
    a, b = SiteStats(N, config=cfg), SiteStats(N, config=cfg, sync_free=True)
    torch._dynamo.reset()  # compiled code of the other tests' calls counts towards the limit below
    # one compile of the batch pass for every batch length (13 tokens too: no size-1 specialisation), one of the
    # set update per set: a fourth compile of either raises, and the fallback's warning fails the test
    with warnings.catch_warnings(record=True) as caught, torch._dynamo.config.patch(
            recompile_limit=3, fail_on_recompile_limit_hit=True):
        warnings.simplefilter("always")
        for s in (a, b):
            _feed(s, acts, doc, pos, ctx, [700, 1024, 13, 863, 1])
    assert not [w for w in caught if "torch.compile of the statistics" in str(w.message)]  # no eager fallback
    assert stats_mod.is_compiled("_batch_pass", "cpu") and stats_mod.is_compiled("_update_set", "cpu")
    torch.testing.assert_close(a.mean, b.mean, rtol=1e-12, atol=1e-12)
    assert torch.equal(a.hist, b.hist) and torch.equal(a.n_active, b.n_active) and torch.equal(a.max, b.max)
    for name in ("top", "bottom", "sample"):
        for field in ("values", "doc", "pos", "ctx"):
            assert torch.equal(getattr(getattr(a, name), field), getattr(getattr(b, name), field)), (name, field)


def test_batch_pass_falls_back_to_eager_when_compiling_fails(monkeypatch):
    from neuron_core import stats_device as stats_mod

    def broken_compile(fn, **_kw):
        def run(*_a, **_k):
            raise RuntimeError("no triton here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(stats_mod, "_COMPILED", {})
    args, kwargs = _pass_inputs(16, 64, seed=1)
    with pytest.warns(RuntimeWarning, match="no triton here"):
        first = stats_mod._run_compiled(stats_mod._batch_pass, *args, compile_key="fake-accelerator", **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: the second call goes straight to eager
        second = stats_mod._run_compiled(stats_mod._batch_pass, *args, compile_key="fake-accelerator",
                                         **kwargs)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_histogram_table_equals_the_bit_formula_on_edge_values():
    """The CPU histogram looks bins up by the float's top 16 bits; the sync-free path computes them from all 32:
    equal on signed zeros, subnormals, values at and beside bin edges, the extremes of the range, and infinities
    and NaN (left out)."""
    cfg = StatsConfig(top_k=2, bottom_k=1, n_samples=1)
    edges = hist_edges(cfg.hist_lo, cfg.hist_hi, cfg.hist_bits)
    specials = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-38, 3e38, -3e38, float("inf"), float("-inf"),
                             float("nan"), 1.0, -1.0, 2.0**-30, 2.0**30])
    beside = torch.cat([edges, -edges, torch.nextafter(edges, torch.tensor(0.0)),
                        -torch.nextafter(edges, torch.tensor(float("inf")))])
    vals = torch.cat([specials, beside]).float()
    acts = vals[:, None].repeat(1, 3)  # three neurons, one token per value
    doc, pos = torch.zeros(len(vals), dtype=torch.long), torch.arange(len(vals))
    ctx = torch.zeros(len(vals), W, dtype=torch.int32)
    a, b = SiteStats(3, config=cfg), SiteStats(3, config=cfg, sync_free=True)
    a.add(acts, doc, pos, ctx)
    b.add(acts, doc, pos, ctx)
    assert torch.equal(a.hist, b.hist)
    assert int(a.hist[0].sum()) == len(vals) - 3  # inf, -inf and NaN left out


def test_batch_histogram_floor_is_safe_and_tight():
    """The CPU pre-filter reads, per neuron, the edge of the batch histogram's bin that holds the k-th largest
    (smallest) value: every one of the batch's k best values reaches it, and the next edge does not bound them.
    Values sit on bin edges, in the overflow bins, at +-0; one neuron has fewer finite values than k."""
    cfg = StatsConfig(top_k=5, bottom_k=3, n_samples=0)
    edges = hist_edges(cfg.hist_lo, cfg.hist_hi, cfg.hist_bits)
    g = torch.Generator().manual_seed(5)
    pool = torch.cat([edges, -edges, torch.tensor([0.0, -0.0, 1e6, -1e6]), torch.randn(200, generator=g) * 3])
    acts = pool[torch.randint(0, len(pool), (90, 12), generator=g)].float()
    acts[3:, 11] = math.nan  # three finite values: fewer than k
    stats = SiteStats(12, config=cfg)
    counts = stats._add_histogram(torch.where(torch.isfinite(acts), acts, math.nan), has_nan=True)
    assert torch.equal(counts, stats.hist)
    lower = torch.cat([torch.tensor([-math.inf]), stats.edges])
    top_floor, bottom_floor = stats._batch_floors(counts)
    for k, largest, floor in ((5, True, top_floor.double()), (3, False, bottom_floor.double())):
        keys = acts.double() if largest else -acts.double()
        for n in range(12):
            finite = keys[:, n][torch.isfinite(keys[:, n])]
            if finite.numel() < k:
                assert floor[n] == -math.inf
                continue
            kth = torch.sort(finite, descending=True).values[k - 1]
            assert kth >= floor[n]  # safe: the batch's k best all reach it
            edge_keys = lower if largest else -torch.cat([stats.edges, torch.tensor([math.inf])])
            above = edge_keys[edge_keys > floor[n]]
            assert above.numel() == 0 or kth < above.min()  # tight: within the bin


def test_histogram_floor_never_changes_the_kept_sets():
    """The same batches offered with and without the histogram's floor keep the same entries (ties, NaN, values on
    bin edges, one neuron far wider than the buffer cap)."""
    from neuron_core.stats import ExampleSet

    cfg = StatsConfig(top_k=6, bottom_k=4, n_samples=0)
    edges = hist_edges(cfg.hist_lo, cfg.hist_hi, cfg.hist_bits)
    g = torch.Generator().manual_seed(9)
    n_tok = 900
    acts = torch.round(torch.randn(n_tok, N, generator=g) * 4) / 4
    acts[:, 2] = edges[100 + torch.randint(0, 3, (n_tok,), generator=g)]  # three values, all on edges
    acts[::13, 7] = math.nan
    doc, pos = torch.arange(n_tok) // 30, torch.arange(n_tok) % 30
    ctx = torch.randint(0, 1000, (n_tok, W), generator=g, dtype=torch.int32)
    with_floor = SiteStats(N, config=cfg)
    _feed(with_floor, acts, doc, pos, ctx, [300, 17, 283, 300])
    for largest, name in ((True, "top"), (False, "bottom")):
        plain = ExampleSet(N, getattr(cfg, "top_k" if largest else "bottom_k"), W)
        for lo, hi in ((0, 300), (300, 317), (317, 600), (600, 900)):
            plain.offer_values(acts[lo:hi], doc[lo:hi], pos[lo:hi], ctx[lo:hi], largest=largest,
                               has_nan=bool(torch.isnan(acts[lo:hi]).any()))
        kept = getattr(with_floor, name)
        for field in ("keys", "values", "doc", "pos", "ctx"):
            assert torch.equal(getattr(plain, field), getattr(kept, field)), (name, field)


def test_blocked_cpu_reductions_equal_whole_batch(monkeypatch, data):
    """The CPU path reduces big batches in blocks of rows (moments, active counts, histogram): forced down to a few
    rows a block (blocks that do not divide the batch, a last block of one row), the statistics equal one block's
    (counts and histogram exactly, float64 moments to rounding) and a brute-force float64 computation."""
    from neuron_core import stats as stats_mod
    from neuron_core.stats import _moments_float64

    acts, doc, pos, ctx = data
    x = acts.double()
    for rows in (1, 7, 16, 2999, 3000, 5000):
        mean, m2 = _moments_float64(acts, rows)
        torch.testing.assert_close(mean, x.mean(0), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(m2, ((x - x.mean(0)) ** 2).sum(0), rtol=1e-11, atol=1e-9)
    cfg = StatsConfig(top_k=5, bottom_k=3, n_samples=4)
    whole = SiteStats(N, config=cfg)
    _feed(whole, acts, doc, pos, ctx, [1000, 999, 1001])
    monkeypatch.setattr(stats_mod, "_MOMENT_BLOCK_VALUES", 13 * N)  # 16 rows a block (the smallest)
    monkeypatch.setattr(stats_mod, "_HIST_BLOCK_VALUES", 1)
    blocked = SiteStats(N, config=cfg)
    _feed(blocked, acts, doc, pos, ctx, [1000, 999, 1001])
    assert stats_mod._block_rows(acts, stats_mod._MOMENT_BLOCK_VALUES) == 16
    assert torch.equal(whole.hist, blocked.hist) and torch.equal(whole.n_active, blocked.n_active)
    torch.testing.assert_close(blocked.mean, whole.mean, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(blocked.var, whole.var, rtol=1e-11, atol=1e-12)
    np.testing.assert_array_equal(blocked.frac_active.numpy(), (x > 0).double().mean(0).numpy())


def test_floor_narrows_a_warm_set_when_a_neuron_jumps(monkeypatch):
    """A warm set whose neuron's values jump (every value of the new batch beats the kept ones) takes the batch
    histogram's floor as its pre-filter (it is computed, once, for that batch), and keeps what a set offered the
    same batches without any floor keeps."""
    from neuron_core.stats import ExampleSet

    g = torch.Generator().manual_seed(21)
    sizes = [400, 400, 400]
    acts = torch.randn(sum(sizes), N, generator=g)
    acts[800:, 10:20] += 100.0  # ten neurons jump in the third batch
    acts[800:, 11] = torch.round(acts[800:, 11])  # ties among the jumped values
    doc, pos = torch.arange(1200) // 40, torch.arange(1200) % 40
    ctx = torch.randint(0, 1000, (1200, W), generator=g, dtype=torch.int32)
    cfg = StatsConfig(top_k=8, bottom_k=2, n_samples=0)
    calls = []
    real = SiteStats._batch_floors
    monkeypatch.setattr(SiteStats, "_batch_floors", lambda self, counts: calls.append(1) or real(self, counts))
    stats = SiteStats(N, config=cfg)
    for lo, hi in ((0, 400), (400, 800), (800, 1200)):
        calls.clear()
        stats.add(acts[lo:hi], doc[lo:hi], pos[lo:hi], ctx[lo:hi])
        assert len(calls) == (1 if lo in (0, 800) else 0), lo  # cold; jumped (2 x 8 x 48 < 10 x 400 + ...)
    plain = ExampleSet(N, 8, W)
    for lo, hi in ((0, 400), (400, 800), (800, 1200)):
        plain.offer_values(acts[lo:hi], doc[lo:hi], pos[lo:hi], ctx[lo:hi])
    for field in ("keys", "values", "doc", "pos", "ctx"):
        assert torch.equal(getattr(plain, field), getattr(stats.top, field)), field
    assert bool((stats.top.values[10:20] > 90).all())
