"""One neuron over text: tokens drawn as boxes coloured by activation, with a bar per token below.

Usage (through :class:`~neuron_core.viz.ActivationVisualizer`)::

    viz.plot_token_activations("L6/N12")              # record: the text where the neuron peaks
    viz.plot_token_activations(12, text=1, layer=6)   # record: text 1 (an index, or the text itself)
    viz.plot_token_activations("L6/N12")              # profile: the neuron's top examples, one per line

Token boxes are laid out in monospace so their widths are known before drawing (no renderer needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from neuron_core.errors import InputError
from neuron_core.viz._figures import colormap, new_figure, text_color, value_scale
from neuron_core.viz._source import RecordSource, Source, TokenExample
from neuron_core.viz._text import mpl_text, shorten, strip_text, token_label
from neuron_core.viz._types import neuron_ref

__all__ = ["token_figure", "Box", "layout_boxes"]

FONT = 10.0  # points
CHAR = 0.6021 * FONT  # advance of one DejaVu Sans Mono character, points
LINE = 0.29  # inches per strip line
WIDTH = 12.0  # figure width, inches
LEFT, RIGHT = 0.25, 0.25  # margins, inches


@dataclass(frozen=True)
class Box:
    """One token box: x, width in characters, line number, text, value (None: not known), emphasised."""

    x: float
    width: float
    line: int
    text: str
    value: float | None
    strong: bool


def layout_boxes(lines: list[list[tuple[str, float | None, bool]]], line_chars: int, indent: int = 0
                 ) -> tuple[list[Box], int, list[int]]:
    """Flow each strip of (token, value, strong) into lines of ``line_chars`` characters, every strip starting on a
    new line; a newline token ends its line. Returns the boxes, the number of lines, and each strip's first line."""
    boxes: list[Box] = []
    starts: list[int] = []
    line = 0
    for tokens in lines:
        starts.append(line)
        x = float(indent)
        for token, value, strong in tokens:
            # A token with newlines draws as several boxes: "↵" ends a line, what follows starts the next.
            pieces = token.split("\n") if token else [""]
            for k, piece in enumerate(pieces):
                last = k == len(pieces) - 1
                raw = piece + ("" if last else "\n")
                if raw == "" and len(pieces) > 1:
                    continue
                text = shorten(strip_text(raw), line_chars - indent - 1)
                width = len(text) + 0.3
                if x + width > line_chars and x > indent:
                    line, x = line + 1, float(indent)
                boxes.append(Box(x, width, line, text, value, strong))
                x += width + 0.15
                if not last:
                    line, x = line + 1, float(indent)
        if x > indent or not tokens:
            line += 1
    return boxes, max(line, 1), starts


def _draw_boxes(ax: Axes, boxes: list[Box], n_lines: int, line_chars: int, norm: Normalize, cmap: str,
                prefixes: list[tuple[int, str]]) -> None:
    cm = colormap(cmap)
    ax.set_xlim(0, line_chars)
    ax.set_ylim(n_lines, 0)
    ax.axis("off")
    for box in boxes:
        face: Any
        edge: Any
        if box.value is None or not np.isfinite(box.value):
            face, edge, color = "white", "#bbbbbb", "#555555"
        else:
            face = cm(norm(box.value))
            edge, color = ("black" if box.strong else face), text_color(face)
        ax.add_patch(FancyBboxPatch((box.x, box.line + 0.12), box.width, 0.76,
                                    boxstyle="round,pad=0,rounding_size=0.15", facecolor=face, edgecolor=edge,
                                    linewidth=1.4 if box.strong else 0.6))
        ax.text(box.x + box.width / 2, box.line + 0.52, mpl_text(box.text), ha="center", va="center",
                fontsize=FONT, fontfamily="DejaVu Sans Mono", color=color,
                fontweight="bold" if box.strong else "normal")
    for line, text in prefixes:
        ax.text(0, line + 0.52, text, ha="left", va="center", fontsize=FONT - 1, fontfamily="DejaVu Sans Mono",
                color="#333333")


