"""Self-contained HTML dashboards: an overview of the layers and one page per investigated neuron.

Usage::

    path = write_dashboard(as_source(profile), Path("out"), detections=verdicts, logit_effects=effects)
    # out/index.html           heatmap of every layer's neurons, a sortable/filterable table linking to ...
    # out/neuron_L6_N12.html   statistics, histogram, top/quantile/bottom examples, modes, logit effects
    # out/plotly.min.js        one local copy of plotly.js shared by the pages (no CDN, no network)

Every page carries a Content-Security-Policy that runs only its own scripts (by hash) and the local plotly.js.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from neuron_core.errors import InputError
from neuron_core.viz._distributions import log_bin_ticks
from neuron_core.viz._figures import colormap, value_scale
from neuron_core.viz._html import activation_style, csp, plot_text, safe_json, token_spans
from neuron_core.viz._source import STATS, RecordSource, Source
from neuron_core.viz._text import shorten, strip_text, token_label
from neuron_core.viz._types import as_logit_effects, as_neurons, neuron_ref, site_label, verdict_title

__all__ = ["write_dashboard", "page_name"]

TEMPLATES = Path(__file__).parent / "templates"
PLOTLY_FILE = "plotly.min.js"
MODE_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf"]
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
Key = tuple[str, int]


def page_name(site: str, neuron: int) -> str:
    """File name of a neuron's page: ``neuron_L6_N12.html``."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", site_label(site)).strip("-") or "site"
    return f"neuron_{slug}_N{neuron}.html"


def _fmt(value: Any, spec: str = ".3g") -> str:
    if not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(float(value)):
        return "–"
    return format(value, spec)


def _round(values: np.ndarray) -> list[Any]:
    """4 significant digits (the pages stay small); NaN -> None."""
    out = []
    for row in np.atleast_2d(values):
        out.append([None if not math.isfinite(v) else float(f"{v:.4g}") for v in row.tolist()])
    return out


# -- choosing neurons --------------------------------------------------------------------------------------
def _most_active(src: Source, taken: set[Key], count: int) -> list[Key]:
    """Round-robin over the layers, each layer's neurons by max activation (layers differ in scale)."""
    orders = {s: [int(i) for i in np.argsort(-np.nan_to_num(src.summary(s).max, nan=-np.inf), kind="stable")]
              for s in src.site_names}
    out: list[Key] = []
    cursor = dict.fromkeys(orders, 0)
    while len(out) < count and any(cursor[s] < len(orders[s]) for s in orders):
        for s in src.site_names:
            while cursor[s] < len(orders[s]) and (s, orders[s][cursor[s]]) in taken:
                cursor[s] += 1
            if cursor[s] < len(orders[s]) and len(out) < count:
                key = (s, orders[s][cursor[s]])
                out.append(key)
                taken.add(key)
                cursor[s] += 1
    return out


def _choose_pages(src: Source, neurons: Sequence[Any] | None, verdicts: dict[Key, Any], effects: dict[Key, Any],
                  max_pages: int) -> list[Key]:
    if neurons is not None:
        keys = [src.neuron_key(n) for n in neurons]
        if not keys:
            raise InputError("neurons is empty: give some or leave it None for the default choice")
        return list(dict.fromkeys(keys))
    ordered = sorted(verdicts, key=lambda k: -float(getattr(verdicts[k], "score", 0.0) or 0.0))
    keys = list(dict.fromkeys(ordered + list(effects)))[:max_pages]
    keys += _most_active(src, set(keys), max_pages - len(keys))
    return keys


# -- plotly figures (plain dicts; the labels are HTML-escaped because plotly reads tags in them) -----------
def _colorscale(name: str) -> list[list[Any]]:
    """A matplotlib colormap as a plotly colorscale, so the pages and the figures use the same colours (plotly's own
    "RdBu" runs the other way and greys its middle)."""
    from matplotlib.colors import to_hex

    cmap = colormap(name)
    return [[i / 16, to_hex(cmap(i / 16))] for i in range(17)]


