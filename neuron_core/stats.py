"""Streaming, mergeable per-neuron statistics in bounded memory.

Usage::

    stats = SiteStats(n_neurons=3072, device="cpu", config=StatsConfig(top_k=32))
    stats.add(acts, doc_ids, positions, contexts)   # acts [n_tokens, n_neurons]; call once per batch
    stats.mean, stats.var, stats.max                # float64 tensors [n_neurons]
    stats.merge(other)                              # equals having added both streams
    state = stats.state_dict(); SiteStats.from_state_dict(state)

One protocol for every piece (``add``, ``merge``, ``state_dict``/``load``, ``to(device)``): moments (Chan/Welford in
float64), min/max, fraction active, a signed log-spaced histogram (2**hist_bits bins per octave), and three kept
example sets: the top-k, the
bottom-k, and a uniform random sample of active tokens (a bottom-k sketch over a hash of (document, position), so
it merges exactly and does not depend on batching). Statistics don't know about hooks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from neuron_core.errors import ProfileMismatchError

__all__ = ["StatsConfig", "ExampleSet", "SiteStats", "hist_edges", "token_priority"]


@dataclass(frozen=True)
class StatsConfig:
    """Settings of the streaming statistics of one site."""

    top_k: int = 32
    """How many highest activations to keep per neuron (with their contexts)."""
    bottom_k: int = 8
    """How many lowest (most negative) activations to keep per neuron; 0 disables."""
    n_samples: int = 32
    """Size of the uniform random sample of active tokens per neuron (for quantile-sampled examples)."""
    active_threshold: float = 0.0
    """A neuron counts as active on a token when its activation is strictly above this value."""
    context_before: int = 12
    """Tokens of context kept before each example token."""
    context_after: int = 4
    """Tokens of context kept after each example token."""
    hist_lo: float = 2.0**-14
    """Smallest magnitude resolved by the histogram (rounded down to a power of two); |x| below it falls in the
    zero bin."""
    hist_hi: float = 2.0**14
    """Largest magnitude resolved by the histogram (a power of two); beyond it values fall in the overflow bins."""
    hist_bits: int = 2
    """The histogram has 2**hist_bits bins per octave (factor of 2) of magnitude, on each side of zero."""

    def __post_init__(self) -> None:
        for name in ("top_k", "bottom_k", "n_samples", "context_before", "context_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if not (0 < self.hist_lo < self.hist_hi) or not 0 <= self.hist_bits <= 6:
            raise ValueError("histogram needs 0 < hist_lo < hist_hi and 0 <= hist_bits <= 6")

    @property
    def context_width(self) -> int:
        return self.context_before + 1 + self.context_after


def _magnitude_codes(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Monotonic integer code of |x| for float32 x: exponent and top ``bits`` mantissa bits (2**bits per octave)."""
    return (x.view(torch.int32) & 0x7FFFFFFF) >> (23 - bits)


def hist_edges(lo: float, hi: float, bits: int) -> torch.Tensor:
    """Magnitude edges m_0 < ... < m_K of the signed log histogram (float32, exact binary values).

    Bins, in order: x <= -m_K, the K negative magnitude bins, the zero bin (|x| < m_0), the K positive magnitude bins,
    x >= m_K: 2K + 3 in all. A bin j on either side holds m_{j-1} <= |x| < m_j. Scale-free, so profiles of any model
    merge without agreeing on a range first, and computed with integer operations on the float's bits (cheap).
    """
    codes = _magnitude_codes(torch.tensor([lo, hi], dtype=torch.float32), bits)
    span = torch.arange(int(codes[0]), int(codes[1]) + 1, dtype=torch.int32)
    return (span << (23 - bits)).view(torch.float32)


