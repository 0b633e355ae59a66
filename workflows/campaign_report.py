"""A campaign's summary: one row per experiment and layer (``summary.csv``, ``summary.parquet``) and an HTML index
that compares them (``index.html``: the share of polysemantic neurons per layer, one line per model and seed, and
every experiment with a link to its report).

Usage::

    rows = summary_rows(results)                   # from each run's findings.json and manifest.json
    write_summary_files(folder, "layers-of-smollm2", rows)

Every number comes from a run's findings (the ``polysemantic_summary`` and ``polysemantic`` findings), never from
its prose.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["summary_rows", "write_summary_files", "COLUMNS"]

COLUMNS = ("entry", "request", "key", "status", "model", "layer", "seed", "n_analysed", "n_polysemantic",
           "n_borderline", "share_polysemantic", "top_neuron", "top_score", "report")


def _run_facts(run_dir: Path) -> tuple[dict[str, Any], list[Any]]:
    """A run's manifest and findings (empty when it has none yet)."""
    from neuron_core.errors import CorruptRunFolderError
    from neuron_core.store import RunFolder, read_json_file
    from tools.findings import FindingStore

    try:
        manifest = read_json_file(run_dir / "manifest.json", dict)
        findings = FindingStore(RunFolder(run_dir)).all()
    except CorruptRunFolderError:
        return {}, []
    return manifest, findings


def summary_rows(results: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per entry and analysed layer (an entry without detections gets one row with empty numbers)."""
    rows: list[dict[str, Any]] = []
    for entry, result in enumerate(results, 1):
        manifest, findings = _run_facts(Path(result.run_dir)) if result.run_dir else ({}, [])
        plan = manifest.get("plan") or {}
        base = {"entry": entry, "request": result.request, "key": result.key, "status": result.status,
                "model": plan.get("model"), "seed": manifest.get("seed"), "report": result.report}
        layers = [f for f in findings if f.kind == "polysemantic_summary"]
        if not layers:
            rows.append({**base, "layer": (plan.get("layers") or [None])[0]})
            continue
        for summary in layers:
            layer = next(iter(summary.layers()), None)
            analysed = summary.value("n_analysed", layer=layer, default=0)
            found = summary.value("n_polysemantic", layer=layer, default=0)
            best = max((f for f in findings if f.kind == "polysemantic" and layer in f.layers()),
                       key=lambda f: f.value("score", default=0.0), default=None)
            rows.append({**base, "layer": layer, "n_analysed": int(analysed), "n_polysemantic": int(found),
                         "n_borderline": int(summary.value("n_borderline", layer=layer, default=0)),
                         "share_polysemantic": found / analysed if analysed else None,
                         "top_neuron": best.subject if best else None,
                         "top_score": best.value("score", default=None) if best else None})
    return [{col: row.get(col) for col in COLUMNS} for row in rows]


def write_summary_files(folder: Any, name: str, rows: list[dict[str, Any]]) -> None:
    """``summary.csv``, ``summary.parquet`` and ``index.html`` in the campaign folder (atomic writes)."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    folder.write_text("summary.csv", frame.to_csv(index=False))
    folder.write_parquet("summary.parquet", frame)
    folder.write_text("index.html", _index_html(name, frame, Path(folder.root)))


def _share_figure(frame: Any) -> str:
    """The share of polysemantic neurons per layer, one line per model and seed, as an embedded PNG ('' if none)."""
    done = frame.dropna(subset=["share_polysemantic", "layer"])
    if done.empty:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for (model, seed), part in done.groupby(["model", "seed"], dropna=False, sort=True):
        part = part.sort_values("layer")
        ax.plot(part["layer"], 100 * part["share_polysemantic"], marker="o", label=f"{model}, seed {seed}")
    ax.set_xlabel("layer")
    ax.set_ylabel("polysemantic neurons (% of analysed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="share of polysemantic neurons per layer" src="data:image/png;base64,{data}">'


def _index_html(name: str, frame: Any, root: Path) -> str:
    def cell(value: Any, column: str) -> str:
        if value is None or value != value:  # None or NaN
            return ""
        if column == "report":
            rel = Path(value).relative_to(root) if Path(value).is_relative_to(root) else Path(value)
            return f'<a href="{html.escape(str(rel.with_suffix(".html")))}">report</a>'
        if column == "share_polysemantic":
            return f"{100 * value:.1f}%"
        if column == "top_score":
            return f"{value:.2f}"
        return html.escape(str(value))

    shown = [c for c in COLUMNS if c != "key"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown)
    body = "".join("<tr>" + "".join(f"<td>{cell(row[c], c)}</td>" for c in shown) + "</tr>"
                   for row in frame.to_dict("records"))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Campaign: {html.escape(name)}</title>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\"><style>body{font-family:sans-serif;margin:2em}table{border-collapse:"
            "collapse}td,th{border:1px solid #ccc;padding:4px 8px;font-size:90%}</style></head><body>"
            f"<h1>Campaign: {html.escape(name)}</h1>{_share_figure(frame)}"
            f"<p>{len(frame)} rows; the same table in summary.csv and summary.parquet.</p>"
            f"<table><tr>{head}</tr>{body}</table></body></html>\n")
