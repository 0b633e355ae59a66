"""Neuron statistics as tables: the profile per neuron, dead / dense / outlier neurons, per-layer summaries.

Usage::

    neuron_table(prof)        # one row per (site, neuron): count, mean, std, min, max, frac_active, flags
    layer_summary(prof)       # one row per site
"""

from __future__ import annotations

from typing import Any

import numpy as np

from neuron_core.profile import NeuronProfile
from neuron_core.sites import NeuronRef

__all__ = ["neuron_table", "layer_summary"]


def neuron_table(profile: NeuronProfile, *, dead_below: float = 1e-4, dense_above: float = 0.5,
                 outlier_z: float = 6.0) -> Any:
    """A tidy DataFrame over every profiled neuron.

    dead: active on fewer than ``dead_below`` of tokens (or never); dense: active on more than ``dense_above``;
    outlier: a maximum more than ``outlier_z`` robust standard deviations (median absolute deviation) above the
    site's median maximum. Neurons with non-finite activations keep their counts in ``n_nonfinite``.
    """
    import pandas as pd

    frames = []
    for site in profile.site_names:
        frame = profile[site].table()
        layer = int(site.split(".")[1]) if site.startswith("blocks.") else -1
        frame.insert(1, "layer", layer)
        frame.insert(3, "ref", [str(NeuronRef(layer if layer >= 0 else None, n, site))
                                  for n in frame["neuron"]])
        maxes = frame["max"].to_numpy()
        finite = np.isfinite(maxes)
        med = np.median(maxes[finite]) if finite.any() else 0.0
        mad = np.median(np.abs(maxes[finite] - med)) * 1.4826 if finite.any() else 0.0
        frac = frame["frac_active"].fillna(0.0)
        frame["dead"] = frac < dead_below
        frame["dense"] = frac > dense_above
        frame["outlier"] = finite & (maxes > med + outlier_z * max(mad, 1e-12))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def layer_summary(profile: NeuronProfile, **kwargs: Any) -> Any:
    """One row per site: neurons, dead / dense / outlier counts, mean sparsity, median and max activation."""
    table = neuron_table(profile, **kwargs)
    grouped = table.groupby(["site", "layer"], sort=False)
    out = grouped.agg(n_neurons=("neuron", "size"), n_dead=("dead", "sum"), n_dense=("dense", "sum"),
                      n_outlier=("outlier", "sum"), mean_frac_active=("frac_active", "mean"),
                      median_max=("max", "median"), max_max=("max", "max"),
                      n_nonfinite=("n_nonfinite", "sum")).reset_index()
    out["n_tokens"] = profile.n_tokens
    return out
