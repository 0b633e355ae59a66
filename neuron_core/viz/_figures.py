"""Figure plumbing shared by the plots: headless figures, saving, colour scales.

Usage::

    fig = new_figure(8, 4)                       # a matplotlib Figure that needs no pyplot and no display
    save(fig, "/tmp/x.svg")                      # PNG, SVG or PDF by the suffix
    norm, cmap, extend, clip = value_scale(values)   # diverging and centred on 0 when any value is negative
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib.colors import CenteredNorm, Colormap, Normalize
from matplotlib.figure import Figure

from neuron_core.errors import InputError

__all__ = ["new_figure", "save", "finish", "value_scale", "text_color", "SIGN_COLORS"]

_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
SIGN_COLORS = {"neg": "#4575b4", "zero": "#9e9e9e", "pos": "#d73027"}  # the ends of RdBu_r


def new_figure(width: float, height: float, *,
               layout: Literal["constrained", "compressed", "tight"] | None = "constrained") -> Figure:
    """A Figure not registered with pyplot: no display needed, nothing kept alive by a global state."""
    return Figure(figsize=(width, height), layout=layout, facecolor="white")


def save(fig: Figure, path: str | Path, *, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` (.png, .svg or .pdf; folders are created) and return the path."""
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"save as .png, .svg or .pdf, not {path.suffix or 'no suffix'!r} ({path})")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=fmt, dpi=dpi, facecolor="white")
    return path


def finish(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        save(fig, path)
    return fig


def value_scale(values: np.ndarray, clip_quantile: float = 0.995, *, sequential: str = "viridis",
                force_signed: bool = False, from_zero: bool = True) -> tuple[Normalize, str, str, float | None]:
    """(norm, cmap name, colorbar extend, clip value or None) for ``values``.

    Signed data (any value < 0, or ``force_signed``) gets "RdBu_r" with a norm centred on 0; otherwise a sequential
    map from 0 (``from_zero``) or from the low quantile. The range is the ``clip_quantile`` of |values| so that one
    outlier does not wash out the rest.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        v = np.zeros(1)
    signed = force_signed or bool((v < 0).any())
    mags = np.abs(v)
    top = float(mags.max())
    half = float(np.quantile(mags, clip_quantile)) if v.size > 1 else top
    if half <= 0:
        half = top if top > 0 else 1.0
    clipped = half < top * (1 - 1e-9)
    if signed:
        extend = "both" if clipped else "neither"
        return CenteredNorm(vcenter=0.0, halfrange=half), "RdBu_r", extend, (half if clipped else None)
    if not from_zero:
        low = float(np.quantile(v, 1 - clip_quantile)) if v.size > 1 else float(v.min())
        low_clipped = low > float(v.min())
        extend = {(True, True): "both", (True, False): "min", (False, True): "max"}.get((low_clipped, clipped),
                                                                                         "neither")
        return Normalize(vmin=low, vmax=max(half, low + 1e-12)), sequential, extend, (half if clipped else None)
    return Normalize(vmin=0.0, vmax=half), sequential, ("max" if clipped else "neither"), (half if clipped else None)


def text_color(rgba: tuple[float, ...]) -> str:
    """Black or white, whichever reads better on ``rgba``."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def colormap(name: str) -> Colormap:
    import matplotlib

    return matplotlib.colormaps[name]
