"""What the sheet writer and the benchmark share: the layers, the profile, a neuron's strong contexts, the key.

The profile is the default investigation's: the built-in corpus, its first 20,000 tokens (``Plan.max_tokens``), so
that the sheets, the detector's scores and the top-5 neurons all come from the same data. It is cached beside this
file (``.cache/``, ignored by git) and rebuilt when missing; profiling is deterministic.
"""

from __future__ import annotations

import csv
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
KEY = HERE / "key.csv"
CACHE = HERE / ".cache" / "profile"
MODEL = "smollm2-135m"
DEV_LAYERS = [3, 9, 15, 21]
HELDOUT_LAYERS = [6]
MAX_TOKENS = 20_000
BAND = 0.2  # a context is strong at >= 20 % of the neuron's peak (the detector's DetectorConfig.band)
MIN_POSITION = 1  # a document's first token is an attention sink (DetectorConfig.min_position)


@dataclass(frozen=True)
class KeyRow:
    sheet_id: str
    layer: int
    neuron: int
    subset: str  # dev | heldout | top5
    seed: int


def read_key() -> list[KeyRow]:
    if not KEY.exists():
        return []
    with KEY.open() as f:
        return [KeyRow(r["sheet_id"], int(r["layer"]), int(r["neuron"]), r["subset"], int(r["seed"]))
                for r in csv.DictReader(f)]


def write_key(rows: list[KeyRow]) -> None:
    with KEY.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sheet_id", "layer", "neuron", "subset", "seed"])
        w.writerows(astuple(r) for r in rows)


def load_interface() -> Any:
    from neuron_core import ModelInterface

    return ModelInterface.from_pretrained(MODEL)


def load_profile(layers: list[int], interface: Any = None) -> Any:
    """The benchmark's profile of ``layers`` (cached)."""
    from neuron_core import profile
    from neuron_core.profile import NeuronProfile

    if CACHE.exists():
        prof = NeuronProfile.load(CACHE)
        sites = [f"blocks.{layer}.mlp.hook_post" for layer in layers]
        if all(site in prof.site_names and prof[site].token_sample() for site in sites):  # else: saved before
            return prof                                                                     # the token reservoir
    prof = profile(interface or load_interface(), [f"layer {layer}" for layer in sorted(set(layers))], "builtin",
                   max_tokens=MAX_TOKENS, progress=False)
    CACHE.parent.mkdir(exist_ok=True)
    prof.save(CACHE)
    return prof


def strong_contexts(prof: Any, layer: int, neuron: int, n_top: int, n_random: int, seed: int
                    ) -> tuple[list[Any], list[Any], float]:
    """(strongest, random strong, peak): the ``n_top`` highest examples, and ``n_random`` drawn (seeded, per neuron)
    from the uniform sample's other strong examples; examples before ``MIN_POSITION`` left out."""
    view = prof[f"layer {layer}"]
    top = [e for e in view.top_examples(neuron) if e.position >= MIN_POSITION]
    if not top or top[0].value <= 0:
        return [], [], 0.0
    peak = top[0].value
    strong_top = [e for e in top if e.value >= BAND * peak][:n_top]
    seen = {(e.doc_id, e.position) for e in strong_top}
    rest = [e for e in view.examples(neuron, "sample") if e.value >= BAND * peak and e.position >= MIN_POSITION
            and (e.doc_id, e.position) not in seen]
    rng = np.random.default_rng([seed, layer, neuron])
    picks = sorted(rng.choice(len(rest), size=min(n_random, len(rest)), replace=False)) if rest else []
    return strong_top, [rest[int(i)] for i in picks], peak


def default_top5(prof: Any, interface: Any = None, seed: int = 0, top_n: int = 5,
                 layers: list[int] | None = None) -> list[tuple[int, int]]:
    """The neurons a default investigation reports first for each layer (the dev layers by default): the detector
    with its defaults on the 64 neurons (``Plan.max_neurons``) its screen finds most promising
    (``DetectorConfig.select``), best first."""
    from neuron_core.analysis import DetectorConfig, PolysemanticDetector

    interface = interface or load_interface()
    out = []
    for layer in layers or DEV_LAYERS:
        site = prof[f"layer {layer}"].name
        det = PolysemanticDetector(prof, interface=interface, config=DetectorConfig(max_neurons=64, ablation=False),
                                   sites=[site], seed=seed)
        out += [(layer, v.neuron) for v in det.detect(top_n=top_n)]
    return out
