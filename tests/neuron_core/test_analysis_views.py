"""Neuron statistics tables, token views, logit views and clustering, against independent computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from neuron_core import ActivationMonitor, InputError, ModelInterface, profile
from neuron_core.analysis import (
    cluster_neurons,
    direct_effect,
    layer_summary,
    logit_lens,
    neuron_logit_effects,
    neuron_table,
    text_neuron_map,
    token_activations,
)

TEXT = "The quick brown fox jumps over the lazy dog near the river bank."


def test_neuron_table_and_layer_summary(tiny_gpt2, builtin_texts):
    prof = profile(tiny_gpt2, ["mlp.0", "mlp.1"], builtin_texts[:200], progress=False)
    table = neuron_table(prof)
    assert len(table) == 2 * 256 and table["ref"].iloc[0] == "L0/N0"
    record = ActivationMonitor(tiny_gpt2, ["mlp.1"]).capture(builtin_texts[:200], batch_size=16)
    frac = (record["mlp.1"] > 0).double().mean(0).numpy()
    sub = table[table["site"] == "blocks.1.mlp.hook_post"]
    np.testing.assert_allclose(sub["frac_active"].to_numpy(), frac, atol=1e-12)
    np.testing.assert_array_equal(sub["dense"].to_numpy(), frac > 0.5)
    summary = layer_summary(prof)
    assert list(summary["n_neurons"]) == [256, 256]
    assert int(summary["n_dense"].iloc[1]) == int((frac > 0.5).sum())


def test_token_activations_record(tiny_gpt2):
    record = ActivationMonitor(tiny_gpt2, ["mlp.2"]).capture([TEXT, TEXT.upper()])
    frame = token_activations(record, "mlp.2", 7)
    manual = pd.DataFrame({"t": record.tokens, "a": record["mlp.2"][:, 7].double().numpy()}).groupby("t")["a"].mean()
    for _, row in frame.iterrows():
        assert abs(row["mean"] - manual[row["token"]]) < 1e-9
    assert frame["mean"].is_monotonic_decreasing


def test_text_neuron_map(tiny_gpt2):
    frame = text_neuron_map(tiny_gpt2, TEXT, "mlp.1", top=3)
    acts = ActivationMonitor(tiny_gpt2, ["mlp.1"]).capture(TEXT)["mlp.1"]
    top = torch.topk(acts, 3, dim=1)
    assert frame["neuron"].tolist() == top.indices.flatten().tolist()


def test_logit_effects_match_manual(smollm):
    interface = ModelInterface(smollm)
    effects = neuron_logit_effects(interface, "layer 6", [5, 77], k=5)
    model = smollm.model
    w_out = model.model.layers[6].mlp.down_proj.weight[:, 5].detach()  # [d]
    manual = model.lm_head.weight.detach() @ (w_out * model.model.norm.weight.detach())
    top = torch.topk(manual, 5)
    assert [round(v, 4) for _, v in effects[0].promoted] == [round(float(v), 4) for v in top.values]
    assert effects[0].promoted[0][0] == interface.token_strings([int(top.indices[0])])[0]
    assert all(v < 0 for _, v in effects[0].suppressed)


def test_logit_effects_gpt2_conv1d(tiny_gpt2):
    effects = neuron_logit_effects(tiny_gpt2, "mlp.2", [3], k=3)
    model = tiny_gpt2.module
    w_out = model.transformer.h[2].mlp.c_proj.weight[3].detach()  # Conv1D: [in, out]
    manual = model.lm_head.weight.detach() @ (w_out * model.transformer.ln_f.weight.detach())
    assert abs(effects[0].promoted[0][1] - float(manual.max())) < 1e-4


def test_direct_effect_last_layer_matches_ablation(smollm):
    """For the last layer, zero-ablating the neuron changes the logits by about its direct effect."""
    interface = ModelInterface(smollm)
    layer, neuron = 29, 11
    eff = direct_effect(interface, TEXT, f"layer {layer}", neuron, position=-1, k=3)
    ids = smollm.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    model = smollm.model
    down = model.model.layers[layer].mlp.down_proj

    def zero(m, a):
        x = a[0].clone()
        x[..., neuron] = 0
        return (x,)

    with torch.no_grad():
        base = model(ids).logits[0, -1]
        h = down.register_forward_pre_hook(zero)
        try:
            ablated = model(ids).logits[0, -1]
        finally:
            h.remove()
    true_change = base - ablated
    predicted = int(base.argmax())
    assert eff.predicted == interface.token_strings([predicted])[0]
    assert abs(eff.predicted_change - float(true_change[predicted])) < 0.05 + 0.1 * abs(float(true_change[predicted]))


def test_logit_lens_last_layer_equals_model(smollm):
    interface = ModelInterface(smollm)
    frame = logit_lens(interface, "The capital of France is", layers=[29], k=1)
    last = frame[frame["position"] == frame["position"].max()].iloc[0]
    assert last["predictions"][0][0].strip() == "Paris"


def test_cluster_neurons_recovers_planted_groups():
    from neuron_core.capture import ActivationRecord

    rng = np.random.default_rng(0)
    base = rng.normal(size=(500, 3))
    acts = np.concatenate([base[:, [0]] + 0.05 * rng.normal(size=(500, 4)),
                           base[:, [1]] + 0.05 * rng.normal(size=(500, 4)),
                           base[:, [2]] + 0.05 * rng.normal(size=(500, 4))], axis=1)
    record = ActivationRecord({"s": torch.tensor(acts, dtype=torch.float32)}, ["t"] * 500,
                              torch.zeros(500, dtype=torch.long), torch.zeros(500, dtype=torch.long),
                              torch.arange(500))
    clusters = cluster_neurons(record, "s")
    labels = clusters.labels
    assert len(set(labels)) == 3
    for group in (range(0, 4), range(4, 8), range(8, 12)):
        assert len({labels[clusters.neurons.index(n)] for n in group}) == 1
    with pytest.raises(InputError):
        cluster_neurons(record, "s", n_clusters=1)
