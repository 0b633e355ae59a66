"""ActivationVisualizer: every picture of a record or a profile behind one object.

Usage::

    viz = ActivationVisualizer(record)                 # or a NeuronProfile / SiteProfile
    fig = viz.plot_heatmap("layer 6")                   # a matplotlib Figure; shows itself in a notebook
    viz.plot_token_activations("L6/N12", path="n12.svg")
    viz.save_dashboard("out/", detections=verdicts)     # -> out/index.html, one page per neuron
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from matplotlib.figure import Figure

from neuron_core.capture import ActivationRecord
from neuron_core.errors import InputError
from neuron_core.profile import NeuronProfile, SiteProfile
from neuron_core.sites import Site
from neuron_core.viz._distributions import histogram_figure, logit_effects_figure, mode_shares_figure, sparsity_figure
from neuron_core.viz._figures import finish
from neuron_core.viz._heatmaps import heatmap_figure, highlight_figure, profile_grid, record_grid
from neuron_core.viz._source import ProfileSource, RecordSource, Source, as_source
from neuron_core.viz._tokens import token_figure
from neuron_core.viz._types import as_neurons

__all__ = ["ActivationVisualizer"]

Layer = str | int | Site
PathLike = str | Path


class ActivationVisualizer:
    """Pictures of an :class:`ActivationRecord` (every token's activation) or a :class:`NeuronProfile`
    (per-neuron statistics and examples over a corpus). Every ``plot_*`` returns a matplotlib Figure and, given
    ``path=`` (.png, .svg or .pdf), also saves it. Neurons are written ``"L6/N12"`` or as an int with ``layer=``.
    """

    def __init__(self, source: ActivationRecord | NeuronProfile | SiteProfile) -> None:
        self.source: Source = as_source(source)

    @property
    def kind(self) -> str:
        """"record" or "profile"."""
        return self.source.kind

    # -- heatmaps -------------------------------------------------------------------------------------------
    def plot_heatmap(self, layer: Layer | Sequence[Layer] | None = None, neurons: Sequence[int] | None = None,
                     max_neurons: int | None = None, *, select: Literal["top", "bins"] | None = None,
                     stat: str = "max", text: int | str | None = None, max_tokens: int = 64,
                     path: PathLike | None = None) -> Figure:
        """Record: tokens × neurons of ``layer`` (``text`` picks one text; the first ``max_tokens`` tokens).
        Profile: layers × neurons of ``stat`` ("max", "mean", "frac_active", "std", "min"), every profiled layer
        when ``layer`` is None.

        Columns: ``neurons`` if given, else ``select="top"`` (the ``max_neurons`` most active; default for records,
        40) or ``select="bins"`` (``max_neurons`` bins of neighbouring neurons; default for profiles, 64).
        """
        src = self.source
        if isinstance(src, RecordSource):
            if text is not None and not isinstance(text, (int, str)):
                raise InputError("text must be a text's index or the text itself")
            site = src.site(layer)  # type: ignore[arg-type]
            grid = record_grid(src, site, neurons=neurons, max_neurons=max_neurons or 40, select=select or "top",
                               text=text, max_tokens=max_tokens)
        elif isinstance(src, ProfileSource):
            if text is not None:
                raise InputError("a profile keeps no texts: text= only applies to a record")
            if layer is None:
                sites = src.site_names
            elif isinstance(layer, (list, tuple)):
                sites = [src.site(x) for x in layer]
            else:
                sites = [src.site(layer)]  # type: ignore[arg-type]
            grid = profile_grid(src, sites, neurons=neurons, max_neurons=max_neurons or 64, select=select or "bins",
                                stat=stat)
        else:
            raise InputError(f"cannot draw from a {type(src).__name__}")
        return finish(heatmap_figure(grid), path)

    def highlight_polysemantic(self, result: Any, layer: Layer | None = None, *, max_panels: int = 6,
                               max_neurons: int = 32, path: PathLike | None = None) -> Figure:
        """The heatmap with detected neurons marked (record: ★ boxed columns; profile: numbered cells), then one
        panel per neuron with its modes: label, share, top tokens, an example, the ablation effect when measured.
        ``result``: a list of PolysemanticNeuron, one, or an object with ``.neurons``."""
        verdicts = as_neurons(result)
        return finish(highlight_figure(self.source, verdicts, layer=layer, max_panels=max_panels,
                                       max_neurons=max_neurons), path)

    # -- one neuron -----------------------------------------------------------------------------------------
    def plot_token_activations(self, neuron: int | str | Any, text: int | str | None = None,
                               layer: Layer | None = None, *, max_tokens: int = 160, n_examples: int = 8,
                               path: PathLike | None = None) -> Figure:
        """Tokens as boxes coloured by the neuron's activation, and a bar per token. Record: ``text`` (index or
        the text) or, when None, the text where the neuron peaks. Profile: its top ``n_examples`` contexts."""
        site, index = self.source.neuron_key(neuron, layer)
        return finish(token_figure(self.source, site, index, text=text, max_tokens=max_tokens,
                                   n_examples=n_examples), path)

    def plot_histogram(self, layer: Layer | None = None, neuron: int | str | None = None, *,
                       log_counts: bool | None = None, path: PathLike | None = None) -> Figure:
        """Histogram of one neuron's activations: ``plot_histogram("layer 6", 12)`` or ``plot_histogram(
        neuron="L6/N12")``. Profiles use their signed log-spaced bins (one bar per bin, decades labelled)."""
        if neuron is None:
            if isinstance(layer, str) and "/" in layer:
                layer, neuron = None, layer
            else:
                raise InputError("name a neuron: plot_histogram('layer 6', 12) or plot_histogram(neuron='L6/N12')")
        site, index = self.source.neuron_key(neuron, layer)
        return finish(histogram_figure(self.source, site, index, log_counts=log_counts), path)

    # -- summaries ------------------------------------------------------------------------------------------
    def plot_sparsity(self, *, path: PathLike | None = None) -> Figure:
        """Per layer: the spread of the neurons' fraction of tokens active, and the share of dead / dense neurons."""
        return finish(sparsity_figure(self.source), path)

    def plot_mode_shares(self, result: Any, *, max_neurons: int = 20, path: PathLike | None = None) -> Figure:
        """One bar per detected neuron split into its modes' shares."""
        return finish(mode_shares_figure(result, max_neurons=max_neurons), path)

    def plot_logit_effects(self, effects: Any, *, top_k: int = 10, max_neurons: int = 6,
                           path: PathLike | None = None) -> Figure:
        """Tokens each neuron suppresses and promotes (NeuronLogitEffects, or objects with the same attributes)."""
        return finish(logit_effects_figure(effects, top_k=top_k, max_neurons=max_neurons), path)

    # -- HTML -----------------------------------------------------------------------------------------------
    def save_dashboard(self, folder: PathLike, neurons: Sequence[Any] | None = None, detections: Any = None,
                       logit_effects: Any = None, *, max_pages: int = 20, title: str | None = None) -> Path:
        """Write ``index.html`` (layer overview: heatmap and a sortable table) and one page per neuron into
        ``folder``; return the overview's path. Default neurons: the detected ones (by score), then the most
        active, up to ``max_pages``. The pages open from disk with no network."""
        from neuron_core.viz._dashboard import write_dashboard

        return write_dashboard(self.source, Path(folder), neurons=neurons, detections=detections,
                               logit_effects=logit_effects, max_pages=max_pages, title=title)


def plot_mode_shares(result: Any, *, max_neurons: int = 20, path: PathLike | None = None) -> Figure:
    """Module-level :meth:`ActivationVisualizer.plot_mode_shares` (needs no record or profile)."""
    return finish(mode_shares_figure(result, max_neurons=max_neurons), path)


def plot_logit_effects(effects: Any, *, top_k: int = 10, max_neurons: int = 6, path: PathLike | None = None) -> Figure:
    """Module-level :meth:`ActivationVisualizer.plot_logit_effects` (needs no record or profile)."""
    return finish(logit_effects_figure(effects, top_k=top_k, max_neurons=max_neurons), path)
