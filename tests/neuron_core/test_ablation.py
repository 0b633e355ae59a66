"""Zero-ablation against an independent computation: zeroing a GPT-2 neuron's activation is zeroing its row of the
MLP's output projection, so the loss of a model with that row zeroed is the ablated loss."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from neuron_core.analysis.ablation import ablation_effects, per_context_effects
from neuron_core.analysis.contexts import Context
from neuron_core.errors import InputError


def _context(ids: list[int], index: int) -> Context:
    return Context(text="x", start=0, end=1, value=1.0, doc_id=0, position=index, token="x", ids=tuple(ids),
                   index=index)


def _loss_after(model, ids: list[int], index: int) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    nll = -torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    return float(nll[index:].mean())


def test_per_context_effects_equal_a_model_with_the_neuron_removed(tiny_gpt2, tok):
    layer, neuron = 1, 17
    texts = ["The cat sat on the mat and looked at the door.", "Prices rose by 5 percent in March, then fell.",
             "def f(x):\n    return x + 1"]
    contexts = []
    for i, text in enumerate(texts):
        ids = tok(text)["input_ids"]
        contexts.append(_context(ids, index=2 + i))
    got = per_context_effects(tiny_gpt2, f"blocks.{layer}.mlp.hook_post", neuron, contexts)
    removed = copy.deepcopy(tiny_gpt2.module)
    with torch.no_grad():
        removed.transformer.h[layer].mlp.c_proj.weight[neuron, :] = 0
    want = [_loss_after(removed, list(c.ids), c.index) - _loss_after(tiny_gpt2.module, list(c.ids), c.index)
            for c in contexts]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=5e-6)  # float32 losses: differences of ~1e-6 are noise
    assert np.abs(got).max() > 1e-4  # the neuron matters somewhere: the test can tell a no-op from the ablation

    grouped = ablation_effects(tiny_gpt2, f"blocks.{layer}.mlp.hook_post", neuron,
                               {"a": contexts[:2], "b": contexts[2:], "empty": []})
    assert grouped["a"] == pytest.approx(np.mean(want[:2]), rel=1e-3, abs=5e-6)
    assert grouped["b"] == pytest.approx(want[2], rel=1e-3, abs=5e-6) and grouped["empty"] is None


def test_contexts_without_token_ids_are_refused(tiny_gpt2):
    with pytest.raises(InputError, match="token ids"):
        per_context_effects(tiny_gpt2, "blocks.1.mlp.hook_post", 3, [Context("x", 0, 1, 1.0, 0, 0, "x")])
