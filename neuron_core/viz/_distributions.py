"""Distributions and summaries: a neuron's histogram, sparsity per layer, mode shares, logit effects.

Usage::

    viz.plot_histogram("layer 6", 12)      # profile: signed log-spaced bins drawn by bin index; record: plain bins
    viz.plot_sparsity()                    # fraction of tokens each neuron is active on, per layer
    plot_mode_shares(verdicts)             # one stacked bar per detected neuron
    plot_logit_effects(effects)            # promoted and suppressed tokens per neuron
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from neuron_core.errors import InputError
from neuron_core.viz._figures import SIGN_COLORS, colormap, new_figure, text_color
from neuron_core.viz._source import Histogram, Source
from neuron_core.viz._text import mpl_text, shorten, token_label
from neuron_core.viz._types import as_logit_effects, as_neurons, neuron_ref, site_label

__all__ = ["histogram_figure", "sparsity_figure", "mode_shares_figure", "logit_effects_figure", "edge_label",
           "log_bin_ticks", "value_position"]

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def edge_label(value: float) -> str:
    """A bin edge for people: 0.01, 0.1, 1, 10 as decimals; 10⁻⁴ and 10⁴ as powers."""
    if value == 0:
        return "0"
    sign = "−" if value < 0 else ""
    mag = abs(value)
    exp = math.log10(mag)
    if abs(exp - round(exp)) < 1e-6 and not 1e-2 <= mag <= 1e2:
        return f"{sign}10{str(int(round(exp))).translate(_SUPERSCRIPT)}"
    return f"{sign}{mag:g}"


def _sign_colors(lo: np.ndarray, hi: np.ndarray) -> list[str]:
    out = []
    for a, b in zip(lo, hi, strict=True):
        mid = (a + b) / 2 if np.isfinite(a) and np.isfinite(b) else (a if np.isfinite(a) else b)
        out.append(SIGN_COLORS["zero"] if a < 0 < b and np.isfinite(a) and np.isfinite(b)
                   else SIGN_COLORS["neg"] if mid < 0 else SIGN_COLORS["pos"])
    return out


def value_position(hist: Histogram, value: float) -> float:
    """Where ``value`` falls on an axis whose bins sit at integer positions (log-interpolated inside a bin)."""
    i = int(np.searchsorted(hist.hi, value, side="right"))
    i = min(max(i, 0), len(hist.lo) - 1)
    lo, hi = hist.lo[i], hist.hi[i]
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 < hi or value == 0:
        return float(i)
    a, b, v = math.log(abs(lo)), math.log(abs(hi)), math.log(abs(value))
    return i - 0.5 + (v - a) / (b - a) if b != a else float(i)


def log_bin_ticks(hist: Histogram, first: int, last: int, max_labels: int = 18) -> tuple[list[float], list[str], int]:
    """Ticks for bars drawn by bin index over signed log-spaced bins, whatever the edges are (powers of 2 or 10):
    powers of ten placed by log interpolation, and "0" on the zero bin. Returns positions, labels, zero bin."""
    zero = int(np.flatnonzero((hist.lo < 0) & (hist.hi > 0))[0])
    finite = np.abs(np.concatenate([hist.lo[first:last + 1], hist.hi[first:last + 1]]))
    finite = finite[np.isfinite(finite) & (finite > 0)]
    small = abs(float(hist.hi[zero]))
    gap = max(1.5, (last - first) / max_labels)  # room for a label, in bins
    values: list[float] = []
    if finite.size:
        k0, k1 = math.ceil(math.log10(max(finite.min(), small))), math.floor(math.log10(finite.max()))
        decades = [10.0 ** k for k in range(k0, k1 + 1)]
        for sign in (-1.0, 1.0):
            for d in decades:
                v = sign * d
                x = value_position(hist, v)
                if first - 0.5 <= x <= last + 0.5 and abs(x - zero) >= gap:
                    values.append(v)
    values.sort()
    if len(values) > 14:  # every other decade
        values = values[::2]
    kept: list[float] = []
    for v in values:  # drop a tick crowding the previous one
        if not kept or value_position(hist, v) - value_position(hist, kept[-1]) >= gap:
            kept.append(v)
    values = kept
    ticks = [value_position(hist, v) for v in values]
    labels = [edge_label(v) for v in values]
    if first <= zero <= last:
        ticks.append(float(zero))
        labels.append("0")
    return ticks, labels, zero


def histogram_figure(src: Source, site: str, neuron: int, *, log_counts: bool | None = None) -> Figure:
    hist = src.histogram(site, neuron)
    summary = src.summary(site)
    ref = neuron_ref(site, neuron)
    counts = hist.counts
    total = int(counts.sum())
    if total == 0:
        raise InputError(f"{ref} has no finite activations to draw")
    fig = new_figure(9, 4.2)
    ax = fig.add_subplot()
    colors = _sign_colors(hist.lo, hist.hi)
    nz = np.flatnonzero(counts)
    if log_counts is None:  # heavy tails vanish on a linear axis
        log_counts = counts.max() > 50 * max(np.median(counts[nz]), 1)
    if hist.log_bins:
        first, last = max(int(nz[0]) - 1, 0), min(int(nz[-1]) + 1, len(counts) - 1)
        xs = np.arange(first, last + 1)
        ax.bar(xs, counts[first:last + 1], width=0.92, color=colors[first:last + 1])
        ticks, labels, zero_bin = log_bin_ticks(hist, first, last)
        ax.set_xticks(ticks, labels, fontsize=8)
        if first <= zero_bin <= last:
            ax.axvline(zero_bin, color="black", linewidth=0.6, linestyle=":")
        ax.set_xlim(first - 0.6, last + 0.6)
        ax.set_xlabel("activation (signed log scale: one bar per log-spaced bin; the middle bin holds |x| < "
                      f"{float(hist.hi[zero_bin]):.2g})")
        mean = float(summary.mean[neuron])
        mean_x = value_position(hist, mean)
        if first - 0.5 <= mean_x <= last + 0.5:
            ax.axvline(mean_x, color="black", linewidth=1.0, linestyle="--", label=f"mean {mean:.3g}")
            ax.legend(loc="upper left", fontsize=8, frameon=False)
        how = "streaming profile"
    else:
        ax.bar(hist.lo, counts, width=hist.hi - hist.lo, align="edge", color=colors, edgecolor="white",
               linewidth=0.4)
        ax.axvline(0, color="black", linewidth=0.6, linestyle=":")
        mean = float(summary.mean[neuron])
        ax.axvline(mean, color="black", linewidth=1.0, linestyle="--", label=f"mean {mean:.3g}")
        ax.legend(loc="upper left", fontsize=8, frameon=False)
        ax.set_xlabel("activation")
        how = "record"
    if log_counts:
        ax.set_yscale("log")
    ax.set_ylabel("tokens" + (" (log scale)" if log_counts else ""))
    ax.set_title(f"{ref} · activation histogram · {total:,} tokens ({how})", loc="left", fontsize=11)
    facts = (f"max {summary.max[neuron]:.3g}\nmin {summary.min[neuron]:.3g}\nstd {summary.std[neuron]:.3g}\n"
             f"mean {summary.mean[neuron]:.3g}\nactive (>{src.active_threshold:g}) {summary.frac_active[neuron]:.1%}")
    ax.text(1.01, 1.0, facts, transform=ax.transAxes, ha="left", va="top", fontsize=8.5, family="DejaVu Sans Mono",
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "#cccccc"})
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


def sparsity_figure(src: Source) -> Figure:
    """Per layer: how the neurons' active fractions spread (box: 25–75%, whiskers 5–95%), dead and dense shares."""
    sites = src.site_names
    fracs = [src.summary(s).frac_active[np.isfinite(src.summary(s).frac_active)] for s in sites]
    labels = [site_label(s) for s in sites]
    width = min(16.0, max(9.0, 3.0 + 0.45 * len(sites)))
    fig = new_figure(width, 4.6)
    left, right = fig.subplots(1, 2, width_ratios=[2.2, 1])
    xs = np.arange(len(sites))
    left.boxplot(fracs, positions=xs, whis=(5, 95), showfliers=False, widths=0.55, patch_artist=True,
                 boxprops={"facecolor": "#c6dbef", "edgecolor": "#3f6e9e"}, medianprops={"color": "#08306b"})
    means = [float(f.mean()) if f.size else np.nan for f in fracs]
    left.plot(xs, means, "D", color=SIGN_COLORS["pos"], markersize=5, label="mean = fraction of neurons active on "
              "an average token")
    left.set_ylim(-0.02, 1.02)
    left.set_ylabel("fraction of tokens active")
    left.legend(loc="upper right", fontsize=8, frameon=False)
    left.set_title("Per-neuron fraction of tokens active", loc="left", fontsize=10)
    dead = [float((f == 0).mean()) if f.size else np.nan for f in fracs]
    dense = [float((f >= 0.9).mean()) if f.size else np.nan for f in fracs]
    w = 0.38
    for offset, shares, color, label in ((-w / 2, dead, "#636363", "never active"),
                                         (w / 2, dense, SIGN_COLORS["pos"], "active on ≥ 90% of tokens")):
        bars = right.bar(xs + offset, shares, width=w, color=color, label=label)
        if len(sites) <= 12:
            right.bar_label(bars, labels=[f"{v:.1%}" if np.isfinite(v) else "" for v in shares], fontsize=7,
                            padding=1)
    right.set_ylabel("share of neurons")
    right.yaxis.set_major_formatter(PercentFormatter(1.0))
    left.yaxis.set_major_formatter(PercentFormatter(1.0))
    right.set_ylim(0, max(0.05, *[v for v in dead + dense if np.isfinite(v)]) * 1.25)
    right.legend(loc="upper right", fontsize=8, frameon=False)
    right.set_title("Dead and dense neurons", loc="left", fontsize=10)
    rotate = 90 if len(sites) > 16 or max(len(x) for x in labels) > 4 else 0
    for ax in (left, right):
        ax.set_xticks(xs, [mpl_text(shorten(x, 24)) for x in labels], rotation=rotate, fontsize=8)
        ax.set_xlabel("layer")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    fig.suptitle(f"Sparsity: active means activation > {src.active_threshold:g} · {src.describe()}", x=0.01,
                 ha="left", fontsize=11)
    return fig