def token_priority(doc_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """A deterministic pseudo-random priority in [0, 1) per (document, position); float64, same on every device."""
    x = (doc_ids.long() * 2654435761 + positions.long() * 40503 + 12345) % (1 << 31)
    for mult in (1103515245, 1664525, 22695477):  # products stay below 2**63: no overflow
        x = (x * mult + 1013904223) % (1 << 31)
        x = x ^ (x >> 13)
    return x.double() / float(1 << 31)


class ExampleSet:
    """Per neuron, the ``k`` entries with the largest key seen so far, with value, document, position, context.

    Tensors: keys [N, k] float64 sorted descending (-inf = empty slot); values [N, k] float32; doc, pos [N, k] int64
    (-1 = empty); ctx [N, k, W] int32 token ids around the example (-1 = outside the document).
    """

    def __init__(self, n_neurons: int, k: int, width: int, device: torch.device | str = "cpu") -> None:
        self.n_neurons, self.k, self.width = n_neurons, k, width
        self.keys = torch.full((n_neurons, k), -math.inf, dtype=torch.float64, device=device)
        self.values = torch.zeros((n_neurons, k), dtype=torch.float32, device=device)
        self.doc = torch.full((n_neurons, k), -1, dtype=torch.long, device=device)
        self.pos = torch.full((n_neurons, k), -1, dtype=torch.long, device=device)
        self.ctx = torch.full((n_neurons, k, width), -1, dtype=torch.int32, device=device)

    # -- update ---------------------------------------------------------------------------------------------
    def update(self, keys: torch.Tensor | None, values: torch.Tensor, doc: torch.Tensor, pos: torch.Tensor,
               ctx: torch.Tensor, *, row_keys: torch.Tensor | None = None,
               eligible: torch.Tensor | None = None) -> None:
        """Offer a batch. keys, values [n, N] (keys -inf where not eligible); doc, pos [n]; ctx [n, W].

        Instead of ``keys``, a per-token key ``row_keys`` [n] (float64) with an ``eligible`` mask [n, N] may be
        given (the random sample): the [n, N] key matrix is then only built during warm-up.
        """
        n = values.shape[0]
        if n == 0 or self.k == 0:
            return
        if row_keys is not None and eligible is None:
            raise ValueError("row_keys needs an eligible mask")
        # On GPU a dense top-k needs no host sync; on CPU the pre-filter is several times cheaper once warm.
        dense = values.device.type != "cpu"
        if not dense:
            # Pre-filter: only entries that beat the neuron's current k-th key can enter (rare after warm-up).
            thr = self.keys[:, -1]  # [N]
            if row_keys is not None:
                cand = (row_keys[:, None] > thr[None, :]) & eligible  # type: ignore[operator]  # [n, N]
            else:
                cand = keys > thr  # type: ignore[operator]
            count = int(cand.sum())
            if count == 0:
                return
            if count > n * self.n_neurons // 16:
                dense = True
        if not dense:
            # Candidates grouped by neuron without sorting: nonzero over the transposed mask is neuron-major.
            n_idx, t_idx = cand.T.nonzero(as_tuple=True)  # type: ignore[union-attr]
            counts = torch.bincount(n_idx, minlength=self.n_neurons)  # [N]
            rows = torch.nonzero(counts).flatten()  # [R]
            width = int(counts.max())
            if rows.numel() * width > 4 * count + self.n_neurons * self.k:
                dense = True  # a few neurons with very many candidates: a dense top-k is cheaper
        if dense and row_keys is not None:
            keys = torch.where(eligible, row_keys[:, None], -math.inf)  # type: ignore[arg-type]
        if dense:
            kk = min(self.k, n)
            top_keys, top_tok = torch.topk(keys, kk, dim=0)  # type: ignore[arg-type]  # [kk, N]
            self._merge_batch(None, top_keys.T.double(), top_tok.T, values, doc, pos, ctx)
            return
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(n_idx.numel(), device=values.device) - starts[n_idx]  # rank within its neuron
        row_of = torch.zeros(self.n_neurons, dtype=torch.long, device=values.device)
        row_of[rows] = torch.arange(rows.numel(), device=values.device)
        cand_keys = row_keys[t_idx] if row_keys is not None else keys[t_idx, n_idx].double()  # type: ignore[index]
        buf_keys = torch.full((rows.numel(), width), -math.inf, dtype=torch.float64, device=values.device)
        buf_tok = torch.zeros((rows.numel(), width), dtype=torch.long, device=values.device)
        buf_keys[row_of[n_idx], rank] = cand_keys  # [R, width]
        buf_tok[row_of[n_idx], rank] = t_idx
        self._merge_batch(rows, buf_keys, buf_tok, values, doc, pos, ctx)

    def _merge_batch(self, rows: torch.Tensor | None, new_keys: torch.Tensor, tok: torch.Tensor,
                     values: torch.Tensor, doc: torch.Tensor, pos: torch.Tensor, ctx: torch.Tensor) -> None:
        """Merge candidates new_keys/tok [R, c] (tok: token indices into the batch) into ``rows`` (None: all).

        Only the winners' values, positions and contexts are gathered, never those of every candidate."""
        k = self.k
        old_keys = self.keys if rows is None else self.keys[rows]  # [R, k]
        best_keys, sel = torch.topk(torch.cat([old_keys, new_keys], dim=1), k, dim=1)  # [R, k]
        from_new = sel >= k
        t = tok.gather(1, (sel - k).clamp(min=0))  # [R, k] batch token of each new winner
        old_sel = sel.clamp(max=k - 1)
        neuron = (torch.arange(self.n_neurons, device=values.device) if rows is None else rows)[:, None]
        new_vals = values[t, neuron.expand_as(t)].float()  # [R, k]
        empty = torch.isinf(best_keys) & (best_keys < 0)  # fewer than k eligible entries so far

        def pick(current: torch.Tensor, incoming: torch.Tensor) -> torch.Tensor:
            old = current if rows is None else current[rows]
            return torch.where(from_new, incoming, old.gather(1, old_sel))

        vals = pick(self.values, new_vals)
        doc_w = pick(self.doc, doc[t]).masked_fill(empty, -1)
        pos_w = pick(self.pos, pos[t]).masked_fill(empty, -1)
        old_ctx = self.ctx if rows is None else self.ctx[rows]
        ctx_w = torch.where(from_new[..., None], ctx[t].to(torch.int32),
                            old_ctx.gather(1, old_sel[..., None].expand(-1, -1, self.width)))
        if rows is None:
            self.keys, self.values, self.doc, self.pos, self.ctx = best_keys, vals, doc_w, pos_w, ctx_w
        else:
            self.keys[rows], self.values[rows], self.doc[rows], self.pos[rows], self.ctx[rows] = (
                best_keys, vals, doc_w, pos_w, ctx_w)

    def _merge(self, other: ExampleSet) -> None:
        """Keep the k best of this set and another one (all neurons)."""
        all_keys = torch.cat([self.keys, other.keys], dim=1)  # [N, 2k]
        best_keys, sel = torch.topk(all_keys, self.k, dim=1)  # [N, k]
        self.values = torch.cat([self.values, other.values], dim=1).gather(1, sel)
        empty = torch.isinf(best_keys) & (best_keys < 0)
        self.doc = torch.cat([self.doc, other.doc], dim=1).gather(1, sel).masked_fill(empty, -1)
        self.pos = torch.cat([self.pos, other.pos], dim=1).gather(1, sel).masked_fill(empty, -1)
        ctx_all = torch.cat([self.ctx, other.ctx], dim=1)  # [N, 2k, W]
        self.ctx = ctx_all.gather(1, sel[..., None].expand(-1, -1, self.width))
        self.keys = best_keys

    # -- combine, persist -----------------------------------------------------------------------------------
    def merge(self, other: ExampleSet) -> None:
        if (other.n_neurons, other.k, other.width) != (self.n_neurons, self.k, self.width):
            raise ProfileMismatchError("example sets differ in neurons, k or context width")
        self._merge(other.to(self.values.device) if other.values.device != self.values.device else other)

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.keys": self.keys, f"{prefix}.values": self.values, f"{prefix}.doc": self.doc,
                f"{prefix}.pos": self.pos, f"{prefix}.ctx": self.ctx}

    def load(self, state: dict[str, torch.Tensor], prefix: str) -> None:
        dev = self.values.device
        for name in ("keys", "values", "doc", "pos", "ctx"):
            setattr(self, name, state[f"{prefix}.{name}"].to(dev).clone())
        self.k = self.keys.shape[1]

    def to(self, device: torch.device | str) -> ExampleSet:
        for name in ("keys", "values", "doc", "pos", "ctx"):
            setattr(self, name, getattr(self, name).to(device))
        return self


