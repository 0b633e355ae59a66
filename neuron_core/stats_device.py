"""The accelerator path of the streaming statistics: fixed shapes, no host sync, few kernel launches.

:class:`~neuron_core.stats.SiteStats` on a GPU (``sync_free``) hands each batch to :func:`add_sync_free`. Everything
works on one neuron-major copy [N, n] of the batch (row reductions and row-wise top-k read contiguous memory: a
dim-0 ``topk`` on [n, N] measured 1.7 ms against 1.0 ms on an H200 for 8,192 x 3,072 float64) in two kinds of pure
functions, each compiled once per process and device by ``torch.compile`` (dynamic shapes: one compile for every
batch length):

- :func:`_batch_pass`: moments, counts, histogram, and for each example set the chunk maxima of its keys;
- :func:`_update_set`, once per example set: the batch's best entries by a two-stage top-k (:func:`_select`) and
  their merge with the kept entries.

Results equal the CPU path's: the kept sets, histogram and counts bit for bit, the float64 moments to rounding
(tests, on CPU eager and through CPU's compiler; ``benchmarks/gpu_parity.py`` on CUDA). If compiling fails (no
Triton, no compiler) a warning says so once and the same functions run eager. Set NEURON_CORE_COMPILE=0 to stop
compiling.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import TYPE_CHECKING, Any

import torch

from neuron_core._statbits import INT32_MIN, LOW_BITS, bin_offset, tie_broken, token_hash

if TYPE_CHECKING:
    from neuron_core.stats import SiteStats

__all__ = ["add_sync_free", "is_compiled"]

COMPILE = os.environ.get("NEURON_CORE_COMPILE", "1") != "0"
"""Compile the accelerator path's functions with ``torch.compile`` (set NEURON_CORE_COMPILE=0 to stop)."""
_COMPILED: dict[tuple[str, str], Any] = {}
_EAGER_DEVICES = {"cpu"}  # the CPU runs its own path; a sync-free SiteStats there (tests) runs eager


def _chunk_size(k: int, n: int = 8192) -> int:
    """The chunk length (a power of two, >= 2) for a two-stage top-k of ``k`` entries per row, or 0 for a plain
    top-k (no set). About sqrt(n / k) for batches of ``n`` tokens: both stages then read ~sqrt(n * k) entries a row
    (n = 8,192, k = 32: chunks of 16; 512 chunk maxima, then the 512 entries of the best 32 chunks). It depends on
    k only, not on the batch at hand, so the compiled batch pass is compiled once for every batch length (the
    selection is exact for any length; the default ``batch_tokens`` is 8,192)."""
    if k <= 0:
        return 0
    c = 1
    while (2 * c) ** 2 * k <= n:
        c *= 2
    return max(c, 2)


def _chunk_max(keys: torch.Tensor, c: int, k: int, fill: float) -> torch.Tensor:
    """[R, n] -> [R, m]: the largest key of each run of ``c`` entries, m = ceil(n / c) + k (the last runs padded with
    ``fill``: k more than needed, so that m > k for any batch length without a comparison; torch.compile then
    neither guards on the batch length against k nor specialises a short batch on a size of 1)."""
    n = keys.shape[1]
    m = (n + c - 1) // c + k
    padded = torch.nn.functional.pad(keys, (0, m * c - n), value=fill)
    return padded.view(keys.shape[0], m, c).amax(2)