def mode_shares_figure(result: Any, *, max_neurons: int = 20) -> Figure:
    """One horizontal bar per neuron split into its modes' shares (highest score on top)."""
    verdicts = sorted(as_neurons(result), key=lambda v: -float(getattr(v, "score", 0.0) or 0.0))
    if not verdicts:
        raise InputError("no polysemantic neurons to draw")
    shown = verdicts[:max_neurons]
    fig = new_figure(11, 1.3 + 0.42 * len(shown))
    ax = fig.add_subplot()
    tab = colormap("tab10")
    for row, verdict in enumerate(shown):
        left = 0.0
        for k, mode in enumerate(getattr(verdict, "modes", []) or []):
            share = float(getattr(mode, "share", 0.0))
            color = tab(k % 10)
            ax.barh(row, share, left=left, height=0.7, color=color, edgecolor="white", linewidth=1)
            room = int(share * 105)  # ~105 characters fit across the full bar at this size
            if room >= 5:
                text = f"{shorten(str(getattr(mode, 'label', '')), max(room - 5, 1))} {share:.0%}"
                ax.text(left + share / 2, row, mpl_text(shorten(text, room)), ha="center", va="center", fontsize=8,
                        color=text_color(color))
            left += share
        if left < 0.995:
            ax.barh(row, 1 - left, left=left, height=0.7, color="#eeeeee", edgecolor="white", linewidth=1)
    labels = []
    for v in shown:
        ref = getattr(v, "ref", None) or neuron_ref(str(v.site), int(v.neuron))
        score = getattr(v, "score", None)
        labels.append(mpl_text(f"{ref}  ({score:.2f})" if isinstance(score, (int, float)) else ref))
    ax.set_yticks(range(len(shown)), labels, fontsize=9, fontfamily="DejaVu Sans Mono")
    ax.set_ylim(len(shown) - 0.5, -0.5)
    ax.set_xlim(0, 1)
    ax.set_xticks(np.linspace(0, 1, 5), ["0", "25%", "50%", "75%", "100%"])
    ax.set_xlabel("share of the neuron's activation mass (grey: not in any mode)")
    more = f" (top {len(shown)} of {len(verdicts)} by score)" if len(verdicts) > len(shown) else ""
    ax.set_title(f"Modes of {len(shown)} polysemantic neurons{more} · label, share; (score)", loc="left",
                 fontsize=11)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