class SiteStats:
    """All streaming statistics of one site (see the module docstring). Tensors live on ``device``."""

    def __init__(self, n_neurons: int, *, device: torch.device | str = "cpu",
                 config: StatsConfig | None = None) -> None:
        self.config = config or StatsConfig()
        self.n_neurons = n_neurons
        self.device = torch.device(device)
        cfg, dev, f64 = self.config, self.device, torch.float64
        self.count = torch.zeros(n_neurons, dtype=f64, device=dev)
        self.mean = torch.zeros(n_neurons, dtype=f64, device=dev)
        self.m2 = torch.zeros(n_neurons, dtype=f64, device=dev)
        self.min = torch.full((n_neurons,), math.inf, dtype=f64, device=dev)
        self.max = torch.full((n_neurons,), -math.inf, dtype=f64, device=dev)
        self.n_active = torch.zeros(n_neurons, dtype=torch.long, device=dev)
        self.n_nonfinite = torch.zeros(n_neurons, dtype=torch.long, device=dev)
        magnitudes = hist_edges(cfg.hist_lo, cfg.hist_hi, cfg.hist_bits)  # [K + 1]
        self._code_lo = int(_magnitude_codes(magnitudes[:1], cfg.hist_bits)[0])
        self._k_bins = magnitudes.numel() - 1
        self.edges = torch.cat([-magnitudes.flip(0), magnitudes]).to(dev)  # [2K + 2] signed, increasing
        self.n_bins = self.edges.numel() + 1
        self.hist = torch.zeros((n_neurons, self.n_bins), dtype=torch.long, device=dev)
        width = cfg.context_width
        self.top = ExampleSet(n_neurons, cfg.top_k, width, dev)
        self.bottom = ExampleSet(n_neurons, cfg.bottom_k, width, dev)
        self.sample = ExampleSet(n_neurons, cfg.n_samples, width, dev)
        self._offsets = torch.arange(n_neurons, device=dev) * self.n_bins  # [N]

    # -- streaming ------------------------------------------------------------------------------------------
    def add(self, acts: torch.Tensor, doc: torch.Tensor, pos: torch.Tensor, ctx: torch.Tensor) -> None:
        """acts [n, N] (any float dtype, on this device); doc, pos [n] int64; ctx [n, W] int32."""
        if acts.dim() != 2 or acts.shape[1] != self.n_neurons:
            raise ProfileMismatchError(f"expected activations [n, {self.n_neurons}], got {tuple(acts.shape)}")
        n = acts.shape[0]
        if n == 0:
            return
        x = acts.to(torch.float64)  # [n, N]; statistics accumulate in float64 whatever the model's dtype
        var_b, mean_b = torch.var_mean(x, dim=0, correction=0)  # one fused pass: [N], [N]
        clean = True
        if self.device.type == "cpu":
            clean = bool(torch.isfinite(mean_b).all())  # a mean is finite iff every value is (no float64 overflow)
        else:
            clean = False  # on GPU avoid the host sync: always take the masked path
        if clean:
            nb = torch.full_like(mean_b, float(n))
            m2_b = var_b * n
            bmin, bmax = acts.amin(0).double(), acts.amax(0).double()
            finite_vals = acts
        else:
            finite = torch.isfinite(acts)  # [n, N]
            self.n_nonfinite += (~finite).sum(0)
            xz = torch.where(finite, x, 0.0)
            nb = finite.sum(0).double()
            mean_b = xz.sum(0) / nb.clamp(min=1)
            m2_b = torch.where(finite, (x - mean_b) ** 2, 0.0).sum(0)
            bmin = torch.where(finite, x, math.inf).amin(0)
            bmax = torch.where(finite, x, -math.inf).amax(0)
            finite_vals = torch.where(finite, acts, torch.nan)
        # Chan et al. merge of (count, mean, M2) in float64.
        total = self.count + nb
        safe = total.clamp(min=1)
        delta = mean_b - self.mean
        self.mean = self.mean + delta * nb / safe
        self.m2 = self.m2 + m2_b + delta * delta * self.count * nb / safe
        self.count = total
        self.min = torch.minimum(self.min, bmin)
        self.max = torch.maximum(self.max, bmax)
        active = finite_vals > self.config.active_threshold  # [n, N]; NaN compares False
        self.n_active += active.sum(0)
        self._add_histogram(finite_vals, has_nan=not clean)
        # Examples: keys are -inf where not eligible (only the masked path has NaN to replace).
        vals32 = finite_vals.float()
        if not clean:
            vals32 = torch.nan_to_num(vals32, nan=-math.inf)
        self.top.update(vals32, vals32, doc, pos, ctx)
        if self.bottom.k:
            neg = -vals32
            if not clean:  # left-out values (-inf in vals32) must stay out of the bottom set as well
                neg = torch.where(torch.isinf(vals32), -math.inf, neg)
            self.bottom.update(neg, vals32, doc, pos, ctx)
        if self.sample.k:
            prio = -token_priority(doc, pos).to(acts.device)  # [n]; larger key = smaller priority
            self.sample.update(None, vals32, doc, pos, ctx, row_keys=prio, eligible=active)

    def _add_histogram(self, acts: torch.Tensor, has_nan: bool) -> None:
        """acts [n, N]; with ``has_nan``, NaN marks values to leave out."""
        vals = acts if acts.dtype == torch.float32 else acts.float()
        k = self._k_bins
        z = (_magnitude_codes(vals, self.config.hist_bits) - (self._code_lo - 1)).clamp_(0, k + 1)  # [n, N]
        idx = torch.where(vals.view(torch.int32) < 0, (k + 1) - z, (k + 1) + z)  # signed bin, zero bin = k + 1
        flat = (idx + self._offsets).flatten()
        size = self.n_neurons * self.n_bins
        if has_nan:
            flat = torch.where(torch.isnan(vals).flatten(), size, flat)  # left out: one extra slot, dropped
        counts = torch.bincount(flat, minlength=size + 1)[:size]
        self.hist += counts.view(self.n_neurons, self.n_bins)

    # -- readouts -------------------------------------------------------------------------------------------
    @property
    def var(self) -> torch.Tensor:
        """Population variance (float64), NaN where a neuron has no finite values."""
        return torch.where(self.count > 0, self.m2 / self.count.clamp(min=1), torch.nan)

    @property
    def std(self) -> torch.Tensor:
        return self.var.sqrt()

    @property
    def frac_active(self) -> torch.Tensor:
        return torch.where(self.count > 0, self.n_active.double() / self.count.clamp(min=1), torch.nan)

    def bin_centers(self) -> torch.Tensor:
        """A representative value of every histogram bin (geometric middle; 0 for the zero bin)."""
        e = self.edges.double().cpu()
        mids = torch.empty(self.n_bins, dtype=torch.float64)
        mids[0], mids[-1] = e[0] * 1.5, e[-1] * 1.5
        lo, hi = e[:-1], e[1:]
        geo = torch.sign(lo + hi) * torch.sqrt((lo * hi).abs())
        mids[1:-1] = torch.where(lo * hi > 0, geo, 0.0)  # the zero bin straddles 0
        return mids

    def quantiles(self, qs: list[float]) -> torch.Tensor:
        """Approximate per-neuron quantiles from the histogram: [N, len(qs)] float64 (bin resolution)."""
        cdf = self.hist.double().cumsum(1).cpu()  # [N, B]
        total = cdf[:, -1:].clamp(min=1)
        centers = self.bin_centers()
        out = torch.empty((self.n_neurons, len(qs)), dtype=torch.float64)
        for j, q in enumerate(qs):
            idx = torch.searchsorted(cdf / total, torch.full((self.n_neurons, 1), q, dtype=torch.float64))
            out[:, j] = centers[idx.clamp(max=self.n_bins - 1).flatten()]
        return out

    # -- combine, persist -----------------------------------------------------------------------------------
    def merge(self, other: SiteStats) -> SiteStats:
        """Fold ``other`` into this (in place) and return self; the result equals having added both streams."""
        if other.n_neurons != self.n_neurons or other.config != self.config:
            raise ProfileMismatchError("cannot merge statistics with different neurons or settings "
                                       f"({self.n_neurons} vs {other.n_neurons}; {self.config} vs {other.config})")
        o = other.to(self.device) if other.device != self.device else other
        total = self.count + o.count
        safe = total.clamp(min=1)
        delta = o.mean - self.mean
        self.mean = self.mean + delta * o.count / safe
        self.m2 = self.m2 + o.m2 + delta * delta * self.count * o.count / safe
        self.count = total
        self.min = torch.minimum(self.min, o.min)
        self.max = torch.maximum(self.max, o.max)
        self.n_active += o.n_active
        self.n_nonfinite += o.n_nonfinite
        self.hist += o.hist
        self.top.merge(o.top)
        self.bottom.merge(o.bottom)
        self.sample.merge(o.sample)
        return self

    _MOMENTS = ("count", "mean", "m2", "min", "max", "n_active", "n_nonfinite", "hist")

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        p = f"{prefix}." if prefix else ""
        state = {f"{p}{name}": getattr(self, name) for name in self._MOMENTS}
        state.update(self.top.state_dict(f"{p}top"))
        state.update(self.bottom.state_dict(f"{p}bottom"))
        state.update(self.sample.state_dict(f"{p}sample"))
        return state

    def config_dict(self) -> dict[str, Any]:
        return {"n_neurons": self.n_neurons, **asdict(self.config)}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], config: dict[str, Any], prefix: str = "",
                        device: torch.device | str = "cpu") -> SiteStats:
        cfg = dict(config)
        n = int(cfg.pop("n_neurons"))
        stats = cls(n, device=device, config=StatsConfig(**cfg))
        p = f"{prefix}." if prefix else ""
        for name in cls._MOMENTS:
            setattr(stats, name, state[f"{p}{name}"].to(stats.device).clone())
        stats.top.load(state, f"{p}top")
        stats.bottom.load(state, f"{p}bottom")
        stats.sample.load(state, f"{p}sample")
        return stats

    def to(self, device: torch.device | str) -> SiteStats:
        self.device = torch.device(device)
        for name in self._MOMENTS:
            setattr(self, name, getattr(self, name).to(self.device))
        self.edges = self.edges.to(self.device)
        self._offsets = self._offsets.to(self.device)
        for ex in (self.top, self.bottom, self.sample):
            ex.to(self.device)
        return self