def _token_bits(doc: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token [n]: the tie-break bits of its float64 keys (its hash masked to the mantissa bits below float32
    precision, int64) and its sample key (minus its hash, int32). Its own compiled function: inside the batch pass
    the compiler would recompute the hash (int64 modulo, slow on every device) for each of the N * n values."""
    h = token_hash(doc, pos)
    return h & LOW_BITS, (-h).to(torch.int32)


def _batch_pass(vt: torch.Tensor, hbits: torch.Tensor, neg_hash: torch.Tensor, bin_base: torch.Tensor, *,
                threshold: float, code_lo: int, k_bins: int, bits: int, size: int, want_low: bool,
                want_sample: bool, chunks: tuple[tuple[int, int], ...] = ((0, 0), (0, 0), (0, 0))
                ) -> tuple[Any, ...]:
    """Everything elementwise or row-wise the sync-free path needs from a batch's neuron-major activations
    vt [N, n] float32 (any values; non-finite ones are left out), with its tokens' :func:`_token_bits`, in one
    function that ``torch.compile`` fuses.

    Returns n_good [N], mean and M2 of the finite values (float64; two-pass: exact float64 deviations), their min
    and max, the active counts, the histogram counts [N * bins + 1] (last slot: left out), the top set's keys
    [N, n] (float64 value with the tie-break hash in its low mantissa bits, -inf = left out), the bottom set's keys
    (the same for -value; None unless ``want_low``) and the sample's int32 keys (minus the token hash where active,
    int32 min elsewhere; None unless ``want_sample``). Where ``chunks`` gives a set (c, k), a chunk length c > 0 and
    its k, that set's keys come as their chunk maxima [N, ceil(n / c) + k] instead (:func:`_select`; fused here:
    the [N, n] keys are never written)."""
    finite = torch.isfinite(vt)
    n_good = finite.sum(1)
    vn = torch.where(finite, vt, math.nan)
    mean_b = torch.nansum(vn, 1, dtype=torch.float64) / n_good.double().clamp(min=1)
    m2_b = torch.nansum((vn.double() - mean_b[:, None]) ** 2, 1)
    vmin = torch.where(finite, vt, math.inf).amin(1).double()
    vmax = torch.where(finite, vt, -math.inf).amax(1).double()
    active = vn > threshold  # NaN compares False
    n_active = active.sum(1, dtype=torch.int32)
    z = bin_offset(vn, code_lo, k_bins, bits) + bin_base[:, None]  # neuron * bins + (k + 1) + signed offset
    flat = torch.where(finite, z, size).reshape(-1)
    ones = torch.ones(1, dtype=torch.int32, device=vt.device).expand(flat.numel())
    counts = torch.zeros(size + 1, dtype=torch.int32, device=vt.device).index_add_(0, flat, ones)
    keys = tie_broken(vn.double(), hbits[None, :], finite=True)  # NaN stays NaN
    high = torch.where(finite, keys, -math.inf)
    low = torch.where(finite, -keys, -math.inf) if want_low else None  # key of -value = -(key of value)
    skeys = torch.where(active, neg_hash[None, :], INT32_MIN) if want_sample else None
    (c_top, k_top), (c_low, k_low), (c_sample, k_sample) = chunks
    if c_top:
        high = _chunk_max(high, c_top, k_top, -math.inf)
    if low is not None and c_low:
        low = _chunk_max(low, c_low, k_low, -math.inf)
    if skeys is not None and c_sample:
        skeys = _chunk_max(skeys, c_sample, k_sample, INT32_MIN)
    return n_good, mean_b, m2_b, vmin, vmax, n_active, counts, high, low, skeys


def _candidate_keys(vt: torch.Tensor, tok: torch.Tensor, hbits: torch.Tensor, neg_hash: torch.Tensor, kind: str,
                    threshold: float) -> torch.Tensor:
    """The keys [N, L] :func:`_batch_pass` gives set ``kind`` ("top", "bottom", "sample") at token indices ``tok``
    [N, L] of each row; an index >= n (past the batch: the last chunk's padding) is left out."""
    n = vt.shape[1]
    inside = tok < n
    t = tok.clamp(max=n - 1)
    v = vt.gather(1, t)
    ok = inside & torch.isfinite(v)
    if kind == "sample":
        return torch.where(ok & (v > threshold), neg_hash[t], INT32_MIN)
    keys = tie_broken(v.double(), hbits[t], finite=True)  # left-out entries are masked below
    return torch.where(ok, keys if kind == "top" else -keys, -math.inf)


def _select(keys: torch.Tensor, k: int, c: int, n: int, rekey: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``k`` largest keys and their token indices in [0, n), ([N, k], [N, k]), without a host sync.
    Where a row has fewer than k keys (n < k), the rest are filler: left-out keys (-inf, int32 min).

    With c = 0, ``keys`` are all of them [N, n]: one ``topk`` (of min(k, n)). With c > 0 they are chunk maxima
    [N, m], m > k (:func:`_chunk_max`; chunk j = tokens j*c .. j*c + c - 1) and the selection takes two small top-k
    instead of one over n: the k chunks with the largest maxima hold every one of the row's k largest keys (a chunk
    holding one of them has a maximum at least the k-th largest key, and only k keys are that large: keys are
    distinct, tie-broken by the token hash), so the top-k of those chunks' k * c entries (``rekey(tok)`` rebuilds
    their keys) is the row's top-k. Exact. Why: on an H200 a row-wise ``topk`` of 8,192 float64 keys took 1.0 ms a
    site, and the three sets' top-k two thirds of the statistics' time (``benchmarks/results-gpu.md``)."""
    if c == 0:
        best, tok = torch.topk(keys, min(k, n), dim=1, sorted=False)
        return best, tok
    # no min(k, ...) against sizes that vary with the batch: compiled, each would be a guard and a recompile
    _, chunk = torch.topk(keys, k, dim=1, sorted=False)  # [N, k] best chunks
    tok = (chunk[:, :, None] * c + torch.arange(c, device=keys.device)).flatten(1)  # [N, k * c]
    cand = rekey(tok)
    best, sel = torch.topk(cand, k, dim=1, sorted=False)
    # a row with fewer than k keys above the left-out key may fill its slots from the last chunk's padding: those
    # slots are left out (their key says so), but their index must stay inside the batch for the gathers after
    return best, tok.gather(1, sel).clamp(max=n - 1)


def merge_dense(kept: tuple[torch.Tensor, ...], new_keys: torch.Tensor, tok: torch.Tensor, vt: torch.Tensor,
                doc: torch.Tensor, pos: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """An example set's entries (keys [N, k] float64, -inf = empty; values [N, k]; doc, pos [N, k]; ctx [N, k, W])
    merged with candidates for every neuron, new_keys [N, c] (-inf = none) at batch tokens tok [N, c] of the
    neuron-major batch vt [N, n]: the k best, sorted, as a new tuple. Fixed shapes, no host sync."""
    keys, values, kdoc, kpos, kctx = kept
    k, width = keys.shape[1], kctx.shape[2]
    best_keys, sel = torch.topk(torch.cat([keys, new_keys], dim=1), k, dim=1)  # [N, k]
    from_new = sel >= k
    col = (sel - k).clamp(min=0)
    t = tok.gather(1, col)  # [N, k] batch token of each new winner
    old_sel = sel.clamp(max=k - 1)
    empty = torch.isinf(best_keys) & (best_keys < 0)  # fewer than k eligible entries so far

    def pick(current: torch.Tensor, incoming: torch.Tensor) -> torch.Tensor:
        return torch.where(from_new, incoming, current.gather(1, old_sel))

    new_values = pick(values, vt.gather(1, t).float()).masked_fill(empty, 0.0)
    new_doc = pick(kdoc, doc[t]).masked_fill(empty, -1)
    new_pos = pick(kpos, pos[t]).masked_fill(empty, -1)
    new_ctx = torch.where(from_new[..., None], ctx[t].to(torch.int32),
                          kctx.gather(1, old_sel[..., None].expand(-1, -1, width))).masked_fill(empty[..., None], -1)
    return best_keys, new_values, new_doc, new_pos, new_ctx


def _update_set(kept: tuple[torch.Tensor, ...], batch_keys: torch.Tensor, vt: torch.Tensor, hbits: torch.Tensor,
                neg_hash: torch.Tensor, doc: torch.Tensor, pos: torch.Tensor, ctx: torch.Tensor, *, kind: str, c: int,
                threshold: float) -> tuple[torch.Tensor, ...]:
    """One example set after a batch (``kept`` and the result as in :func:`merge_dense`): the batch's best entries
    by :func:`_select` from ``batch_keys`` (:func:`_batch_pass`'s keys or chunk maxima for the set), merged. For
    the sample (``kind`` "sample"), the kept key is the token's priority (its hash / 2**31), the smallest kept."""
    n = vt.shape[1]
    best, tok = _select(batch_keys, kept[0].shape[1], c, n,
                        lambda t: _candidate_keys(vt, t, hbits, neg_hash, kind, threshold))
    if kind == "sample":  # int32 keys (a 32-bit top-k costs about half a 64-bit one) -> -priority, -inf = none
        best = torch.where(best == INT32_MIN, -math.inf, best.double() / float(1 << 31))
    return merge_dense(kept, best, tok, vt, doc, pos, ctx)


def _run_compiled(fn: Any, *args: Any, compile_key: str | None, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, through ``torch.compile`` when ``compile_key`` is given (accelerators: the device
    type; compiled once per process, function and key, with dynamic shapes). If compiling fails (no Triton, no
    compiler), a warning says so once per function and the eager version runs from then on."""
    if compile_key is None:
        return fn(*args, **kwargs)
    key = (fn.__name__, compile_key)
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = _COMPILED[key] = torch.compile(fn, dynamic=True)
    if compiled is fn:
        return fn(*args, **kwargs)
    try:
        return compiled(*args, **kwargs)
    except Exception as err:  # noqa: BLE001  (a compiler failure of any kind: fall back to the same function, eager)
        warnings.warn(f"torch.compile of the statistics' {fn.__name__} failed ({type(err).__name__}: "
                      f"{str(err)[:200]}); using eager kernels (slower, same results)", RuntimeWarning, stacklevel=3)
        _COMPILED[key] = fn
        return fn(*args, **kwargs)


def is_compiled(fn_name: str, device_type: str) -> bool:
    """Whether this module's ``fn_name`` ("_batch_pass", "_update_set") runs compiled on ``device_type`` (compiled,
    and did not fall back to eager); for the benchmarks' reports."""
    compiled = _COMPILED.get((fn_name, device_type))
    return compiled is not None and compiled is not globals()[fn_name]


def add_sync_free(stats: SiteStats, acts: torch.Tensor, doc: torch.Tensor, pos: torch.Tensor,
                  ctx: torch.Tensor) -> None:
    """Add a batch to ``stats`` the accelerator way (see the module docstring): acts [n, N] (n >= 1), doc, pos [n]
    int64, ctx [n, W] int32, all on the statistics' device."""
    n, cfg = acts.shape[0], stats.config
    vt = torch.empty((stats.n_neurons, n), dtype=torch.float32, device=acts.device).copy_(acts.T)  # [N, n]
    threshold = float(cfg.active_threshold)
    sets = (("top", stats.top), ("bottom", stats.bottom), ("sample", stats.sample))
    chunks = tuple((_chunk_size(s.k), s.k) for _, s in sets)
    # compiled on accelerators, once for all batch lengths but 1 (torch.compile specialises a size of 1: such a
    # batch, a one-token document at the end of a corpus, runs eager rather than compiling everything again)
    dev = acts.device.type
    compile_key = dev if COMPILE and dev not in _EAGER_DEVICES and n > 1 else None
    hbits, neg_hash = _run_compiled(_token_bits, doc, pos, compile_key=compile_key)
    out = _run_compiled(
        _batch_pass, vt, hbits, neg_hash, stats._bin_base, threshold=threshold, code_lo=stats._code_lo,
        k_bins=stats._k_bins, bits=cfg.hist_bits, size=stats.n_neurons * stats.n_bins, want_low=stats.bottom.k > 0,
        want_sample=stats.sample.k > 0, chunks=chunks, compile_key=compile_key)
    n_good, mean_b, m2_b, bmin, bmax, n_active, counts, *batch_keys = out
    stats.n_nonfinite += n - n_good
    stats._merge_moments(n_good.double(), mean_b, m2_b, bmin, bmax)
    stats.n_active += n_active
    stats.hist += counts[:-1].view(stats.n_neurons, stats.n_bins)
    # Examples: -inf keys are left out (non-finite values; inactive tokens for the sample).
    for (kind, example_set), keys, (c, _) in zip(sets, batch_keys, chunks):
        if keys is not None:
            example_set.replace(_run_compiled(_update_set, example_set.fields(), keys, vt, hbits, neg_hash, doc, pos,
                                              ctx, kind=kind, c=c, threshold=threshold, compile_key=compile_key))
