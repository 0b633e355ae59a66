"""The subject model's views of a context (neuron_core/analysis/embed.py) against the model's own hidden states."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuron_core import ModelInterface
from neuron_core.analysis.contexts import Context
from neuron_core.analysis.embed import SubjectEmbedder

TEXTS = ["The cat sat on the mat", "Stock prices rose in March", "def add(a, b): return",
         "Le chat dort sur le canapé", "She played the violin", "ERROR connection refused on port"]


def last_token(text: str) -> Context:
    """The text's last word as the activating token (a causal model reads everything before it)."""
    start = text.rindex(" ") + 1
    return Context(text, start, len(text), 1.0, 0, 0, text[start:])


@pytest.fixture(scope="module")
def fitted(smollm):
    emb = SubjectEmbedder(ModelInterface(smollm), below=6, deep=0.6)
    ctxs = [last_token(t) for t in TEXTS]
    emb.fit(ctxs)
    return emb, ctxs


def hidden_after(smollm, text: str, block: int) -> np.ndarray:
    """The residual stream after block ``block`` at the text's last token, from transformers' hidden states."""
    ids = smollm.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][:, -9:]
    with torch.no_grad():
        out = smollm.model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states[block + 1][0, -1].float().numpy()  # hidden_states[0]: the embeddings


def test_deep_view_is_a_later_layer_standardised(smollm, fitted):
    emb, ctxs = fitted
    n_layers = smollm.model.config.num_hidden_layers
    assert emb.deep_layer == round(0.6 * n_layers) and emb.deep_layer > max(emb.layers)
    assert max(emb.layers) <= 5  # the word view stays below the analysed layer
    raw = np.stack([hidden_after(smollm, t, emb.deep_layer) for t in TEXTS])
    want = (raw - raw.mean(0)) / (raw.std(0) + 1e-6)  # standardised against the fit contexts (the same six)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    got = emb.embed_deep(ctxs)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-3)
    # the word view still reads only the layers below the analysed one, each standardised, then joined
    parts = []
    for layer in emb.layers:
        raw = np.stack([hidden_after(smollm, t, layer) for t in TEXTS])
        z = (raw - raw.mean(0)) / (raw.std(0) + 1e-6)
        parts.append(z / np.linalg.norm(z, axis=1, keepdims=True))
    word = np.concatenate(parts, axis=1)
    word /= np.linalg.norm(word, axis=1, keepdims=True)
    np.testing.assert_allclose(emb.embed(ctxs), word, atol=2e-3)

def test_no_deep_view_by_default(smollm):
    emb = SubjectEmbedder(ModelInterface(smollm), below=6)
    ctxs = [last_token(t) for t in TEXTS]
    emb.fit(ctxs)
    assert emb.embed_deep(ctxs) is None
    assert emb.embed(ctxs).shape == (len(TEXTS), smollm.model.config.hidden_size * len(emb.layers))


def test_held_sites_leave_the_word_view_and_hold_the_deep_one(smollm):
    """With layer 6's neurons held at their means, the deep view is the model's reading with that MLP's output
    replaced by down_proj(mean), computed here by swapping the MLP's forward; the word view (below 6) is untouched."""
    mlp = smollm.model.model.layers[6].mlp
    mean = torch.linspace(-0.2, 0.3, mlp.down_proj.in_features)
    held = SubjectEmbedder(ModelInterface(smollm), below=6, deep=0.6, held={"blocks.6.mlp.hook_post": mean})
    plain = SubjectEmbedder(ModelInterface(smollm), below=6, deep=0.6)
    ctxs = [last_token(t) for t in TEXTS]
    for emb in (held, plain):
        emb.fit(ctxs)
    np.testing.assert_allclose(held.embed(ctxs), plain.embed(ctxs), atol=1e-5)
    constant = mlp.down_proj(mean).detach()
    original = mlp.forward
    mlp.forward = lambda x: constant.to(x).expand(*x.shape[:-1], constant.shape[-1])
    try:
        raw = np.stack([hidden_after(smollm, t, held.deep_layer) for t in TEXTS])
    finally:
        mlp.forward = original
    want = (raw - raw.mean(0)) / (raw.std(0) + 1e-6)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(held.embed_deep(ctxs), want, atol=2e-3)
    assert not np.allclose(held.embed_deep(ctxs), plain.embed_deep(ctxs), atol=1e-2)


def test_a_held_site_must_lie_above_the_word_view(smollm):
    with pytest.raises(ValueError, match="below the word view"):
        SubjectEmbedder(ModelInterface(smollm), below=6, deep=0.6, held={"blocks.2.mlp.hook_post": torch.zeros(1536)})