def _heatmap_trace_style(values: np.ndarray, from_zero: bool) -> dict[str, Any]:
    norm, cmap, _, _ = value_scale(values, from_zero=from_zero)
    vmin, vmax = float(norm.vmin or 0.0), float(norm.vmax or 1.0)
    return {"colorscale": _colorscale(cmap), "reversescale": False, "zmin": vmin, "zmax": vmax}


def _layer_heatmap(src: Source) -> tuple[dict[str, Any], int]:
    sites = src.site_names
    n = max(src.n_neurons(s) for s in sites)
    labels = [plot_text(shorten(site_label(s), 30)) for s in sites]
    buttons, first = [], None
    for stat in ("max", "mean", "frac_active", "std"):
        matrix = np.full((len(sites), n), np.nan)  # [S, N]
        for i, s in enumerate(sites):
            values = src.summary(s).stat(stat)
            matrix[i, : len(values)] = values
        style = _heatmap_trace_style(matrix, from_zero=stat != "frac_active")
        z = _round(matrix)
        hover = f"%{{y}} / N%{{x}}<br>{STATS[stat]}: %{{z:.4g}}<extra></extra>"
        if first is None:
            first = {"z": z, "hovertemplate": hover, **style, "colorbar": {"title": {"text": stat}}}
        buttons.append({"label": stat, "method": "restyle",
                        "args": [{"z": [z], "hovertemplate": [hover], "colorscale": [style["colorscale"]],
                                  "reversescale": [style["reversescale"]], "zmin": [style["zmin"]],
                                  "zmax": [style["zmax"]], "colorbar.title.text": stat}]})
    trace = {"type": "heatmap", "x": list(range(n)), "y": labels, "xgap": 0, "ygap": 1, **(first or {})}
    height = int(min(900, max(260, 90 + 26 * len(sites))))
    layout = {"margin": {"l": 70, "r": 20, "t": 40, "b": 45}, "height": height,
              "xaxis": {"title": {"text": "neuron"}}, "yaxis": {"autorange": "reversed", "type": "category"},
              "updatemenus": [{"type": "buttons", "direction": "right", "x": 0, "y": 1.02, "xanchor": "left",
                               "yanchor": "bottom", "buttons": buttons, "showactive": True, "pad": {"r": 4, "t": 0}}]}
    return {"data": [trace], "layout": layout, "config": PLOT_CONFIG}, height


def _token_heatmap(src: RecordSource, site: str, wanted: list[int], max_tokens: int = 300, n_neurons: int = 64
                   ) -> tuple[dict[str, Any], list[int], str, int]:
    acts = src.acts(site)[:max_tokens]  # [T, N]
    t, n = acts.shape
    score = np.nanmax(np.where(np.isfinite(acts), np.abs(acts), -1.0), axis=0)
    forced = [i for i in dict.fromkeys(wanted) if 0 <= i < n][:n_neurons]
    rest = [int(i) for i in np.argsort(-score, kind="stable") if int(i) not in forced][: n_neurons - len(forced)]
    cols = sorted(forced + rest)
    block = acts[:, cols]  # [T, k]
    style = _heatmap_trace_style(block, from_zero=True)
    tokens = [plot_text(token_label(tok, 16)) for tok in src.tokens[:t]]
    text = [[tok] * len(cols) for tok in tokens]
    trace = {"type": "heatmap", "z": _round(block), "x": [f"N{c}" for c in cols], "y": list(range(t)), "text": text,
             "hovertemplate": "token %{y}: %{text}<br>%{x}: %{z:.4g}<extra></extra>", **style,
             "colorbar": {"title": {"text": "activation"}}}
    step = max(1, math.ceil(t / 60))
    height = int(min(1400, max(300, 80 + 14 * t)))
    layout = {"margin": {"l": 110, "r": 20, "t": 20, "b": 60}, "height": height,
              "xaxis": {"type": "category", "tickangle": -90},
              "yaxis": {"autorange": "reversed", "tickvals": list(range(0, t, step)),
                        "ticktext": tokens[::step], "tickfont": {"family": "DejaVu Sans Mono, monospace"}}}
    note = (f"{site_label(site)}: {'first ' + str(t) + ' of ' + str(len(src.tokens)) if len(src.tokens) > t else t}"
            f" tokens × {len(cols)} of {n} neurons (pages' neurons and the most active by max |activation|)")
    return {"data": [trace], "layout": layout, "config": PLOT_CONFIG}, cols, note, height