def logit_effects_figure(effects: Any, *, top_k: int = 10, max_neurons: int = 6) -> Figure:
    """Per neuron, the tokens it suppresses (left, blue) and promotes (right, red)."""
    items = as_logit_effects(effects)
    if not items:
        raise InputError("no logit effects to draw")
    shown = items[:max_neurons]
    rows = [max(min(len(e.promoted), top_k), min(len(e.suppressed), top_k), 1) for e in shown]
    heights = [0.75 + 0.22 * r for r in rows]
    fig = new_figure(10, sum(heights) + 0.5)
    reach = max([abs(float(v)) for e in shown for _, v in list(e.promoted)[:top_k] + list(e.suppressed)[:top_k]]
                or [1.0]) * 1.05  # one scale for both sides and every neuron
    subs = fig.subfigures(len(shown), 1, height_ratios=heights, squeeze=False)[:, 0]
    for sub, eff, n in zip(subs, shown, rows, strict=True):
        ax_s, ax_p = sub.subplots(1, 2)
        for ax, pairs, color, side in ((ax_s, list(eff.suppressed)[:top_k], SIGN_COLORS["neg"], "suppressed"),
                                       (ax_p, list(eff.promoted)[:top_k], SIGN_COLORS["pos"], "promoted")):
            toks = [mpl_text(token_label(str(t), 18)) for t, _ in pairs]
            vals = [float(v) for _, v in pairs]
            ax.barh(range(len(vals)), vals, color=color, height=0.7)
            ax.set_yticks(range(len(vals)), toks, fontsize=8.5, fontfamily="DejaVu Sans Mono")
            ax.set_ylim(n - 0.5, -0.5)
            ax.axvline(0, color="black", linewidth=0.6)
            ax.tick_params(axis="x", labelsize=8)
            ax.set_xlim(*((-reach, 0) if side == "suppressed" else (0, reach)))
            ax.set_title(f"{side} ({len(vals)})", fontsize=9, loc="left")
            for s in ("top", "right"):
                ax.spines[s].set_visible(False)
            if not vals:
                ax.text(0.5, 0.5, "none given", transform=ax.transAxes, ha="center", color="#777777")
        ax_s.set_xlabel("logit effect", fontsize=8)
        ax_p.set_xlabel("logit effect", fontsize=8)
        ref = getattr(eff, "ref", None) or neuron_ref(str(eff.site), int(eff.neuron))
        sub.suptitle(mpl_text(str(ref)), x=0.01, ha="left", fontsize=10, fontweight="bold")
    more = f" (first {len(shown)} of {len(items)})" if len(items) > len(shown) else ""
    fig.suptitle(f"Tokens each neuron pushes down and up{more}", x=0.01, ha="left", fontsize=11)
    return fig
