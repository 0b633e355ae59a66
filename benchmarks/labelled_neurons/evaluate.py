"""The detector against blind human-style labels of real SmolLM2 neurons (a `make bench` step).

    python benchmarks/labelled_neurons/evaluate.py [--seed 0] [--embedder auto]

Reads ``key.csv`` and every ``labels/annotator_*.csv`` (labels made from ``RUBRIC.md`` and the sheets only), takes
the majority label of each neuron (two of three; no majority counts as UNCLEAR) and runs the detector with its
defaults (no ablation, which does not change a verdict) over the labelled neurons of each layer, on the profile the
sheets were made from (``common.py``). Prints:

- who labelled and how well they agree (pairwise agreement, Fleiss' kappa);
- on the dev layers (3, 9, 15, 21) and, separately, on the held-out layer 6: the AUC of the score for POLY against
  MONO, and the precision and recall of ``detect()`` (precision over the detected neurons labelled POLY or MONO);
  how the borderline verdicts fall;
- the labels of the top 5 neurons a default investigation reports for each layer, dev and held out (labelled blind
  in later rounds, ids ``T...``; neurons already labelled in the random draw keep their label).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

from labelled_neurons.common import (  # noqa: E402
    DEV_LAYERS,
    HELDOUT_LAYERS,
    KeyRow,
    default_top5,
    load_interface,
    load_profile,
    read_key,
)

LABELS = ("MONO", "POLY", "UNCLEAR")


def read_labels() -> dict[str, dict[str, str]]:
    """annotator -> sheet id -> label (an annotator's files: annotator_a.csv, annotator_a_top5.csv, ...)."""
    out: dict[str, dict[str, str]] = {}
    for path in sorted((HERE / "labels").glob("annotator_*.csv")):
        who = path.stem.split("_")[1]
        with path.open() as f:
            for row in csv.DictReader(f):
                label = row["label"].strip().upper()
                if label not in LABELS:
                    raise ValueError(f"{path.name}: {row['sheet_id']} has label {label!r}, not one of {LABELS}")
                out.setdefault(who, {})[row["sheet_id"].strip()] = label
    return out


def majority(labels: dict[str, dict[str, str]], sheet_id: str) -> str:
    votes = Counter(by[sheet_id] for by in labels.values() if sheet_id in by)
    label, n = votes.most_common(1)[0] if votes else ("UNCLEAR", 0)
    return label if n >= 2 else "UNCLEAR"


def fleiss_kappa(table: np.ndarray) -> float:
    """Fleiss' kappa of a [items, categories] table of counts (every item rated by the same number of raters)."""
    n = table.sum(1)[0]
    p_cat = table.sum(0) / table.sum()
    p_item = ((table ** 2).sum(1) - n) / (n * (n - 1))
    p_bar, p_exp = p_item.mean(), (p_cat ** 2).sum()
    return float((p_bar - p_exp) / (1 - p_exp))


def agreement(labels: dict[str, dict[str, str]], ids: list[str]) -> list[str]:
    who = sorted(labels)
    lines = [f"Annotators: {', '.join(who)} (each a separate LLM reviewer, Claude, given only RUBRIC.md and the "
             f"sheets); {len(ids)} neurons."]
    for a, b in itertools.combinations(who, 2):
        same = np.mean([labels[a][i] == labels[b][i] for i in ids])
        lines.append(f"- {a} vs {b}: {same:.1%} the same label")
    table = np.array([[sum(labels[w][i] == c for w in who) for c in LABELS] for i in ids])
    counts = {c: int(sum(majority(labels, i) == c for i in ids)) for c in LABELS}
    lines.append(f"- Fleiss' kappa {fleiss_kappa(table):.3f}; majority labels: "
                 + ", ".join(f"{c} {n}" for c, n in counts.items()))
    return lines


def auc(pos: list[float], neg: list[float]) -> float:
    if not pos or not neg:
        return float("nan")
    p, n = np.array(pos)[:, None], np.array(neg)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def detect_rows(prof: object, interface: object, rows: list[KeyRow], seed: int, embedder: str) -> dict[str, object]:
    """sheet id -> the detector's verdict, each layer's labelled neurons analysed together."""
    from neuron_core.analysis import DetectorConfig, PolysemanticDetector

    out: dict[str, object] = {}
    for layer in sorted({r.layer for r in rows}):
        site = f"blocks.{layer}.mlp.hook_post"
        mine = [r for r in rows if r.layer == layer]
        det = PolysemanticDetector(prof, interface=interface, sites=[site], neurons={site: [r.neuron for r in mine]},
                                   config=DetectorConfig(ablation=False), seed=seed, embedder=embedder)
        by_neuron = {v.neuron: v for v in det.run()}
        out.update({r.sheet_id: by_neuron[r.neuron] for r in mine})
    return out


def quality_table(name: str, ids: list[str], verdicts: dict[str, object], truth: dict[str, str]) -> str:
    pos = [verdicts[i].score for i in ids if truth[i] == "POLY"]  # type: ignore[attr-defined]
    neg = [verdicts[i].score for i in ids if truth[i] == "MONO"]  # type: ignore[attr-defined]
    detected = [i for i in ids if verdicts[i].verdict == "detected"]  # type: ignore[attr-defined]
    judged = [i for i in detected if truth[i] in ("POLY", "MONO")]
    hits = sum(truth[i] == "POLY" for i in judged)
    n_poly = sum(truth[i] == "POLY" for i in ids)
    precision = hits / len(judged) if judged else float("nan")
    recall = hits / n_poly if n_poly else float("nan")
    border = Counter(truth[i] for i in ids if verdicts[i].verdict == "borderline")  # type: ignore[attr-defined]
    detected_labels = Counter(truth[i] for i in detected)
    return (f"| {name} | {len(ids)} | {len(pos)} / {len(neg)} | {auc(pos, neg):.3f} | {len(detected)} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(detected_labels.items()))}) | {precision:.2f} | {recall:.2f} | "
            f"{', '.join(f'{k} {v}' for k, v in sorted(border.items())) or '-'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embedder", default="auto", help="the detector's embedder (auto: the subject model's)")
    args = ap.parse_args()
    key = read_key()
    labels = read_labels()
    random_ids = [r.sheet_id for r in key if r.subset in ("dev", "heldout")]
    missing = {w: len([i for i in random_ids if i not in by]) for w, by in labels.items()}
    if len(labels) < 3 or any(missing.values()):
        raise SystemExit(f"need three complete annotators, got {sorted(labels)} (missing labels: {missing})")
    truth = {r.sheet_id: majority(labels, r.sheet_id) for r in key}
    print("\n".join(agreement(labels, random_ids)) + "\n")

    start = time.perf_counter()
    interface = load_interface()
    prof = load_profile(DEV_LAYERS + HELDOUT_LAYERS, interface)
    random_rows = [r for r in key if r.subset in ("dev", "heldout")]
    verdicts = detect_rows(prof, interface, random_rows, args.seed, args.embedder)
    print(f"Detector defaults (seed {args.seed}, embedder {args.embedder}), {time.perf_counter() - start:.0f} s. "
          "Goals: AUC >= 0.90; precision >= 0.85 at recall >= 0.75.\n")
    print("| neurons | n | POLY / MONO | AUC of the score | detected (their labels) | precision | recall | "
          "borderline (labels) |")
    print("|---|---:|---:|---:|---|---:|---:|---|")
    dev = [r.sheet_id for r in key if r.subset == "dev"]
    held = [r.sheet_id for r in key if r.subset == "heldout"]
    print(quality_table(f"dev layers {', '.join(map(str, DEV_LAYERS))}", dev, verdicts, truth))
    print(quality_table(f"held-out layer {', '.join(map(str, HELDOUT_LAYERS))}", held, verdicts, truth))
    print_top5(prof, interface, key, truth, args.seed)


def print_top5(prof: object, interface: object, key: list[KeyRow], truth: dict[str, str], seed: int) -> None:
    by_neuron = {(r.layer, r.neuron): r.sheet_id for r in key}
    top = default_top5(prof, interface, seed=seed, layers=DEV_LAYERS + HELDOUT_LAYERS)
    print("\nTop 5 of a default investigation per layer (the 64 most promising neurons of a quick screen analysed), "
          "with the blind majority label (goal: none MONO):\n")
    print("| layer | neuron | label |")
    print("|---:|---:|---|")

    def label_of(layer: int, neuron: int) -> str:
        sid = by_neuron.get((layer, neuron))
        return truth.get(sid, "not labelled") if sid else "not labelled"

    for layer, neuron in top:
        print(f"| {layer} | L{layer}/N{neuron} | {label_of(layer, neuron)} |")
    for name, layers in (("dev layers", DEV_LAYERS), ("held-out layer", HELDOUT_LAYERS)):
        counts = Counter(label_of(layer, neuron) for layer, neuron in top if layer in layers)
        print(f"\n{name} {', '.join(map(str, layers))}: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
