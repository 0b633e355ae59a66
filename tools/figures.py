"""Tools: pictures of the profile and the detections, and the interactive neuron dashboard.

Usage::

    call_tool(ctx, "make_figure", {"kind": "heatmap", "layer": 6})                   # figures/heatmap_L6.png
    call_tool(ctx, "make_figure", {"kind": "token_activations", "neuron": "L6/N12"})
    call_tool(ctx, "make_dashboard", {"max_pages": 12})                             # figures/dashboard/index.html

PNG files are rendered in memory and written atomically through the run folder; the dashboard folder is built aside
and swapped in whole.
"""

from __future__ import annotations

import io
import warnings
from typing import Any, Literal

from pydantic import BaseModel, Field

from neuron_core.errors import InputError
from neuron_core.store import atomic_dir
from tools._base import StrictArgs, ToolContext, register
from tools.neurons import parse_ref, site_label, site_ref
from tools.polysemantic import load_detections

__all__ = ["FigureArgs", "FigureResult", "DashboardArgs", "DashboardResult", "FIGURE_KINDS"]

FigureKind = Literal["heatmap", "highlight", "mode_shares", "sparsity", "histogram", "token_activations",
                     "logit_effects"]
FIGURE_KINDS: tuple[str, ...] = ("heatmap", "highlight", "mode_shares", "sparsity", "histogram", "token_activations",
                                 "logit_effects")
_NEEDS_NEURON = {"histogram", "token_activations"}
_NEEDS_DETECTIONS = {"highlight", "mode_shares"}


class FigureArgs(StrictArgs):
    kind: FigureKind
    layer: int | None = Field(default=None, ge=-64, le=256, description="layer for heatmap/highlight")
    neuron: str | None = Field(default=None, max_length=40, description="neuron id (L6/N12) for histogram and "
                               "token_activations")


class FigureResult(BaseModel):
    kind: str
    artifact: str
    caption: str
    headline: str


def _polysemantic(ctx: ToolContext, site: str | None = None) -> list[Any]:
    """Detected polysemantic verdicts (by score), of one site or all."""
    ids = {f.subject for f in ctx.findings.by_kind("polysemantic")}
    out = [v for s, verdicts in load_detections(ctx).items() if site in (None, s) for v in verdicts if v.ref in ids]
    return sorted(out, key=lambda v: -v.score)


def _png(ctx: ToolContext, fig: Any, relative: str) -> str:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # corpus tokens in scripts the font lacks are drawn as boxes; that is fine
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from font")
        fig.savefig(buffer, format="png", dpi=110, facecolor="white")
    ctx.run.write_bytes(relative, buffer.getvalue())
    return relative


@register("make_figure", "Draw one figure into figures/: heatmap (a layer's neurons), highlight (polysemantic "
          "neurons marked, a panel each), mode_shares, sparsity, histogram / token_activations (one neuron), "
          "logit_effects.", FigureArgs, FigureResult)
def make_figure(ctx: ToolContext, args: FigureArgs) -> FigureResult:
    from neuron_core.viz import ActivationVisualizer, plot_logit_effects, plot_mode_shares

    prof = ctx.require_profile()
    viz = ActivationVisualizer(prof)
    kind = args.kind
    if kind in _NEEDS_NEURON and not args.neuron:
        raise InputError(f"a {kind} figure needs neuron='L6/N12'")
    site = prof[args.layer].name if args.layer is not None else (prof.site_names[0] if len(prof.site_names) == 1
                                                                  else None)
    label = site_label(site) if site else "all"
    if kind == "heatmap":
        fig = viz.plot_heatmap(site)
        name, caption = f"heatmap_{label}", f"Activation statistics of the neurons of {label} over the corpus."
    elif kind == "highlight":
        verdicts = _polysemantic(ctx, site)
        if not verdicts:
            raise InputError("no polysemantic neurons detected (yet): run detect_polysemantic first")
        fig = viz.highlight_polysemantic(verdicts, layer=site)
        name, caption = f"polysemantic_{label}", f"Polysemantic neurons of {label} and their modes."
    elif kind == "mode_shares":
        verdicts = _polysemantic(ctx, site)
        if not verdicts:
            raise InputError("no polysemantic neurons detected (yet): run detect_polysemantic first")
        fig = plot_mode_shares(verdicts)
        name, caption = f"mode_shares_{label}", "Share of each mode in the polysemantic neurons' activation."
    elif kind == "sparsity":
        fig = viz.plot_sparsity()
        name, caption = "sparsity", "Fraction of tokens on which neurons are active, and dead/dense neurons."
    elif kind in _NEEDS_NEURON:
        s, n = parse_ref(ctx, args.neuron or "")
        ref = site_ref(s, n)
        slug = ref.replace("/", "_")
        if kind == "histogram":
            fig = viz.plot_histogram(s, n)
            name, caption = f"histogram_{slug}", f"Distribution of {ref}'s activations over the corpus."
        else:
            fig = viz.plot_token_activations(ref)
            name, caption = f"tokens_{slug}", f"{ref} on its strongest contexts, token by token."
    else:  # logit_effects
        effects = list(ctx.logit.values())
        if not effects:
            raise InputError("no logit effects computed (yet): run logit_effects first")
        fig = plot_logit_effects(effects)
        name, caption = "logit_effects", "Tokens the neurons most promote and suppress (direct path)."
    artifact = _png(ctx, fig, f"figures/{name}.png")
    return FigureResult(kind=kind, artifact=artifact, caption=caption, headline=f"wrote {artifact}")


class DashboardArgs(StrictArgs):
    max_pages: int = Field(default=12, ge=1, le=100)
    neurons: list[str] | None = Field(default=None, max_length=20, description="neuron ids that must have a page "
                                      "(besides the detected ones); default: detected, then most active")


class DashboardResult(BaseModel):
    artifact: str
    pages: list[str]
    headline: str


@register("make_dashboard", "Write the interactive HTML dashboard (overview + one page per investigated neuron) "
          "into figures/dashboard/.", DashboardArgs, DashboardResult)
def make_dashboard(ctx: ToolContext, args: DashboardArgs) -> DashboardResult:
    from neuron_core.viz import ActivationVisualizer

    prof = ctx.require_profile()
    viz = ActivationVisualizer(prof)
    verdicts = _polysemantic(ctx)
    target = ctx.run.path_for("figures/dashboard")
    chosen = None  # the default choice: detected, then most active
    if args.neurons:
        chosen = list(dict.fromkeys([*args.neurons, *(v.ref for v in verdicts)]))[:max(args.max_pages,
                                                                                       len(args.neurons))]
    with atomic_dir(target) as tmp:
        viz.save_dashboard(tmp, chosen, detections=verdicts or None, logit_effects=list(ctx.logit.values()) or None,
                           max_pages=args.max_pages, title=f"Neurons of {prof.meta.get('model', 'the model')}")
    pages = sorted(p.name for p in target.glob("neuron_*.html"))
    return DashboardResult(artifact="figures/dashboard/index.html", pages=[f"figures/dashboard/{p}" for p in pages],
                           headline=f"dashboard with {len(pages)} neuron pages")


def dashboard_page(ctx: ToolContext, ref: str) -> str | None:
    """Relative path of a neuron's dashboard page, if it was written."""
    from neuron_core.viz._dashboard import page_name

    site, neuron = parse_ref(ctx, ref)
    rel = f"figures/dashboard/{page_name(site, neuron)}"
    return rel if ctx.run.path_for(rel).exists() else None