def _bound(value: float) -> str:
    return "−∞" if value == -math.inf else "∞" if value == math.inf else f"{value:.3g}"


def _histogram(src: Source, site: str, neuron: int) -> tuple[dict[str, Any], str]:
    hist = src.histogram(site, neuron)
    counts = hist.counts
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        return {}, "no finite activations"
    ranges = [f"{_bound(a)} … {_bound(b)}" for a, b in zip(hist.lo, hist.hi, strict=True)]
    colors = ["rgb(158,158,158)" if a < 0 < b and np.isfinite(a) and np.isfinite(b) else
              ("rgb(69,117,180)" if (b if np.isfinite(b) else a) <= 0 else "rgb(215,48,39)")
              for a, b in zip(hist.lo, hist.hi, strict=True)]
    if hist.log_bins:
        first, last = max(int(nz[0]) - 1, 0), min(int(nz[-1]) + 1, len(counts) - 1)
        idx = list(range(first, last + 1))
        ticks, labels, _ = log_bin_ticks(hist, first, last, max_labels=8)  # the plot is ~350 px wide
        trace = {"type": "bar", "x": idx, "y": counts[first:last + 1].tolist(),
                 "customdata": ranges[first:last + 1], "marker": {"color": colors[first:last + 1]},
                 "hovertemplate": "%{customdata}<br>%{y} tokens<extra></extra>"}
        xaxis = {"tickvals": ticks, "ticktext": labels, "title": {"text": "activation (signed log-spaced bins)"}}
        note = "signed log-spaced bins of the streaming profile"
    else:
        trace = {"type": "bar", "x": ((hist.lo + hist.hi) / 2).tolist(), "width": (hist.hi - hist.lo).tolist(),
                 "y": counts.tolist(), "customdata": ranges, "marker": {"color": colors},
                 "hovertemplate": "%{customdata}<br>%{y} tokens<extra></extra>"}
        xaxis = {"title": {"text": "activation"}}
        note = "equal-width bins over the record"
    log = bool(counts.max() > 50 * max(float(np.median(counts[nz])), 1.0))
    layout = {"margin": {"l": 50, "r": 10, "t": 30, "b": 50}, "height": 280, "bargap": 0.05, "xaxis": xaxis,
              "yaxis": {"type": "log" if log else "linear", "title": {"text": "tokens"}},
              "updatemenus": [{"type": "buttons", "direction": "right", "x": 0, "xanchor": "left", "y": 1.02,
                               "yanchor": "bottom", "pad": {"t": 0},
                               "buttons": [
                                   {"label": "linear", "method": "relayout", "args": [{"yaxis.type": "linear"}]},
                                   {"label": "log", "method": "relayout", "args": [{"yaxis.type": "log"}]}]}]}
    return {"data": [trace], "layout": layout, "config": {**PLOT_CONFIG, "displayModeBar": False}}, note


# -- page contents -----------------------------------------------------------------------------------------
def _split_marked(text: str, token: str) -> tuple[str, str, str]:
    """'the [[cat]] sat' -> ('the ', 'cat', ' sat'); the marker of ``token`` first, else the first marker."""
    at = text.find(f"[[{token}]]")
    if at >= 0:
        return text[:at], token, text[at + len(token) + 4:]
    m = re.search(r"\[\[(.*?)\]\]", text, re.S)
    if m:
        return text[: m.start()], m.group(1), text[m.end():]
    return text, "", ""


