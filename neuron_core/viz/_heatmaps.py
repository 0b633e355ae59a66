"""Heatmaps: tokens × neurons of a record, layers × neurons of a profile, and the polysemantic overview.

Usage (through :class:`~neuron_core.viz.ActivationVisualizer`)::

    viz.plot_heatmap("layer 6")                  # record: tokens × the 40 most active neurons
    viz.plot_heatmap(select="bins", stat="max")  # profile: layers × bins of neurons
    viz.highlight_polysemantic(verdicts)         # the heatmap with the detected neurons marked, a panel per neuron

A layer has ~1,500 neurons: columns are either the most active neurons or bins of neighbouring neurons, and the
title says which.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.patches import Rectangle

from neuron_core.errors import InputError
from neuron_core.viz._figures import colormap, new_figure, value_scale
from neuron_core.viz._source import STATS, ProfileSource, RecordSource, Source
from neuron_core.viz._text import mpl_text, shorten, token_label
from neuron_core.viz._types import site_label, verdict_title

__all__ = ["Grid", "record_grid", "profile_grid", "draw_grid", "heatmap_figure", "highlight_figure"]

Select = Literal["top", "bins"]
MARK = "#d62728"
_AGG: dict[str, Callable[..., np.ndarray]] = {"max": np.nanmax, "min": np.nanmin, "mean": np.nanmean,
                                             "frac_active": np.nanmean, "std": np.nanmean}


@dataclass
class Grid:
    """What one heatmap shows: values [rows, cols] and how to label them."""

    values: np.ndarray
    row_labels: list[str]
    col_labels: list[str]
    col_ranges: list[tuple[int, int]]  # neurons [a, b) behind each column
    title: str
    row_title: str
    col_title: str
    cbar_label: str
    separators: list[float] = field(default_factory=list)  # y positions between groups of rows (texts)
    row_sites: list[str] = field(default_factory=list)  # profile grids: the site of each row
    site: str = ""  # record grids: the one site shown
    from_zero: bool = True  # sequential colours start at 0 (False: at the data's low end)

    def column_of(self, neuron: int) -> int | None:
        for j, (a, b) in enumerate(self.col_ranges):
            if a <= neuron < b:
                return j
        return None


def _signed_absmax(block: np.ndarray, axis: int) -> np.ndarray:
    """Along ``axis``, the entry with the largest magnitude, sign kept (NaN-safe)."""
    mags = np.where(np.isfinite(block), np.abs(block), -1.0)
    idx = np.expand_dims(mags.argmax(axis=axis), axis)
    return np.take_along_axis(block, idx, axis=axis).squeeze(axis)


def _bins(n: int, n_bins: int) -> list[tuple[int, int]]:
    size = math.ceil(n / max(min(n_bins, n), 1))
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _check_neurons(neurons: Sequence[int], n: int, max_neurons: int) -> list[int]:
    chosen = [int(x) for x in neurons]
    bad = [x for x in chosen if not 0 <= x < n]
    if bad:
        raise InputError(f"neurons {bad} out of range (0-{n - 1})")
    if len(chosen) > max_neurons:
        raise InputError(f"{len(chosen)} neurons asked for but max_neurons={max_neurons}: pick fewer or raise "
                         "max_neurons")
    if not chosen:
        raise InputError("neurons is empty")
    return chosen


def record_grid(src: RecordSource, site: str, *, neurons: Sequence[int] | None = None, max_neurons: int = 40,
                select: Select = "top", text: int | str | None = None, max_tokens: int = 64,
                include: Sequence[int] = ()) -> Grid:
    """Tokens × neurons of one site. ``include``: neurons that must be among the top columns (marked ones)."""
    acts = src.acts(site)  # [n_tokens, N]
    n_tokens, n = acts.shape
    if text is not None:
        rows = src.doc_rows(src.doc_index(text))
        what = f"text {src.doc_index(text)}"
    else:
        rows = np.arange(n_tokens)
        what = f"{n_tokens} tokens"
    if len(rows) > max_tokens:
        what = f"first {max_tokens} of {len(rows)} tokens" + (f" of text {src.doc_index(text)}" if text is not None
                                                               else "")
        rows = rows[:max_tokens]
    block = acts[rows]  # [T, N]
    if neurons is not None:
        cols = _check_neurons(neurons, n, max_neurons)
        ranges = [(c, c + 1) for c in cols]
        values = block[:, cols]
        col_desc = f"{len(cols)} chosen neurons of {n}"
        col_title = "neuron"
    elif select == "bins":
        ranges = _bins(n, max_neurons)
        values = np.stack([_signed_absmax(block[:, a:b], 1) for a, b in ranges], axis=1)  # [T, n_bins]
        size = ranges[0][1] - ranges[0][0]
        col_desc = f"{n} neurons in {len(ranges)} bins of {size} (bin shows its largest |activation|)"
        col_title = "neurons (bins)"
    elif select == "top":
        score = np.nanmax(np.where(np.isfinite(block), np.abs(block), -1.0), axis=0)  # [N]
        k = min(max_neurons, n)
        forced = [i for i in dict.fromkeys(int(x) for x in include) if 0 <= i < n][:k]
        rest = [int(i) for i in np.argsort(-score, kind="stable") if int(i) not in forced][: k - len(forced)]
        cols = sorted(forced + rest)
        ranges = [(c, c + 1) for c in cols]
        values = block[:, cols]
        col_desc = (f"top {len(cols)} of {n} neurons by max |activation|" if len(cols) < n
                    else f"all {n} neurons")
        col_title = "neuron"
    else:
        raise InputError(f"select must be 'top' or 'bins', not {select!r}")
    labels = [f"{a}–{b - 1}" if b - a > 1 else f"N{a}" for a, b in ranges]
    docs = src.doc_ids[rows]
    separators = [i - 0.5 for i in range(1, len(rows)) if docs[i] != docs[i - 1]]
    return Grid(values=values, row_labels=[mpl_text(token_label(src.tokens[r])) for r in rows], col_labels=labels,
                col_ranges=ranges, title=f"{site_label(site)} · {what} × {col_desc}", row_title="token",
                col_title=col_title, cbar_label="activation", separators=separators, site=site)


def profile_grid(src: ProfileSource, sites: Sequence[str], *, neurons: Sequence[int] | None = None,
                 max_neurons: int = 64, select: Select = "bins", stat: str = "max") -> Grid:
    """Layers × neurons of a per-neuron statistic, in bins of neighbouring neurons or the top neurons."""
    if stat not in STATS:
        raise InputError(f"stat must be one of {list(STATS)}, not {stat!r}")
    widths = [src.n_neurons(s) for s in sites]
    n = max(widths)
    matrix = np.full((len(sites), n), np.nan)  # [S, N]; NaN pads narrower sites
    for i, s in enumerate(sites):
        matrix[i, : widths[i]] = src.summary(s).stat(stat)
    if neurons is not None:
        cols = _check_neurons(neurons, n, max_neurons)
        ranges = [(c, c + 1) for c in cols]
        values = matrix[:, cols]
        col_desc = f"{len(cols)} chosen neurons of {n}"
    elif select == "bins":
        ranges = _bins(n, max_neurons)
        with np.errstate(all="ignore"):
            values = np.stack([_AGG[stat](matrix[:, a:b], axis=1) for a, b in ranges], axis=1)  # [S, n_bins]
        size = ranges[0][1] - ranges[0][0]
        how = {"max": "max", "min": "min"}.get(stat, "mean")
        col_desc = f"{n} neurons in {len(ranges)} bins of {size} ({how} per bin)"
    elif select == "top":
        score = np.nanmax(np.abs(matrix), axis=0)
        k = min(max_neurons, n)
        cols = sorted(int(i) for i in np.argsort(-np.nan_to_num(score, nan=-1.0), kind="stable")[:k])
        ranges = [(c, c + 1) for c in cols]
        values = matrix[:, cols]
        col_desc = f"top {len(cols)} of {n} neurons by |{stat}|"
    else:
        raise InputError(f"select must be 'top' or 'bins', not {select!r}")
    labels = [f"{a}–{b - 1}" if b - a > 1 else f"N{a}" for a, b in ranges]
    return Grid(values=values, row_labels=[site_label(s) for s in sites], col_labels=labels, col_ranges=ranges,
                title=f"{STATS[stat].capitalize()} per neuron · {len(sites)} layer{'s' if len(sites) > 1 else ''} × "
                f"{col_desc}", row_title="layer", col_title="neuron" if neurons is not None or select == "top"
                else "neurons (bins)", cbar_label=STATS[stat], row_sites=list(sites),
                from_zero=stat != "frac_active")


def _tick_step(n: int, room: int) -> int:
    return max(1, math.ceil(n / room))


def draw_grid(fig: Figure | SubFigure, ax: Axes, grid: Grid, *, title: bool = True) -> Any:
    """Draw ``grid`` on ``ax`` with a colorbar; returns the image."""
    norm, cmap, extend, clip = value_scale(grid.values, from_zero=grid.from_zero)
    cm = colormap(cmap).with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(grid.values), aspect="auto", cmap=cm, norm=norm, interpolation="nearest")
    n_rows, n_cols = grid.values.shape
    row_step = _tick_step(n_rows, 90)
    ax.set_yticks(range(0, n_rows, row_step), [grid.row_labels[i] for i in range(0, n_rows, row_step)],
                  fontsize=8 if n_rows > 20 else 9, fontfamily="DejaVu Sans Mono" if grid.site else None)
    # Bins labelled "960–983" need room; single neurons "N960" less.
    room = 40 if any("–" in lab for lab in grid.col_labels) else 70
    col_step = _tick_step(n_cols, room)
    rotate = 90 if n_cols > 12 or max(len(lab) for lab in grid.col_labels) > 6 else 0
    ax.set_xticks(range(0, n_cols, col_step), [grid.col_labels[j] for j in range(0, n_cols, col_step)],
                  rotation=rotate, fontsize=8)
    ax.set_xlabel(grid.col_title + (f" (1 in {col_step} labelled)" if col_step > 1 else ""))
    ax.set_ylabel(grid.row_title + (" (lines separate texts)" if grid.separators else ""))
    for y in grid.separators:
        ax.axhline(y, color="black", linewidth=1.2)
    ax.tick_params(length=2)
    if cmap == "RdBu_r":
        note = f"\n(colour clipped at ±{clip:.3g})" if clip else ""
    else:
        note = f"\n(colour range {norm.vmin:.3g}–{norm.vmax:.3g})" if extend != "neither" else ""
    label = grid.cbar_label + note
    fig.colorbar(image, ax=ax, extend=extend, shrink=0.9 if n_rows > 8 else 1.0, pad=0.01, label=label,
                 aspect=30 if n_rows > 8 else 10)
    if title:
        ax.set_title(grid.title, fontsize=11, loc="left")
    return image


def heatmap_figure(grid: Grid) -> Figure:
    n_rows, n_cols = grid.values.shape
    width = min(16.0, max(7.5, 2.6 + 0.2 * n_cols))
    height = min(20.0, max(3.6, 1.9 + 0.17 * n_rows))
    fig = new_figure(width, height)
    ax = fig.add_subplot()
    draw_grid(fig, ax, grid)
    return fig


# -- polysemantic overview ---------------------------------------------------------------------------------
def _mark_columns(ax: Axes, grid: Grid, marked: list[int]) -> None:
    cols = sorted({j for j in (grid.column_of(m) for m in marked) if j is not None})
    n_rows = grid.values.shape[0]
    for j in cols:
        ax.add_patch(Rectangle((j - 0.5, -0.5), 1, n_rows, fill=False, edgecolor=MARK, linewidth=2.0, clip_on=False))
    ticks = [int(round(t)) for t in ax.get_xticks()]
    texts = [t.get_text() for t in ax.get_xticklabels()]
    marked_ticks = [i for i, t in enumerate(ticks) if t in cols]
    for i in marked_ticks:
        texts[i] = "★" + texts[i]
    ax.set_xticks(ticks, texts)
    labels = ax.get_xticklabels()
    for i in marked_ticks:
        labels[i].set_color(MARK)
        labels[i].set_fontweight("bold")


def _mark_cells(ax: Axes, grid: Grid, cells: list[tuple[int, int, str]]) -> None:
    """Number the marked cells; several neurons in one cell share one marker listing their numbers."""
    by_cell: dict[tuple[int, int], list[str]] = {}
    for row, col, tag in cells:
        by_cell.setdefault((row, col), []).append(tag)
    for (row, col), tags in by_cell.items():
        ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor=MARK, linewidth=2.0))
        ax.annotate(",".join(tags), (col, row - 0.5), xytext=(0, 3), textcoords="offset points", ha="center",
                    va="bottom", fontsize=8, fontweight="bold", color=MARK, annotation_clip=False,
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": MARK, "linewidth": 0.8})


def _mode_lines(mode: Any) -> tuple[str, str]:
    """Two lines about a mode: its tokens and effect, then one example with the token in [brackets]."""
    parts = []
    tops = [token_label(t, 12) for t in list(getattr(mode, "top_tokens", []) or [])[:6]]
    if tops:
        parts.append("top tokens: " + ", ".join(tops))
    n_ex = getattr(mode, "n_examples", None)
    if n_ex is not None:
        parts.append(f"{n_ex} contexts")
    concept = getattr(mode, "probe_concept", None)
    if concept:
        sim = getattr(mode, "probe_similarity", None)
        parts.append(f"probe: {concept}" + (f" ({sim:.2f})" if isinstance(sim, (int, float)) else ""))
    effect = getattr(mode, "effect", None)
    if effect is not None:
        parts.append(f"ablation effect {effect:+.3g} nats/token")
    examples = list(getattr(mode, "examples", []) or [])
    example = ""
    if examples:
        ex = examples[0]
        text = str(getattr(ex, "text", "")).replace("\n", "↵").replace("\t", "⇥")
        # keep the marked token in view: cut the context around [[token]]
        at = text.find("[[")
        if at > 60:
            text = "…" + text[at - 55:]
        example = f"e.g. “{shorten(text, 120)}”"
        value = getattr(ex, "value", None)
        if isinstance(value, (int, float)):
            example += f" = {value:.3g}"
    return mpl_text("  |  ".join(parts)), mpl_text(example)


def draw_modes(panel: Figure | SubFigure, verdict: Any, number: int | None = None) -> None:
    """One neuron's modes on ``panel``: share bars on the left, each mode's details on the right."""
    bar_ax, text_ax = panel.subplots(1, 2, width_ratios=[1, 3.2])
    modes = list(getattr(verdict, "modes", []) or [])
    colors = [colormap("tab10")(i % 10) for i in range(len(modes))]
    ys = np.arange(len(modes))
    shares = [float(getattr(m, "share", 0.0)) for m in modes]
    bar_ax.barh(ys, shares, color=colors, height=0.62)
    bar_ax.set_xlim(0, 1)
    bar_ax.set_ylim(max(len(modes), 1) - 0.5, -0.5)
    text_ax.set_ylim(max(len(modes), 1) - 0.5, -0.5)
    bar_ax.set_yticks(ys, [mpl_text(shorten(str(getattr(m, "label", f"mode {i}")), 24)) for i, m in enumerate(modes)],
                      fontsize=9)
    bar_ax.set_xticks([0, 0.5, 1], ["0", "50%", "100%"], fontsize=7)
    bar_ax.tick_params(length=2)
    for y, share in zip(ys, shares, strict=True):
        inside = share > 0.2
        bar_ax.text(share - 0.02 if inside else share + 0.02, y, f"{share:.0%}", va="center",
                    ha="right" if inside else "left", fontsize=8, color="white" if inside else "black")
    text_ax.axis("off")
    text_ax.set_xlim(0, 1)
    for y, mode in zip(ys, modes, strict=True):
        first, second = _mode_lines(mode)
        text_ax.text(0, y - 0.17, first, va="center", ha="left", fontsize=8.5)
        text_ax.text(0, y + 0.2, second, va="center", ha="left", fontsize=8.5, color="#333333", style="italic")
    if not modes:
        text_ax.text(0, 0, "no modes given", va="center", color="#777777")
    title = verdict_title(verdict, number)
    summary = str(getattr(verdict, "summary", "") or "")
    panel.suptitle(mpl_text(title + ("\n" + shorten(summary, 170) if summary else "")), x=0.005, ha="left",
                   fontsize=9.5, linespacing=1.5)


def highlight_figure(src: Source, verdicts: list[Any], *, layer: Any = None, max_panels: int = 6,
                     max_neurons: int = 32, stat: str = "max") -> Figure:
    """The heatmap with the detected neurons marked, then a panel per neuron (highest score first)."""
    if not verdicts:
        raise InputError("no polysemantic neurons to highlight")
    ordered = sorted(verdicts, key=lambda v: -float(getattr(v, "score", 0.0) or 0.0))
    keys = [src.neuron_key(v) for v in ordered]
    shown = ordered[:max_panels]
    if isinstance(src, RecordSource):
        if layer is None:  # the site with most detections
            sites = [k[0] for k in keys]
            site = max(dict.fromkeys(sites), key=sites.count)
        else:
            site = src.site(layer)
        marked = [i for s, i in keys if s == site]
        grid = record_grid(src, site, max_neurons=max(max_neurons, len(marked[:max_neurons])), select="top",
                           include=marked)
        others = len(keys) - len(marked)
        grid.title = (f"Polysemantic neurons of {site_label(site)} (★, boxed) among the {grid.title.split(' × ')[-1]}"
                      + (f"; {others} more on other layers" if others else ""))
        cells: list[tuple[int, int, str]] = []
    elif isinstance(src, ProfileSource):
        sites = src.site_names if layer is None else [src.site(layer)]
        grid = profile_grid(src, sites, max_neurons=64, select="bins", stat=stat)
        cells = []
        for number, (s, i) in enumerate(keys[:max_panels], start=1):
            col = grid.column_of(i)
            if s in sites and col is not None:
                cells.append((sites.index(s), col, str(number)))
        grid.title = f"Polysemantic neurons (numbered boxes) · {grid.title}"
        marked = []
    else:
        raise InputError(f"cannot draw from a {type(src).__name__}")
    n_rows = grid.values.shape[0]
    heat_h = min(9.0, max(3.6, 1.9 + 0.17 * n_rows + (0.35 if cells else 0)))
    panel_hs = [0.95 + 0.55 * max(len(getattr(v, "modes", []) or []), 1) for v in shown]
    fig = new_figure(14, heat_h + sum(panel_hs) + 0.4)
    parts = fig.subfigures(2, 1, height_ratios=[heat_h, sum(panel_hs) + 0.4], squeeze=False)[:, 0]  # [2]
    top, bottom = parts[0], parts[1]
    ax = top.add_subplot()
    draw_grid(top, ax, grid)
    if marked:
        _mark_columns(ax, grid, marked)
    if cells:
        _mark_cells(ax, grid, cells)
    panels = bottom.subfigures(len(shown), 1, height_ratios=panel_hs, squeeze=False)[:, 0]
    for k, (panel, verdict) in enumerate(zip(panels, shown, strict=True)):
        draw_modes(panel, verdict, number=k + 1 if cells else None)
    more = f" (the {len(shown)} highest scores of {len(ordered)})" if len(ordered) > len(shown) else ""
    bottom.suptitle(f"Modes of each detected neuron{more}: share of activation mass, top tokens, an example",
                    x=0.01, ha="left", fontsize=11)
    return fig
