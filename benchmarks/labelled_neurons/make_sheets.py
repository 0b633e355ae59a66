"""Write the blind-labelling sheets of the real-neuron benchmark (SmolLM2-135M, built-in corpus).

Usage::

    python benchmarks/labelled_neurons/make_sheets.py              # dev layers + held-out layer 6 (random draw)
    python benchmarks/labelled_neurons/make_sheets.py --top5       # the top 5 per layer (dev, held out)

Every sheet shows a neuron by an anonymous id (``D017``): its 20 strongest contexts and up to 10 contexts drawn at
random from its other strong activations (at least 20 % of its peak), the firing token marked ``[[...]]``, each with
its activation relative to the peak. Nothing on a sheet comes from the detector. ``key.csv`` maps the ids to
(layer, neuron) and says which set each neuron belongs to; annotators get only ``RUBRIC.md`` and ``sheets/``.

The draw: ``--per-layer`` neurons of each layer, uniformly at random (seed 0) among the neurons with at least six
strong contexts (fewer can not show a second concept; the detector gives them one mode and no score).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from labelled_neurons.common import (  # noqa: E402
    DEV_LAYERS,
    HELDOUT_LAYERS,
    KeyRow,
    load_profile,
    read_key,
    strong_contexts,
    write_key,
)

N_TOP, N_RANDOM = 20, 10


def _line(text: str) -> str:
    return text.replace("\n", "\u23ce").replace("\r", "").replace("\t", " ")


def sheet_block(sheet_id: str, prof: object, layer: int, neuron: int, seed: int) -> str:
    top, rand, peak = strong_contexts(prof, layer, neuron, N_TOP, N_RANDOM, seed)
    lines = [f"## {sheet_id}", "", "Strongest contexts (activation relative to the neuron's peak):", ""]
    lines += [f"{i + 1:>2}. ({ex.value / peak:.2f}) {_line(ex.text())}" for i, ex in enumerate(top)]
    lines += ["", "Random strong contexts:", ""]
    lines += [f"{i + 1:>2}. ({ex.value / peak:.2f}) {_line(ex.text())}" for i, ex in enumerate(rand)]
    if not rand:
        lines.append("(none beyond the strongest)")
    return "\n".join(lines) + "\n"


def draw(prof: object, layers: list[int], per_layer: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    chosen = []
    for layer in layers:
        eligible = [n for n in range(1536) if len(strong_contexts(prof, layer, n, 6, 0, seed)[0]) >= 6]
        picks = sorted(int(n) for n in rng.choice(eligible, size=per_layer, replace=False))
        chosen += [(layer, n) for n in picks]
    return chosen


def write_sheets(rows: list[KeyRow], prof: object, folder: Path, per_sheet: int, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for lo in range(0, len(rows), per_sheet):
        chunk = rows[lo:lo + per_sheet]
        body = "".join(sheet_block(r.sheet_id, prof, r.layer, r.neuron, seed=r.seed) + "\n" for r in chunk)
        number = f"{chunk[0].sheet_id}-{chunk[-1].sheet_id}" if prefix == "top5_" else f"{lo // per_sheet + 1:02d}"
        name = folder / f"{prefix}{number}.md"  # a later top-5 round never overwrites an earlier one
        name.write_text(f"# Sheet {name.stem}: neurons {chunk[0].sheet_id}-{chunk[-1].sheet_id}\n\n{body}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-layer", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top5", action="store_true", help="sheets for the default investigation's top 5 per layer")
    args = ap.parse_args()
    prof = load_profile(DEV_LAYERS + HELDOUT_LAYERS)
    if args.top5:
        from labelled_neurons.common import default_top5

        key = read_key()
        known = {(r.layer, r.neuron) for r in key}
        top = default_top5(prof, layers=DEV_LAYERS + HELDOUT_LAYERS)
        new = [(layer, n) for layer, n in top if (layer, n) not in known]
        start = len(key)
        rows = [KeyRow(f"T{start + i + 1:03d}", layer, n, "top5", args.seed) for i, (layer, n) in enumerate(new)]
        write_key(key + rows)
        write_sheets(rows, prof, HERE / "sheets", per_sheet=25, prefix="top5_")
        print(f"{len(rows)} new top-5 neurons written ({len(known)} already labelled or queued)")
        return
    order = draw(prof, DEV_LAYERS + HELDOUT_LAYERS, args.per_layer, args.seed)
    rng = np.random.default_rng([args.seed, 1])
    shuffled = [order[i] for i in rng.permutation(len(order))]  # layers mixed on the sheets
    rows = [KeyRow(f"D{i + 1:03d}", layer, n, "heldout" if layer in HELDOUT_LAYERS else "dev", args.seed)
            for i, (layer, n) in enumerate(shuffled)]
    write_key(rows)
    write_sheets(rows, prof, HERE / "sheets", per_sheet=25, prefix="sheet_")
    print(f"{len(rows)} neurons on {(len(rows) + 24) // 25} sheets")


if __name__ == "__main__":
    main()