def _verdict_view(verdict: Any, scale: float) -> dict[str, Any]:
    modes = []
    for k, mode in enumerate(getattr(verdict, "modes", []) or []):
        share = float(getattr(mode, "share", 0.0))
        facts = []
        if getattr(mode, "n_examples", None) is not None:
            facts.append(f"{mode.n_examples} contexts")
        concept = getattr(mode, "probe_concept", None)
        if concept:
            sim = getattr(mode, "probe_similarity", None)
            facts.append(f"probe concept: {concept}" + (f" (similarity {sim:.2f})" if isinstance(sim, (int, float))
                                                        else ""))
        effect = getattr(mode, "effect", None)
        facts.append(f"ablation effect {effect:+.3g} nats/token" if effect is not None
                     else "ablation effect not measured")
        examples = []
        for ex in list(getattr(mode, "examples", []) or [])[:5]:
            token = str(getattr(ex, "token", ""))
            before, tok, after = _split_marked(str(getattr(ex, "text", "")), token)
            raw = getattr(ex, "value", None)
            value = float(raw) if isinstance(raw, (int, float)) else None
            tip = repr(tok) + (f": {value:+.4g}" if value is not None else "")
            if hasattr(ex, "doc_id") and hasattr(ex, "position"):
                tip += f"  [doc {ex.doc_id}, position {ex.position}]"
            examples.append({
                "before": strip_text(before[-90:]) if before else "", "token": strip_text(tok) if tok else "",
                "after": strip_text(after[:50]) if after else "",
                "value": f"{value:.3g}" if value is not None else "",
                "style": activation_style(value, scale), "tip": tip})
        words = getattr(mode, "share_text", None)  # a mode seen only among the top examples says so
        modes.append({"label": str(getattr(mode, "label", f"mode {k}")),
                      "share_text": words if isinstance(words, str) and not words.endswith("%")
                      else f"{share:.0%} of activation mass",
                      "share_pct": f"{100 * min(max(share, 0.0), 1.0):.1f}", "color": MODE_COLORS[k % 10],
                      "facts": " · ".join(facts),
                      "top_tokens": [{"text": strip_text(str(t)), "tip": repr(str(t))}
                                     for t in list(getattr(mode, "top_tokens", []) or [])[:12]],
                      "examples": examples})
    title = verdict_title(verdict)
    return {"facts": title.split("  ·  ", 1)[-1].replace("  ·  ", " · "), "summary": str(getattr(verdict, "summary", "")
                                                                                           or ""), "modes": modes}


def _logit_view(effects: Any) -> dict[str, Any]:
    pairs = [(str(t), float(v)) for t, v in list(effects.promoted)[:15]] + \
            [(str(t), float(v)) for t, v in list(effects.suppressed)[:15]]
    reach = max([abs(v) for _, v in pairs] or [1.0]) or 1.0

    def items(seq: Any) -> list[dict[str, str]]:
        return [{"text": strip_text(str(t)), "tip": f"{str(t)!r}: {float(v):+.4g}",
                 "width": f"{100 * abs(float(v)) / reach:.1f}"} for t, v in list(seq)[:15]]

    return {"promoted": items(effects.promoted), "suppressed": items(effects.suppressed)}


