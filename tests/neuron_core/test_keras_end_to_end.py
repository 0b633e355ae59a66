"""Keras activations flow through the framework-agnostic analysis and pictures unchanged."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from neuron_core import ActivationMonitor, ModelInterface

layers = keras.layers

WORDS = ("the cat dog bird sat ran flew on under over a mat tree roof red blue green big small quickly "
         "slowly and then it was").split()
VOCAB, D, HEADS, FF = len(WORDS) + 1, 16, 2, 32


class WordTokenizer:
    """A tiny word-level tokenizer with the Hugging Face surface neuron_core uses (0 = padding)."""

    def __init__(self, words: list[str]) -> None:
        self.words = ["<pad>", *words]
        self.index = {w: i for i, w in enumerate(self.words)}
        self.pad_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [self.index[w] for w in text.split()]}

    def decode(self, ids: list[int]) -> str:
        return "".join(" " + self.words[i] for i in ids)

    def __len__(self) -> int:
        return len(self.words)


def build_block() -> keras.Model:
    keras.utils.set_random_seed(0)
    ids = keras.Input(shape=(None,), dtype="int32", name="input_ids")
    x = layers.Embedding(VOCAB, D, mask_zero=True, name="embed")(ids)
    attn = layers.MultiHeadAttention(HEADS, D // HEADS, name="attn")(x, x)
    h = layers.LayerNormalization(name="ln1")(layers.Add(name="res1")([x, attn]))
    f = layers.Dense(FF, activation="gelu", name="ffn_up")(h)
    out = layers.LayerNormalization(name="ln2")(layers.Add(name="res2")([h, layers.Dense(D, name="ffn_down")(f)]))
    return keras.Model(ids, layers.Dense(VOCAB, name="lm_head")(out), name="tiny_block")


@pytest.fixture(scope="module")
def record():
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 12)))) for _ in range(24)]
    iface = ModelInterface(build_block(), framework="tensorflow", tokenizer=WordTokenizer(WORDS))
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