def _record_strip(src: RecordSource, site: str, neuron: int, text: int | str | None, max_tokens: int
                  ) -> tuple[list[list[tuple[str, float | None, bool]]], list[str], np.ndarray, str]:
    doc = src.doc_index(text, site, neuron)
    rows = src.doc_rows(doc)  # [T]
    values = src.acts(site)[rows, neuron]
    note = f"text #{doc}" + (" (where it peaks)" if text is None else "")
    if len(rows) > max_tokens:
        peak = int(np.nanargmax(values))
        start = min(max(peak - max_tokens // 2, 0), len(rows) - max_tokens)
        rows, values = rows[start:start + max_tokens], values[start:start + max_tokens]
        note += f", tokens {start}–{start + max_tokens - 1} of {len(src.doc_rows(doc))}"
    tokens = [src.tokens[r] for r in rows]
    peak_idx = int(np.nanargmax(values))
    strip: list[tuple[str, float | None, bool]] = [
        (t, float(v), i == peak_idx) for i, (t, v) in enumerate(zip(tokens, values, strict=True))]
    return [strip], tokens, values, note


def _example_strips(examples: list[TokenExample]) -> list[list[tuple[str, float | None, bool]]]:
    return [[(t, v, i == ex.index) for i, (t, v) in enumerate(zip(ex.tokens, ex.values, strict=True))]
            for ex in examples]


def _draw_bars(fig: Figure, values: np.ndarray, bar_labels: list[str], bar_title: str, scale: tuple[Any, Any],
               rotate: int, sizes: tuple[float, float, float]) -> None:
    """The bar view under the token strip: one bar per token, coloured on the strip's scale."""
    norm, cmap = scale
    label_room, bar_h, height = sizes
    bar_ax = fig.add_axes((0.7 / WIDTH, label_room / height, (WIDTH - 0.95) / WIDTH, bar_h / height))
    cm = colormap(cmap)
    xs = np.arange(len(values))
    bar_ax.bar(xs, values, color=[cm(norm(v)) for v in values], edgecolor="#555555", linewidth=0.3)
    bar_ax.axhline(0, color="black", linewidth=0.6)
    bar_ax.set_xlim(-0.6, len(values) - 0.4)
    step = 1 if len(values) <= 80 else int(np.ceil(len(values) / 60))
    bar_ax.set_xticks(xs[::step], [mpl_text(bar_labels[i]) for i in xs[::step]], rotation=rotate,
                      fontsize=7.5 if len(values) > 40 else 8.5, fontfamily="DejaVu Sans Mono")
    bar_ax.set_ylabel("activation", fontsize=9)
    bar_ax.set_title(bar_title + (f" (1 in {step} tokens labelled)" if step > 1 else ""), fontsize=9, loc="left")
    bar_ax.tick_params(length=2, labelsize=8)
    for side in ("top", "right"):
        bar_ax.spines[side].set_visible(False)


def token_figure(src: Source, site: str, neuron: int, *, text: int | str | None = None, max_tokens: int = 160,
                 n_examples: int = 8) -> Figure:
    """A strip of token boxes coloured by the neuron's activation, and a bar view of the same values."""
    line_chars = int((WIDTH - LEFT - RIGHT) * 72 / CHAR)
    ref = neuron_ref(site, neuron)
    if isinstance(src, RecordSource):
        strips, tokens, values, note = _record_strip(src, site, neuron, text, max_tokens)
        prefixes = None
        bar_labels = [token_label(t, 12) for t in tokens]
        title = f"{ref} on {note}: token colour = activation (peak boxed)"
        bar_title = "activation per token"
        scale_values = src.acts(site)[:, neuron]  # one scale for every text of the record
    else:
        if text is not None:
            raise InputError("a profile keeps no full texts, only each neuron's example contexts: capture the text "
                             "in an ActivationRecord to draw it")
        examples = src.examples(site, neuron, "top", n_examples)
        if not examples:
            raise InputError(f"{ref} has no kept examples in this profile")
        strips = _example_strips(examples)
        prefixes = [f"{ex.value:7.3g}" for ex in examples]
        values = np.array([ex.value for ex in examples])
        bar_labels = [f"{token_label(ex.token, 12)} (d{ex.doc_id}:{ex.position})" for ex in examples]
        title = (f"{ref}: top {len(examples)} activating contexts (value at left; only the boxed token's "
                 "activation is kept by a profile)")
        bar_title = "activation of each example's token"
        summary = src.summary(site)
        scale_values = np.array([summary.max[neuron], summary.min[neuron]])  # the neuron's whole range
    norm, cmap, _, _ = value_scale(scale_values, clip_quantile=1.0, force_signed=True)
    indent = max((len(p) for p in prefixes), default=0) + 1 if prefixes else 0
    boxes, n_lines, starts = layout_boxes(strips, line_chars, indent)
    prefix_rows = list(zip(starts, prefixes, strict=True)) if prefixes else []
    strip_h = n_lines * LINE
    bar_h = 2.4
    rotate = 90 if len(values) > 12 else 0
    label_room = (0.95 if len(values) <= 80 else 0.6) if rotate else 0.45
    top_room, gap = 0.75, 0.5
    height = top_room + strip_h + gap + bar_h + label_room
    fig = new_figure(WIDTH, height, layout=None)
    ax = fig.add_axes((LEFT / WIDTH, (label_room + bar_h + gap) / height, (WIDTH - LEFT - RIGHT) / WIDTH,
                       strip_h / height))
    _draw_boxes(ax, boxes, n_lines, line_chars, norm, cmap, prefix_rows)
    fig.text(LEFT / WIDTH, 1 - 0.28 / height, mpl_text(title), fontsize=11, ha="left", va="center")
    cax = fig.add_axes((0.72, 1 - 0.62 / height, 0.25, 0.1 / height))
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal")
    cax.tick_params(labelsize=7, length=2)
    cax.set_title("activation", fontsize=8, pad=2)
    _draw_bars(fig, values, bar_labels, bar_title, (norm, cmap), rotate, (label_room, bar_h, height))
    return fig