def _neuron_page(src: Source, key: Key, verdict: Any, effects: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    site, neuron = key
    s = src.summary(site)
    scale = float(np.nanmax(np.abs([s.max[neuron], s.min[neuron]]))) or 1.0
    q01, q50, q99 = src.quantiles(site, neuron, [0.01, 0.5, 0.99])
    approx = "≈ " if src.kind == "profile" else ""
    stats = [("tokens", f"{int(s.count[neuron]):,}"), ("mean", _fmt(s.mean[neuron], ".4g")),
             ("std", _fmt(s.std[neuron], ".4g")), ("min", _fmt(s.min[neuron], ".4g")),
             ("max", _fmt(s.max[neuron], ".4g")),
             (f"active (> {src.active_threshold:g})", _fmt(s.frac_active[neuron] * 100, ".1f") + "%"),
             ("1% quantile", approx + _fmt(q01, ".3g")), ("median", approx + _fmt(q50, ".3g")),
             ("99% quantile", approx + _fmt(q99, ".3g"))]
    sections = []
    for kind, title, note, count in (
            ("top", "Top activations", "highest activations, highest first", 20),
            ("quantile", "Quantile examples", "active tokens at evenly spaced ranks of a random sample, highest first"
             if src.kind == "profile" else "active tokens at evenly spaced ranks, highest first", 12),
            ("bottom", "Bottom activations", "lowest (most negative) activations, lowest first", 10)):
        examples = src.examples(site, neuron, kind, count)  # type: ignore[arg-type]
        sections.append({"id": kind, "title": title, "note": note,
                         "examples": [{"value": ex.value, "spans": token_spans(ex, scale)} for ex in examples]})
    histogram, hist_note = _histogram(src, site, neuron)
    page = {"ref": neuron_ref(site, neuron), "site": site, "neuron": neuron, "model": src.model_name or "model",
            "source": src.describe(), "stats": stats, "hist_note": hist_note, "sections": sections,
            "verdict": _verdict_view(verdict, scale) if verdict is not None else None,
            "logits": _logit_view(effects) if effects is not None else None,
            "legend": {"pos": activation_style(scale, scale), "neg": activation_style(-scale, scale),
                       "scale": f"{scale:.3g}"}, "prev": None, "next": None}
    return page, {"histogram": histogram or None}


def _table_rows(src: Source, pages: dict[Key, str], verdicts: dict[Key, Any], limit: int) -> tuple[list[dict], str]:
    total = sum(src.n_neurons(s) for s in src.site_names)
    fixed = list(dict.fromkeys(list(pages) + list(verdicts)))
    if total <= limit:
        keys = [(s, i) for s in src.site_names for i in range(src.n_neurons(s))]
        note = f"all {total:,} neurons"
    else:
        per_site = max(0, math.ceil((limit - len(fixed)) / len(src.site_names)))
        extra = [(s, int(i)) for s in src.site_names
                 for i in np.argsort(-np.nan_to_num(src.summary(s).max, nan=-np.inf), kind="stable")[:per_site]]
        keys = list(dict.fromkeys(fixed + extra))
        note = (f"{len(keys):,} of {total:,} neurons: those with a page or a verdict, and each layer's {per_site} "
                "highest by max activation")
    order = {s: i for i, s in enumerate(src.site_names)}
    rows = []
    for site, n in keys:
        s = src.summary(site)
        v = verdicts.get((site, n))
        score = getattr(v, "score", None) if v is not None else None
        modes = list(getattr(v, "modes", []) or []) if v is not None else []
        rows.append({"ref": neuron_ref(site, n), "layer": site_label(site), "order": order[site],
                     "href": pages.get((site, n)), "detected": v is not None,
                     "score": _fmt(score, ".2f") if score is not None else "", "score_v": _fmt(score, ".6g")
                     if score is not None else "",
                     "n_modes": str(len(modes)) if v is not None else "", "n_modes_v": str(len(modes)) if v is not None
                     else "", "labels": ", ".join(str(getattr(m, "label", "")) for m in modes),
                     "active": _fmt(s.frac_active[n] * 100, ".1f") + "%", "active_v": _fmt(s.frac_active[n], ".6g"),
                     "mean": _fmt(s.mean[n]), "mean_v": _fmt(s.mean[n], ".6g"), "max": _fmt(s.max[n]),
                     "max_v": _fmt(s.max[n], ".6g"), "min": _fmt(s.min[n]), "min_v": _fmt(s.min[n], ".6g")})
    def rank(r: dict[str, Any]) -> tuple[Any, ...]:  # detected by score, then pages, then by layer and max
        score = -float(r["score_v"]) if r["score_v"] not in ("", "–") else 0.0
        peak = -float(r["max_v"]) if r["max_v"] != "–" else 0.0
        return (not r["detected"], score, r["href"] is None, r["order"], peak)

    rows.sort(key=rank)
    return rows, note


# -- writing -----------------------------------------------------------------------------------------------
def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=False, lstrip_blocks=False)


