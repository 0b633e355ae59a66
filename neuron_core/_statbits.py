"""Bit-level pieces both statistics paths share (the CPU's in :mod:`neuron_core.stats`, the accelerators' in
:mod:`neuron_core.stats_device`): histogram bin codes from a float's bits, the per-token hash that breaks ties and
draws the random sample, and tie-broken float64 keys. Same results on every device."""

from __future__ import annotations

import torch

INT32_MIN = -(2**31)


def magnitude_codes(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Monotonic integer code of |x| for float32 x: exponent and top ``bits`` mantissa bits (2**bits per octave)."""
    return (x.view(torch.int32) & 0x7FFFFFFF) >> (23 - bits)


def bin_offset(x: torch.Tensor, code_lo: int, k_bins: int, bits: int) -> torch.Tensor:
    """The signed offset of each float32 value's histogram bin from the zero bin (int32): -(k+1) .. k+1, 0 for
    |x| below the smallest edge. Branch-free integer operations on the float's bits; NaN lands in an overflow bin
    (callers leave it out)."""
    z = (magnitude_codes(x, bits) - (code_lo - 1)).clamp(0, k_bins + 1)  # 0: zero bin, k + 1: overflow
    sign = x.view(torch.int32) >> 31  # -1 where the sign bit is set, else 0
    return (z ^ sign) - sign


def hist_edges(lo: float, hi: float, bits: int) -> torch.Tensor:
    """Magnitude edges m_0 < ... < m_K of the signed log histogram (float32, exact binary values).

    Bins, in order: x <= -m_K, the K negative magnitude bins, the zero bin (|x| < m_0), the K positive magnitude bins,
    x >= m_K: 2K + 3 in all. A bin j on either side holds m_{j-1} <= |x| < m_j. Scale-free, so profiles of any model
    merge without agreeing on a range first, and computed with integer operations on the float's bits (cheap).
    """
    codes = magnitude_codes(torch.tensor([lo, hi], dtype=torch.float32), bits)
    span = torch.arange(int(codes[0]), int(codes[1]) + 1, dtype=torch.int32)
    return (span << (23 - bits)).view(torch.float32)


def token_hash(doc_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """A deterministic pseudo-random int64 in [0, 2**31) per (document, position), the same on every device."""
    x = (doc_ids.long() * 2654435761 + positions.long() * 40503 + 12345) % (1 << 31)
    for mult in (1103515245, 1664525, 22695477):  # products stay below 2**63: no overflow
        x = (x * mult + 1013904223) % (1 << 31)
        x = x ^ (x >> 13)
    return x


def token_priority(doc_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """A deterministic pseudo-random priority in [0, 1) per (document, position); float64, same on every device."""
    return token_hash(doc_ids, positions).double() / float(1 << 31)


LOW_BITS = (1 << 29) - 1  # the float64 mantissa bits below float32 precision


def tie_broken(keys: torch.Tensor, low_bits: torch.Tensor, *, finite: bool = False) -> torch.Tensor:
    """Float64 keys that came from float32 values, made distinct: ``low_bits``, a hash of each entry's (document,
    position) masked to ``LOW_BITS``, fills the 29 mantissa bits below float32 precision. Distinct float32 values
    keep their order; equal ones are ordered by the hash, so which of several tied tokens a set keeps does not
    depend on batching or on the slots' layout."""
    marked = (keys.view(torch.int64) | low_bits).view(torch.float64)
    return marked if finite else torch.where(torch.isinf(keys), keys, marked)


def float32_floor(keys: torch.Tensor) -> torch.Tensor:
    """The float32 value a tie-broken key came from (drops the hash bits; exact)."""
    return (keys.view(torch.int64) & ~LOW_BITS).view(torch.float64).float()
