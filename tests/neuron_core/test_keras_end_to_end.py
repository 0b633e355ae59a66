"""Keras activations flow through the framework-agnostic analysis and pictures unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from neuron_core import ActivationMonitor, ModelInterface
from tests.neuron_core.keras_block import FF, WordTokenizer, build_block

WORDS = ("the cat dog bird sat ran flew on under over a mat tree roof red blue green big small quickly "
         "slowly and then it was").split()
VOCAB = len(WORDS) + 1


@pytest.fixture(scope="module")
def record():
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 12)))) for _ in range(24)]
    iface = ModelInterface(build_block(VOCAB), framework="tensorflow", tokenizer=WordTokenizer(WORDS))
    return ActivationMonitor(iface, ["ffn_up"]).capture(texts)


def _values(scores) -> np.ndarray:  # noqa: ANN001 - whatever container scores() returns
    if hasattr(scores, "columns"):  # a DataFrame with a score column
        return np.asarray(scores["score"], dtype=np.float64)
    if hasattr(scores, "detach"):
        return scores.detach().double().cpu().numpy().ravel()
    if isinstance(scores, dict):
        return np.concatenate([_values(v) for v in scores.values()])
    return np.asarray(scores, dtype=np.float64).ravel()


def test_polysemantic_detector_runs_on_keras_activations(record):
    from neuron_core.analysis import PolysemanticDetector
    from neuron_core.analysis.types import PolysemanticNeuron

    detector = PolysemanticDetector(record)
    verdicts = detector.detect()
    assert all(isinstance(v, PolysemanticNeuron) for v in verdicts)
    assert all(v.site == "ffn_up" and 0 <= v.neuron < FF and 0.0 <= v.score <= 1.0 for v in verdicts)
    values = _values(detector.scores())
    assert values.size > 0 and np.isfinite(values).all()


def test_heatmap_of_keras_activations(record, tmp_path):
    from matplotlib.figure import Figure

    from neuron_core.viz import ActivationVisualizer

    fig = ActivationVisualizer(record).plot_heatmap(layer="ffn_up", path=tmp_path / "heatmap.png")
    assert isinstance(fig, Figure) and fig.axes
    assert (tmp_path / "heatmap.png").stat().st_size > 1000
    # the drawn grid is the record's first tokens × every neuron (32 < the 40 shown by default)
    shown = min(len(record), 64)
    arrays = [np.asarray(a.get_array()) for ax in fig.axes for a in [*ax.images, *ax.collections]
              if a.get_array() is not None]
    grids = [a for a in arrays if a.size == shown * FF]
    assert grids, f"no heatmap grid of {shown}x{FF} in the figure (arrays: {[a.shape for a in arrays]})"
    expected = record["ffn_up"][:shown].double().numpy()
    assert any(np.allclose(g.reshape(shown, FF), expected, atol=1e-6) for g in grids)