def _render(env: Environment, template: str, script_file: str, context: dict[str, Any], data: dict[str, Any]) -> str:
    script = (TEMPLATES / script_file).read_text(encoding="utf-8")
    return env.get_template(template).render(csp=csp([script]), scripts=[Markup(script)], plotly_src=PLOTLY_FILE,
                                             data_json=Markup(safe_json(data)), **context)


def _write_plotly(folder: Path) -> None:
    from plotly.offline import get_plotlyjs

    target = folder / PLOTLY_FILE
    source = get_plotlyjs()
    if not target.exists() or target.stat().st_size != len(source.encode("utf-8")):
        target.write_text(source, encoding="utf-8")


def write_dashboard(src: Source, folder: Path, *, neurons: Sequence[Any] | None = None, detections: Any = None,
                    logit_effects: Any = None, max_pages: int = 20, title: str | None = None,
                    table_rows: int = 1500) -> Path:
    """Write the overview (index.html), the neuron pages and plotly.min.js into ``folder``; return the overview."""
    if max_pages < 0:
        raise InputError("max_pages must be >= 0")
    verdicts: dict[Key, Any] = {}
    for v in as_neurons(detections):
        verdicts[src.neuron_key(v)] = v
    effects: dict[Key, Any] = {}
    for e in as_logit_effects(logit_effects):
        effects[src.neuron_key(e)] = e
    keys = _choose_pages(src, neurons, verdicts, effects, max_pages)
    folder.mkdir(parents=True, exist_ok=True)
    _write_plotly(folder)
    env = _environment()
    hrefs = {k: page_name(*k) for k in keys}
    refs = [neuron_ref(*k) for k in keys]
    for i, key in enumerate(keys):
        page, page_data = _neuron_page(src, key, verdicts.get(key), effects.get(key))
        if i > 0:
            page["prev"] = {"href": hrefs[keys[i - 1]], "ref": refs[i - 1]}
        if i < len(keys) - 1:
            page["next"] = {"href": hrefs[keys[i + 1]], "ref": refs[i + 1]}
        html = _render(env, "neuron.html.j2", "neuron.js", {"page": page, "page_title": f"{page['ref']} · neuron"},
                       page_data)
        (folder / hrefs[key]).write_text(html, encoding="utf-8")

    heatmap, height = _layer_heatmap(src)
    data: dict[str, Any] = {"heatmap": heatmap, "heatmap_sites": src.site_names,
                            "pages": {f"{s}/{n}": h for (s, n), h in hrefs.items()}}
    ov: dict[str, Any] = {"title": title or f"Neurons of {src.model_name or 'a model'}", "model": src.model_name or
                          "model", "source": src.describe(), "n_sites": len(src.site_names), "n_pages": len(keys),
                          "heatmap_height": height,
                          "heatmap_note": "every neuron of every layer; switch the statistic with the buttons, click a "
                          "cell to open the neuron's page (when it has one)", "token_heatmap": False}
    if isinstance(src, RecordSource):
        site = max(src.site_names, key=lambda s: sum(k[0] == s for k in keys))
        fig, cols, note, t_height = _token_heatmap(src, site, [n for s, n in keys if s == site])
        data.update({"token_heatmap": fig, "token_heatmap_site": site, "token_heatmap_neurons": cols})
        ov.update({"token_heatmap": True, "token_heatmap_note": note, "token_heatmap_height": t_height})
    ov["detected"] = [{"ref": neuron_ref(*k), "href": hrefs.get(k), "score": _fmt(getattr(v, "score", None), ".2f"),
                       "p": _fmt(getattr(v, "p_value", None), ".3g"),
                       "modes": ", ".join(str(getattr(m, "label", "")) for m in getattr(v, "modes", []) or []),
                       "summary": str(getattr(v, "summary", "") or "")}
                      for k, v in sorted(verdicts.items(), key=lambda kv: -float(getattr(kv[1], "score", 0.0) or 0))]
    ov["rows"], ov["table_note"] = _table_rows(src, hrefs, verdicts, table_rows)
    html = _render(env, "overview.html.j2", "overview.js", {"ov": ov, "page_title": ov["title"]}, data)
    index = folder / "index.html"
    index.write_text(html, encoding="utf-8")
    return index
