"""Streaming, mergeable per-neuron statistics in bounded memory.

Usage::

    stats = SiteStats(n_neurons=3072, device="cpu", config=StatsConfig(top_k=32))
    stats.add(acts, doc_ids, positions, contexts)   # acts [n_tokens, n_neurons]; call once per batch
    stats.mean, stats.var, stats.max                # float64 tensors [n_neurons]
    stats.merge(other)                              # equals having added both streams
    state = stats.state_dict(); SiteStats.from_state_dict(state)

One protocol for every piece (``add``, ``merge``, ``state_dict``/``load``, ``to(device)``): moments (Chan/Welford in
float64), min/max, fraction active, a signed log-spaced histogram (2**hist_bits bins per octave), and four kept
example sets: per neuron the top-k, the bottom-k and a uniform random sample of active tokens, and for the whole site
a reservoir of random tokens (the samples are bottom-k sketches over a hash of (document, position), so they merge
exactly and do not depend on batching). Statistics don't know about hooks.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from neuron_core import stats_device
from neuron_core._statbits import (
    LOW_BITS,
    bin_offset,
    float32_floor,
    hist_edges,
    magnitude_codes,
    tie_broken,
    token_hash,
    token_priority,
)
from neuron_core.batching import to_device
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
    n_reservoir: int = 512
    """Size of the uniform random sample of the site's tokens, whatever any neuron does (the raw material of the
    polysemantic detector's null); 0 disables."""
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
        for name in ("top_k", "bottom_k", "n_samples", "n_reservoir", "context_before", "context_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if not (0 < self.hist_lo < self.hist_hi) or not 0 <= self.hist_bits <= 6:
            raise ValueError("histogram needs 0 < hist_lo < hist_hi and 0 <= hist_bits <= 6")

    @property
    def context_width(self) -> int:
        return self.context_before + 1 + self.context_after


_FLOOR_AFTER = 2
"""An example set's pre-filter also applies the batch histogram's floor when more than this many candidates per
neuron (times k) pass its own threshold."""

_GROUP_BY_TRANSPOSE = 4
"""Above this many candidates per neuron on average, a neuron-major ``nonzero`` (one transposed copy of the mask)
is cheaper than a row-major one followed by a sort by neuron."""


def _nonzero_by_neuron(cand: torch.Tensor, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(neuron, row, grouped) indices of a mask [rows, N]'s True entries. Rows ascend within a neuron either way;
    ``grouped`` says the entries also come sorted by neuron. ``count`` (the number of True entries) picks the
    cheaper way; without it the mask is read in row-major order."""
    if count is not None and count > _GROUP_BY_TRANSPOSE * cand.shape[1]:
        n_idx, r_idx = cand.T.contiguous().nonzero(as_tuple=True)
        return n_idx, r_idx, True
    r_idx, n_idx = cand.nonzero(as_tuple=True)
    return n_idx, r_idx, False


class ExampleSet:
    """Per neuron, the ``k`` entries with the largest key seen so far, with value, document, position, context.

    Tensors (read them as attributes; they come sorted by key, descending): keys [N, k] float64 (-inf = empty slot);
    values [N, k] float32; doc, pos [N, k] int64 (-1 = empty); ctx [N, k, W] int32 token ids around the example
    (-1 = outside the document).

    While streaming, the slots are kept unsorted: a new entry overwrites the slot of the entry it evicts, so a batch
    writes only its winners (a few per neuron once warm) and never rebuilds the [N, k, W] contexts. Reading an
    attribute sorts once.

    Two ways in: ``offer_values`` / ``offer_ranked`` pre-filter against each neuron's current k-th key (they read
    counts back to the host: the CPU path); the accelerator path (:mod:`neuron_core.stats_device`) reads the raw
    slots (``fields``), merges fixed-shape candidates for every neuron without waiting for the device, and writes
    the result back (``replace``).
    """

    _FIELDS = ("keys", "values", "doc", "pos", "ctx")

    def __init__(self, n_neurons: int, k: int, width: int, device: torch.device | str = "cpu") -> None:
        self.n_neurons, self.k, self.width = n_neurons, k, width
        self._keys = torch.full((n_neurons, k), -math.inf, dtype=torch.float64, device=device)
        self._values = torch.zeros((n_neurons, k), dtype=torch.float32, device=device)
        self._doc = torch.full((n_neurons, k), -1, dtype=torch.long, device=device)
        self._pos = torch.full((n_neurons, k), -1, dtype=torch.long, device=device)
        self._ctx = torch.full((n_neurons, k, width), -1, dtype=torch.int32, device=device)
        self._sorted = True
        self._empty = True  # nothing kept yet (the first write skips the merge)

    # -- sorted read access ---------------------------------------------------------------------------------
    def _ensure_sorted(self) -> None:
        if self._sorted:
            return
        keys, order = torch.sort(self._keys, dim=1, descending=True, stable=True)
        self._values = self._values.gather(1, order)
        self._doc = self._doc.gather(1, order)
        self._pos = self._pos.gather(1, order)
        self._ctx = self._ctx.gather(1, order[..., None].expand(-1, -1, self.width))
        self._keys, self._sorted = keys, True

    keys = property(lambda self: (self._ensure_sorted(), self._keys)[1])
    values = property(lambda self: (self._ensure_sorted(), self._values)[1])
    doc = property(lambda self: (self._ensure_sorted(), self._doc)[1])
    pos = property(lambda self: (self._ensure_sorted(), self._pos)[1])
    ctx = property(lambda self: (self._ensure_sorted(), self._ctx)[1])

    @property
    def threshold(self) -> torch.Tensor:
        """[N] float64: the key an entry must beat to enter (the smallest kept key; -inf while not full)."""
        return self._keys.amin(1)

    # -- update ---------------------------------------------------------------------------------------------
    def offer_values(self, values: torch.Tensor, doc: torch.Tensor, pos: torch.Tensor, ctx: torch.Tensor, *,
                     largest: bool = True, has_nan: bool = False,
                     floor: Callable[[], torch.Tensor] | None = None) -> None:
        """Offer a batch keyed by its values: values [n, N] float32 (NaN = left out); doc, pos [n]; ctx [n, W].

        ``largest=False`` keeps the most negative values (the key is -value). ``floor``, optional, computes [N]
        float32: per neuron a key that each of the batch's k best entries reaches (:class:`SiteStats` reads it off
        the batch's histogram). It is called only when the set's own threshold lets through many more entries than
        the set can keep (a cold set, or a neuron whose values jumped), narrows the pre-filter to about the batch's
        own k best, and never changes the result."""
        n = values.shape[0]
        if n == 0 or self.k == 0:
            return
        # Pre-filter: only entries that can beat the neuron's current k-th key, and that reach the batch's own
        # k-th key, may enter (rare once warm). The keys came from float32 values (plus tie-break bits), so
        # comparing in float32 is exact; ties at the threshold stay candidates (the tie-break decides); NaN
        # compares False.
        thr = float32_floor(self.threshold)
        cand, count = None, 0
        if not self._empty:  # an empty set lets every value through: take the floor straight away
            cand = values >= thr if largest else values <= -thr
            count = int(torch.count_nonzero(cand))
        if floor is not None and (cand is None or count > _FLOOR_AFTER * self.k * self.n_neurons):
            thr = torch.maximum(thr, floor())
            cand = None
        if cand is None:
            cand = values >= thr if largest else values <= -thr
            count = int(torch.count_nonzero(cand))
        if count == 0:
            return
        if count > n * self.n_neurons // 8:
            self._offer_dense(values if largest else -values, has_nan, values, doc, pos, ctx)
            return
        n_idx, t_idx, grouped = _nonzero_by_neuron(cand, count)
        cand_keys = values[t_idx, n_idx].double()
        low_bits = (token_hash(doc, pos) & LOW_BITS)[t_idx]
        cand_keys = tie_broken(cand_keys if largest else -cand_keys, low_bits)
        self._offer_sparse(n_idx, t_idx, cand_keys, values, doc, pos, ctx, grouped=grouped)

    def offer_ranked(self, row_keys: torch.Tensor, eligible: torch.Tensor, values: torch.Tensor, doc: torch.Tensor,
                     pos: torch.Tensor, ctx: torch.Tensor) -> None:
        """Offer a batch keyed per token: row_keys [n] float64, the same for every neuron, and an ``eligible``
        mask [n, N] (the random sample: the key is a hash of the token's place, eligible = active)."""
        n = values.shape[0]
        if n == 0 or self.k == 0:
            return
        thr = self.threshold
        order = torch.argsort(row_keys, descending=True, stable=True)
        skeys = row_keys[order]
        n_live = int(torch.count_nonzero(skeys > thr.min()))  # tokens that beat at least one neuron's threshold
        # Tokens in key order: a neuron's candidates are eligible tokens in a prefix of that order. Take blocks of
        # growing size and, after each, keep only the neurons whose threshold the next token can still beat.
        start, step, cols = 0, max(2 * self.k, 32), None
        while start < n_live:
            stop = min(n_live, start + step)
            rows = order[start:stop]
            elig = eligible[rows] if cols is None else eligible[rows][:, cols]  # [b, C]
            thr_c = thr if cols is None else thr[cols]
            cand = elig & (skeys[start:stop, None] > thr_c[None, :])
            c_idx, i_idx, grouped = _nonzero_by_neuron(cand, int(torch.count_nonzero(cand)))
            if i_idx.numel():
                n_idx = c_idx if cols is None else cols[c_idx]  # cols is increasing: still grouped
                self._offer_sparse(n_idx, rows[i_idx], skeys[start + i_idx], values, doc, pos, ctx,
                                   grouped=grouped, key_ordered=True)
                thr = self.threshold
            start, step = stop, step * 4
            if start < n_live:
                cols = torch.nonzero(thr < skeys[start]).flatten()
                if cols.numel() == 0:
                    break

    def _offer_dense(self, keys: torch.Tensor, has_nan: bool, values: torch.Tensor, doc: torch.Tensor,
                     pos: torch.Tensor, ctx: torch.Tensor) -> None:
        """CPU, when many entries pass the pre-filter: the batch's k-th largest value per neuron becomes the
        threshold and every value reaching it (ties included) goes through the sparse path, where the tie-break
        decides, so the kept set never depends on batching. keys [n, N] float32 values (or their negation)."""
        if has_nan:
            keys = torch.nan_to_num(keys, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
        kk = min(self.k, keys.shape[0])
        # row-wise top-k on a contiguous transposed copy is faster on CPU
        top_keys = torch.topk(keys.T.contiguous(), kk, dim=1, sorted=False).values  # [N, kk]
        cand = keys >= top_keys.amin(1)  # [n, N]: the batch's top-kk of each neuron and its ties
        cand &= keys > -math.inf
        n_idx, t_idx, grouped = _nonzero_by_neuron(cand, int(torch.count_nonzero(cand)))
        low_bits = (token_hash(doc, pos) & LOW_BITS)[t_idx]
        cand_keys = tie_broken(keys[t_idx, n_idx].double(), low_bits, finite=not has_nan)
        self._offer_sparse(n_idx, t_idx, cand_keys, values, doc, pos, ctx, grouped=grouped)

    def _offer_sparse(self, n_idx: torch.Tensor, t_idx: torch.Tensor, cand_keys: torch.Tensor,
                      values: torch.Tensor, doc: torch.Tensor, pos: torch.Tensor, ctx: torch.Tensor,
                      grouped: bool = False, key_ordered: bool = False) -> None:
        """Candidates given as (neuron, batch token, key) triples: grouped by neuron into [R, width], merged.

        ``grouped``: the triples come sorted by neuron. ``key_ordered``: the triples of a neuron come in
        descending key order (a stable grouping keeps it)."""
        dev = values.device
        if not grouped:
            order = torch.argsort(n_idx, stable=True)
            n_idx, t_idx, cand_keys = n_idx[order], t_idx[order], cand_keys[order]
        counts = torch.bincount(n_idx, minlength=self.n_neurons)  # [N]
        rows = torch.nonzero(counts).flatten()  # [R]
        width = int(counts.max())
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(n_idx.numel(), device=dev) - starts[n_idx]  # rank within its neuron
        # Only a neuron's k best candidates can enter: cap the buffer when that is free (key order) or when the
        # buffer would be wide (else the merge's top-k over k + width columns picks them: cheaper than sorting).
        if width > self.k and (key_ordered or width > max(4 * self.k, 128)):
            keep = rank < self.k
            if not bool(keep.all()):
                if not key_ordered:
                    # sort each neuron's candidates by key (descending) first, so the cap keeps its best ones
                    order = torch.argsort(cand_keys, descending=True, stable=True)
                    order = order[torch.argsort(n_idx[order], stable=True)]
                    n_idx, t_idx, cand_keys = n_idx[order], t_idx[order], cand_keys[order]
                # rank depends only on the grouping, unchanged by the re-sort
                n_idx, t_idx, cand_keys, rank = n_idx[keep], t_idx[keep], cand_keys[keep], rank[keep]
            width = self.k
        row_of = torch.zeros(self.n_neurons, dtype=torch.long, device=dev)
        row_of[rows] = torch.arange(rows.numel(), device=dev)
        buf_keys = torch.full((rows.numel(), width), -math.inf, dtype=torch.float64, device=dev)
        buf_tok = torch.zeros((rows.numel(), width), dtype=torch.long, device=dev)
        buf_keys[row_of[n_idx], rank] = cand_keys
        buf_tok[row_of[n_idx], rank] = t_idx
        self._insert(rows, buf_keys, buf_tok, values, doc, pos, ctx)

    def _insert(self, rows: torch.Tensor | None, new_keys: torch.Tensor, tok: torch.Tensor, values: torch.Tensor,
                doc: torch.Tensor, pos: torch.Tensor, ctx: torch.Tensor) -> None:
        """Merge candidates new_keys/tok [R, c] (tok: token indices into the batch) into ``rows`` (None: all).

        Each new winner overwrites the slot of an entry it evicts; only the winners' values, places and contexts
        are gathered and written."""
        k = self.k
        if self._empty:  # the first write: every slot is free, the winners are the k best candidates
            if new_keys.shape[1] > k:
                best, sel = torch.topk(new_keys, k, dim=1, sorted=False)  # [R, k]
            else:
                best, sel = new_keys, None
            win_r, free_slot = (best > -math.inf).nonzero(as_tuple=True)  # padding never enters
            col = free_slot if sel is None else sel[win_r, free_slot]
            key = best[win_r, free_slot]
        else:
            old = self._keys if rows is None else self._keys[rows]  # [R, k]
            _, sel = torch.topk(torch.cat([old, new_keys], dim=1), k, dim=1, sorted=False)  # [R, k]
            won = sel >= k
            kept = torch.zeros((sel.shape[0], k + 1), dtype=torch.bool, device=sel.device)
            kept.scatter_(1, torch.where(won, k, sel), True)  # column k collects the new winners
            # Row-major order pairs the j-th freed slot of a row with the j-th new winner of the same row: a row
            # has exactly as many of each.
            _, free_slot = (~kept[:, :k]).nonzero(as_tuple=True)
            win_r, win_j = won.nonzero(as_tuple=True)
            col = sel[win_r, win_j] - k
            key = new_keys[win_r, col]
            real = key > -math.inf  # padding (or -inf keys) only "wins" over empty slots: nothing to write
            if not bool(real.all()):
                free_slot, win_r, col, key = free_slot[real], win_r[real], col[real], key[real]
        if win_r.numel() == 0:
            return
        t = tok[win_r, col]
        neuron = win_r if rows is None else rows[win_r]
        # one flat index per written slot: index_copy_ is cheaper than two-index assignment (contexts above all)
        slot = neuron * k + free_slot
        self._keys.view(-1).index_copy_(0, slot, key)
        self._values.view(-1).index_copy_(0, slot, values[t, neuron].float())
        self._doc.view(-1).index_copy_(0, slot, doc.index_select(0, t))
        self._pos.view(-1).index_copy_(0, slot, pos.index_select(0, t))
        self._ctx.view(-1, self.width).index_copy_(0, slot, ctx.index_select(0, t).to(torch.int32))
        self._sorted = self._empty = False

    def fields(self) -> tuple[torch.Tensor, ...]:
        """The raw slots (keys, values, doc, pos, ctx), in slot order (not sorted)."""
        return self._keys, self._values, self._doc, self._pos, self._ctx

    def replace(self, fields: tuple[torch.Tensor, ...]) -> None:
        """Take new slots (keys, values, doc, pos, ctx), sorted by key, descending."""
        self._keys, self._values, self._doc, self._pos, self._ctx = fields
        self._sorted, self._empty = True, False

    def _merge(self, other: ExampleSet) -> None:
        """Keep the k best of this set and another one (all neurons)."""
        all_keys = torch.cat([self._keys, other._keys], dim=1)  # [N, 2k]
        best_keys, sel = torch.topk(all_keys, self.k, dim=1)  # [N, k]
        empty = torch.isinf(best_keys) & (best_keys < 0)
        self._values = torch.cat([self._values, other._values], dim=1).gather(1, sel).masked_fill(empty, 0.0)
        self._doc = torch.cat([self._doc, other._doc], dim=1).gather(1, sel).masked_fill(empty, -1)
        self._pos = torch.cat([self._pos, other._pos], dim=1).gather(1, sel).masked_fill(empty, -1)
        ctx_all = torch.cat([self._ctx, other._ctx], dim=1)  # [N, 2k, W]
        self._ctx = ctx_all.gather(1, sel[..., None].expand(-1, -1, self.width)).masked_fill(empty[..., None], -1)
        self._keys, self._sorted, self._empty = best_keys, True, False

    # -- combine, persist -----------------------------------------------------------------------------------
    def merge(self, other: ExampleSet) -> None:
        if (other.n_neurons, other.k, other.width) != (self.n_neurons, self.k, self.width):
            raise ProfileMismatchError("example sets differ in neurons, k or context width")
        self._merge(other.to(self._values.device) if other._values.device != self._values.device else other)

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        self._ensure_sorted()
        return {f"{prefix}.{name}": getattr(self, f"_{name}") for name in self._FIELDS}

    def load(self, state: dict[str, torch.Tensor], prefix: str) -> None:
        dev = self._values.device
        for name in self._FIELDS:
            setattr(self, f"_{name}", state[f"{prefix}.{name}"].to(dev).clone(memory_format=torch.contiguous_format))
        self.k, self._sorted, self._empty = self._keys.shape[1], False, False

    def to(self, device: torch.device | str) -> ExampleSet:
        for name in self._FIELDS:
            setattr(self, f"_{name}", getattr(self, f"_{name}").to(device))
        return self


_LITTLE_ENDIAN = sys.byteorder == "little"


@functools.lru_cache(maxsize=16)
def _bin_table(code_lo: int, k_bins: int, bits: int, device: str = "cpu") -> torch.Tensor:
    """[65536] int32 on ``device``: :func:`bin_offset` of every float32 whose top 16 bits (read as an unsigned
    number) are the index (exact: the offset reads only the top 9 + ``bits`` <= 15 bits). Shared: never modify."""
    patterns = (torch.arange(65536, dtype=torch.int64) << 16).to(torch.int32)  # wraps: the top half has the sign bit
    return to_device(bin_offset(patterns.view(torch.float32), code_lo, k_bins, bits), device)


_MOMENT_BLOCK_VALUES = 1 << 18
"""The CPU path reduces a batch in blocks of rows of about this many values (2 MiB as float64: in cache), so the
float64 moments never write a float64 copy of the batch to memory: on 2 cores, 8,192 x 1,536 values, mean, M2 and
the active counts took 57 ms whole-batch and 10 to 25 ms in blocks (``benchmarks/NOTES.md``)."""
_HIST_BLOCK_VALUES = 1 << 17
"""The histogram's bin lookup works in blocks of about this many values (its int32 intermediates stay in cache)."""


def _block_rows(x: torch.Tensor, values: int) -> int:
    """Rows per block for a blocked pass over x [n, N]: about ``values`` values on CPU; all rows elsewhere (on an
    accelerator one kernel over the whole batch beats many small ones)."""
    if x.device.type != "cpu":
        return max(x.shape[0], 1)
    return max(16, values // max(x.shape[1], 1))


def _moments_float64(x: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Column means and sums of squared deviations (two-pass M2) of x [n, N], in float64 (x promoted exactly),
    block by block through one float64 scratch of ``rows`` rows: no float64 copy of the whole batch."""
    n, width = x.shape
    scratch = torch.empty((min(rows, n), width), dtype=torch.float64, device=x.device)
    total = torch.zeros(width, dtype=torch.float64, device=x.device)
    for i in range(0, n, rows):
        block = x[i:i + rows]
        total += scratch[:block.shape[0]].copy_(block).sum(0)
    mean = total / n
    m2 = torch.zeros(width, dtype=torch.float64, device=x.device)
    for i in range(0, n, rows):
        block = x[i:i + rows]
        m2 += torch.sub(block, mean, out=scratch[:block.shape[0]]).square_().sum(0)
    return mean, m2


def _count_rows(mask: torch.Tensor, rows: int) -> torch.Tensor:
    """Column counts of a bool mask [n, N] (int64), block by block (a whole-mask sum converts it first: 4x slower)."""
    total = torch.zeros(mask.shape[1], dtype=torch.long, device=mask.device)
    for i in range(0, mask.shape[0], rows):
        total += mask[i:i + rows].sum(0)
    return total


class SiteStats:
    """All streaming statistics of one site (see the module docstring). Tensors live on ``device``."""

    def __init__(self, n_neurons: int, *, device: torch.device | str = "cpu",
                 config: StatsConfig | None = None, sync_free: bool | None = None) -> None:
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
        self._code_lo = int(magnitude_codes(magnitudes[:1], cfg.hist_bits)[0])
        self._k_bins = magnitudes.numel() - 1
        self.edges = to_device(torch.cat([-magnitudes.flip(0), magnitudes]), dev)  # [2K + 2] signed, increasing
        self.n_bins = self.edges.numel() + 1
        inf = torch.full((1,), math.inf, device=dev)
        self._bin_lower = torch.cat([-inf, self.edges])  # [bins] every value of a bin is >= its lower edge
        self._bin_upper = torch.cat([self.edges, inf])  # ... and <= its upper edge
        self.hist = torch.zeros((n_neurons, self.n_bins), dtype=torch.long, device=dev)
        width = cfg.context_width
        # sync_free (default: on for accelerators): no host sync per batch (fixed shapes, dense example updates, the
        # NaN-aware moments every time) instead of the CPU's check-then-pre-filter path.
        self.sync_free = self.device.type != "cpu" if sync_free is None else sync_free
        self.top = ExampleSet(n_neurons, cfg.top_k, width, dev)
        self.bottom = ExampleSet(n_neurons, cfg.bottom_k, width, dev)
        self.sample = ExampleSet(n_neurons, cfg.n_samples, width, dev)
        self.tokens = ExampleSet(1, cfg.n_reservoir, width, dev)  # the site's token reservoir (one row)
        index_dtype = torch.int32 if n_neurons * self.n_bins < 2**31 - 1 else torch.int64
        self._bin_base = (torch.arange(n_neurons, device=dev) * self.n_bins + self._k_bins + 1).to(index_dtype)

    # -- streaming ------------------------------------------------------------------------------------------
    def add(self, acts: torch.Tensor, doc: torch.Tensor, pos: torch.Tensor, ctx: torch.Tensor) -> None:
        """acts [n, N] (any float dtype, on this device); doc, pos [n] int64; ctx [n, W] int32."""
        if acts.dim() != 2 or acts.shape[1] != self.n_neurons:
            raise ProfileMismatchError(f"expected activations [n, {self.n_neurons}], got {tuple(acts.shape)}")
        n = acts.shape[0]
        if n == 0:
            return
        self._offer_tokens(doc, pos, ctx)
        if self.sync_free:
            stats_device.add_sync_free(self, acts, doc, pos, ctx)
            return
        vals = acts if acts.dtype == torch.float32 else acts.float()  # exact for half types; all paths read it
        rows = _block_rows(vals, _MOMENT_BLOCK_VALUES)
        mean_b, m2_b = _moments_float64(vals, rows)
        # One check decides the path: a mean is finite iff every value is (no float64 overflow from float32).
        clean = bool(torch.isfinite(mean_b).all())
        if clean:
            nb = torch.full_like(mean_b, float(n))
            bmin, bmax = vals.amin(0).double(), vals.amax(0).double()
            finite_vals = vals
        else:
            x = vals.double()  # rare (a batch with inf or NaN): whole-batch float64 scratch
            finite = torch.isfinite(acts)  # [n, N]
            self.n_nonfinite += (~finite).sum(0)
            xz = torch.where(finite, x, 0.0)
            nb = finite.sum(0).double()
            mean_b = xz.sum(0) / nb.clamp(min=1)
            m2_b = torch.where(finite, (x - mean_b) ** 2, 0.0).sum(0)
            bmin = torch.where(finite, x, math.inf).amin(0)
            bmax = torch.where(finite, x, -math.inf).amax(0)
            finite_vals = torch.where(finite, vals, torch.nan)
            del x, xz
        self._merge_moments(nb, mean_b, m2_b, bmin, bmax)
        active = finite_vals > self.config.active_threshold  # [n, N]; NaN compares False
        self.n_active += _count_rows(active, rows)
        batch_hist = self._add_histogram(finite_vals, has_nan=not clean)
        # Examples: NaN marks left-out values; the sets never take them. Where a set's own threshold lets many
        # entries through (cold sets: the first batch offers every value; a neuron whose values jumped), the
        # batch's histogram bounds the candidates from the batch's side too. Once warm, the threshold is tighter.
        floors: list[torch.Tensor] = []

        def floor(i: int) -> torch.Tensor:  # computed once, only if a set lets many candidates through
            if not floors:
                floors.extend(self._batch_floors(batch_hist))
            return floors[i]

        self.top.offer_values(finite_vals, doc, pos, ctx, largest=True, has_nan=not clean,
                              floor=functools.partial(floor, 0))
        if self.bottom.k:
            self.bottom.offer_values(finite_vals, doc, pos, ctx, largest=False, has_nan=not clean,
                                     floor=functools.partial(floor, 1))
        if self.sample.k:
            prio = -token_priority(doc, pos).to(acts.device)  # [n]; larger key = smaller priority
            self.sample.offer_ranked(prio, active, finite_vals, doc, pos, ctx)

    def _offer_tokens(self, doc: torch.Tensor, pos: torch.Tensor, ctx: torch.Tensor) -> None:
        """The token reservoir: every token is eligible, keyed by the hash of its place (a bottom-k sketch, so it
        merges exactly). One host read per batch, on accelerators too (a single row: cheap)."""
        if not self.tokens.k:
            return
        n = doc.shape[0]
        prio = -token_priority(doc, pos).to(doc.device)
        self.tokens.offer_ranked(prio, torch.ones((n, 1), dtype=torch.bool, device=doc.device),
                                 torch.zeros((n, 1), dtype=torch.float32, device=doc.device), doc, pos, ctx)

    def _merge_moments(self, nb: torch.Tensor, mean_b: torch.Tensor, m2_b: torch.Tensor, bmin: torch.Tensor,
                       bmax: torch.Tensor) -> None:
        """Chan et al. merge of a batch's (count, mean, M2) in float64, and of its extremes."""
        total = self.count + nb
        safe = total.clamp(min=1)
        delta = mean_b - self.mean
        self.mean = self.mean + delta * nb / safe
        self.m2 = self.m2 + m2_b + delta * delta * self.count * nb / safe
        self.count = total
        self.min = torch.minimum(self.min, bmin)
        self.max = torch.maximum(self.max, bmax)

    def _add_histogram(self, vals: torch.Tensor, has_nan: bool) -> torch.Tensor:
        """vals [n, N] float32; with ``has_nan``, NaN marks values to leave out (CPU path). Returns the batch's
        counts [N, bins].

        A value's bin depends only on the top 16 bits of its float32 pattern (sign, exponent and up to 7 mantissa
        bits; ``hist_bits`` <= 6): one table lookup per value (:func:`_bin_table`, the same integer formula as the
        sync-free path, tabulated once) replaces five integer passes. Done in blocks of rows on CPU, so the
        lookup's int32 intermediates stay in cache (58 -> 22 ms for 8,192 x 1,536 values on 2 cores)."""
        vals = vals.contiguous()
        high = vals.view(torch.uint16)[..., 1::2] if _LITTLE_ENDIAN else vals.view(torch.uint16)[..., 0::2]
        table = _bin_table(self._code_lo, self._k_bins, self.config.hist_bits, str(vals.device))
        z = torch.empty(vals.shape, dtype=self._bin_base.dtype, device=vals.device)  # neuron * n_bins + bin
        rows = _block_rows(vals, _HIST_BLOCK_VALUES)
        for i in range(0, vals.shape[0], rows):
            idx = high[i:i + rows].to(torch.int32)
            torch.add(table.index_select(0, idx.view(-1)).view_as(idx), self._bin_base, out=z[i:i + rows])
        flat = z.view(-1)
        size = self.n_neurons * self.n_bins
        if has_nan:
            flat = torch.where(torch.isnan(vals).reshape(-1), size, flat)  # left out: one extra slot, dropped
        counts = torch.bincount(flat, minlength=size + 1)[:size].view(self.n_neurons, self.n_bins)
        self.hist += counts
        return counts

    def _batch_floors(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per neuron, from the batch's histogram ``counts`` [N, bins]: a key that each of the batch's top-k
        entries reaches (the lower edge of the bin holding the k-th largest value), and the same for the bottom-k
        (minus the upper edge of the bin holding the k-th smallest); [N] float32 each, -inf where a neuron has
        fewer than k values."""
        cum = counts.cumsum(1)  # values in this bin or below
        total = cum[:, -1:]
        # bins, counted from the top, whose bin-and-above count is still below k: (total - cum + counts) < k
        above = ((cum - counts) > total - self.top.k).sum(1)
        below = (cum < self.bottom.k).sum(1)
        return (self._bin_lower[(self.n_bins - 1 - above).clamp(min=0)],
                -self._bin_upper[below.clamp(max=self.n_bins - 1)])

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
        self.tokens.merge(o.tokens)
        return self

    _MOMENTS = ("count", "mean", "m2", "min", "max", "n_active", "n_nonfinite", "hist")

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        p = f"{prefix}." if prefix else ""
        state = {f"{p}{name}": getattr(self, name) for name in self._MOMENTS}
        state.update(self.top.state_dict(f"{p}top"))
        state.update(self.bottom.state_dict(f"{p}bottom"))
        state.update(self.sample.state_dict(f"{p}sample"))
        state.update(self.tokens.state_dict(f"{p}tokens"))
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
        if f"{p}tokens.keys" in state:  # profiles saved before the reservoir existed keep it empty
            stats.tokens.load(state, f"{p}tokens")
        return stats

    def to(self, device: torch.device | str) -> SiteStats:
        self.device = torch.device(device)
        self.sync_free = self.device.type != "cpu"
        for name in self._MOMENTS:
            setattr(self, name, getattr(self, name).to(self.device))
        self.edges = self.edges.to(self.device)
        self._bin_lower, self._bin_upper = self._bin_lower.to(self.device), self._bin_upper.to(self.device)
        self._bin_base = self._bin_base.to(self.device)
        for ex in (self.top, self.bottom, self.sample, self.tokens):
            ex.to(self.device)
        return self
