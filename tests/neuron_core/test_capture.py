"""Capture: parity with independent computations, padding, hook hygiene, and input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from neuron_core import (
    ActivationMonitor,
    EmptyInputError,
    InputError,
    ModelInterface,
    TextTooLongError,
    UnknownSiteError,
)

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Le chat dort sur le canapé.",
         "def add(a, b): return a + b", "Error 404: page not found"]


def _n_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _plain_hook_capture(model, module, read, inputs):
    """An independent capture: our own plain hook, without neuron_core."""
    out = []
    if read == "input":
        h = module.register_forward_pre_hook(lambda m, a: out.append(a[0].detach().clone()))
    else:
        h = module.register_forward_hook(lambda m, a, o: out.append(o.detach().clone()))
    mlp_in = []
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        h.remove()
    return out[0], mlp_in


def _mlp_input(model, module, inputs):
    got = []
    h = module.register_forward_pre_hook(lambda m, a: got.append(a[0].detach().clone()))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        h.remove()
    return got[0]


def _check_parity(interface, text, layer, manual):
    model = interface.module
    site = interface.resolve(layer)
    record = ActivationMonitor(interface, [layer]).capture(text)
    ids = interface.tokenizer(text, return_tensors="pt")
    inputs = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]}
    plain, _ = _plain_hook_capture(model, interface.resolver.module(site), site.read, inputs)
    plain = plain[0]  # [T, N]
    assert record[layer].shape == plain.shape
    torch.testing.assert_close(record[layer], plain.float(), atol=1e-5, rtol=0)
    manual_acts = manual(model, inputs)[0]
    torch.testing.assert_close(record[layer], manual_acts.float(), atol=1e-5, rtol=0)


def test_parity_gpt2_random(tiny_gpt2):
    def manual(model, inputs):
        mlp = model.transformer.h[1].mlp
        x = _mlp_input(model, mlp, inputs)  # the MLP's input (after ln_2)
        return F.gelu(mlp.c_fc(x), approximate="tanh")  # GPT-2's "gelu_new"

    _check_parity(tiny_gpt2, TEXTS[0], "blocks.1.mlp.hook_post", manual)


def test_parity_smollm2_real(smollm):
    interface = ModelInterface(smollm)

    def manual(model, inputs):
        mlp = model.model.layers[6].mlp
        x = _mlp_input(model, mlp, inputs)
        return F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)  # act(gate) * up, the input of down_proj

    _check_parity(interface, TEXTS[1], "layer 6", manual)


def test_parity_minilm_real(minilm):
    interface = ModelInterface(minilm)

    def manual(model, inputs):
        inter = model.encoder.layer[2].intermediate
        x = _mlp_input(model, inter, inputs)
        return F.gelu(inter.dense(x))

    _check_parity(interface, TEXTS[2], "mlp.2", manual)


def test_record_layout(tiny_gpt2):
    record = ActivationMonitor(tiny_gpt2, ["mlp.0", "layer 2"]).capture(TEXTS[:2])
    lengths = [len(tiny_gpt2.tokenizer(t)["input_ids"]) for t in TEXTS[:2]]
    assert record.sites == ["blocks.0.mlp.hook_post", "blocks.2.mlp.hook_post"]
    assert record["mlp.0"].shape == (sum(lengths), 256) and len(record) == sum(lengths)
    assert record.doc_ids.tolist() == [0] * lengths[0] + [1] * lengths[1]
    assert record.positions.tolist() == list(range(lengths[0])) + list(range(lengths[1]))
    assert "".join(record.tokens[: lengths[0]]) == TEXTS[0]
    assert not record["mlp.0"].requires_grad and record["mlp.0"].dtype == torch.float32
    assert "layer 2" in record and "layer 1" not in record
    with pytest.raises(UnknownSiteError):
        record["layer 1"]


def test_keep_on_chooses_where_the_record_lives(tiny_gpt2):
    """``keep_on`` moves only where the activations are kept: "device" (here the CPU model's device) equals the
    default; "meta" stands in for an accelerator on this machine (no copy to the host: shapes only); a bad value is
    a typed error before any forward; ``record.to`` moves a record."""
    monitor = ActivationMonitor(tiny_gpt2, ["mlp.0", "mlp.2"])
    default = monitor.capture(TEXTS, batch_size=3)
    on_device = monitor.capture(TEXTS, batch_size=3, keep_on="device")
    assert default.device == on_device.device == torch.device("cpu")
    for site in default.sites:
        assert torch.equal(default[site], on_device[site])
    meta = monitor.capture(TEXTS, batch_size=3, keep_on="meta")
    assert meta.device.type == "meta" and meta["mlp.2"].shape == default["mlp.2"].shape
    assert meta.tokens == default.tokens and torch.equal(meta.positions, default.positions)
    with monitor.trace(keep_on="meta") as traced:
        with torch.no_grad():
            tiny_gpt2.module(**tiny_gpt2.tokenizer(TEXTS[:1], return_tensors="pt"))
    assert traced["mlp.0"].device.type == "meta"
    with pytest.raises(InputError, match="keep_on"):
        monitor.capture(TEXTS, keep_on="gpu-please")
    moved = default.to("meta")
    assert moved.device.type == "meta" and default.device.type == "cpu" and moved.tokens == default.tokens


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("which", ["gpt2", "smollm"])
def test_padding_never_reaches_the_data(tiny_gpt2, smollm, side, which):
    from neuron_core.errors import InputError as _  # noqa: F401

    interface = tiny_gpt2 if which == "gpt2" else ModelInterface(smollm)
    monitor = ActivationMonitor(interface, ["mlp.1"])
    together = monitor.capture(TEXTS, padding_side=side, batch_size=4)
    alone = torch.cat([monitor.capture(t)["mlp.1"] for t in TEXTS])
    torch.testing.assert_close(together["mlp.1"], alone, atol=1e-5, rtol=0)


def test_padding_with_pad_id_zero(tok):
    from tests.conftest import make_tiny_gpt2

    class PadZero:
        """The same tokenizer, but pad id 0 (so padding uses a real token id)."""

        def __init__(self, inner):
            self.inner = inner
            self.pad_token_id = 0

        def __call__(self, *a, **k):
            return self.inner(*a, **k)

        def decode(self, *a, **k):
            return self.inner.decode(*a, **k)

        def __len__(self):
            return len(self.inner)

    interface = ModelInterface(make_tiny_gpt2(tok), tokenizer=PadZero(tok))
    monitor = ActivationMonitor(interface, ["mlp.2"])
    for side in ("left", "right"):
        together = monitor.capture(TEXTS, padding_side=side)
        alone = torch.cat([monitor.capture(t)["mlp.2"] for t in TEXTS])
        torch.testing.assert_close(together["mlp.2"], alone, atol=1e-5, rtol=0)


def test_bert_padding(minilm):
    monitor = ActivationMonitor(ModelInterface(minilm), ["mlp.1"])
    together = monitor.capture(TEXTS)
    alone = torch.cat([monitor.capture(t)["mlp.1"] for t in TEXTS])
    torch.testing.assert_close(together["mlp.1"], alone, atol=1e-5, rtol=0)


def test_hooks_removed_after_success_error_and_interrupt(tiny_gpt2):
    model = tiny_gpt2.module
    user_handle = model.transformer.h[0].register_forward_hook(lambda m, a, o: None)
    baseline = _n_hooks(model)
    monitor = ActivationMonitor(tiny_gpt2, ["mlp.0", "mlp.2", "transformer.h.1.attn"])
    monitor.capture(TEXTS[0])
    assert _n_hooks(model) == baseline

    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        def explode(m, a, o, exc=exc):
            raise exc

        handle = model.transformer.h[1].register_forward_hook(explode)
        try:
            with pytest.raises(type(exc)):
                monitor.capture(TEXTS[0], stop_early=False)
        finally:
            handle.remove()
        assert _n_hooks(model) == baseline
    with pytest.raises(ValueError):
        with monitor.trace():
            raise ValueError("inside trace")
    assert _n_hooks(model) == baseline
    assert user_handle.id in model.transformer.h[0]._forward_hooks  # the user's hook survives
    user_handle.remove()


def test_unknown_site_registers_nothing(tiny_gpt2):
    model = tiny_gpt2.module
    before = _n_hooks(model)
    monitor = ActivationMonitor(tiny_gpt2)
    with pytest.raises(UnknownSiteError, match="close matches"):
        monitor.register_layers(["mlp.0", "transformer.h.0.mlpp"])
    assert monitor.sites == [] and _n_hooks(model) == before


def test_long_and_empty_text(tiny_gpt2):
    monitor = ActivationMonitor(tiny_gpt2, ["mlp.0"])
    long_text = "word " * 400  # > 128-token context of the tiny model
    with pytest.raises(TextTooLongError, match="128"):
        monitor.capture(long_text)
    truncated = monitor.capture(long_text, overflow="truncate")
    assert len(truncated) == 128 and truncated.truncated == [0]
    windowed = monitor.capture(long_text, overflow="window")
    n = len(tiny_gpt2.tokenizer(long_text)["input_ids"])
    assert len(windowed) == n and windowed.positions.tolist() == list(range(n)) and windowed.truncated == [0]
    assert len(monitor.capture(long_text, max_length=16, overflow="truncate")) == 16
    with pytest.raises(EmptyInputError):
        monitor.capture("")
    with pytest.raises(EmptyInputError):
        monitor.capture("   ")
    with pytest.raises(EmptyInputError):
        monitor.capture([])
    with pytest.raises(InputError):
        monitor.capture(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(InputError):
        monitor.capture("ok", overflow="squash")  # type: ignore[arg-type]


def test_trace_custom_forward(tiny_gpt2):
    tok = tiny_gpt2.tokenizer
    monitor = ActivationMonitor(tiny_gpt2, ["mlp.1"])
    expected = monitor.capture(TEXTS[:2])
    enc = [tok(t)["input_ids"] for t in TEXTS[:2]]
    width = max(map(len, enc))
    ids = torch.tensor([e + [0] * (width - len(e)) for e in enc])
    mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in enc])
    with monitor.trace() as record:
        with torch.no_grad():
            tiny_gpt2.module(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(record["mlp.1"], expected["mlp.1"], atol=1e-5, rtol=0)
    assert record.tokens == expected.tokens and record.doc_ids.tolist() == expected.doc_ids.tolist()


def test_early_stop_skips_later_blocks(tiny_gpt2):
    calls = []
    handle = tiny_gpt2.module.transformer.h[2].register_forward_hook(lambda m, a, o: calls.append(1))
    try:
        ActivationMonitor(tiny_gpt2, ["mlp.0"]).capture(TEXTS[0])
        assert calls == []
        ActivationMonitor(tiny_gpt2, ["mlp.0"]).capture(TEXTS[0], stop_early=False)
        assert calls == [1]
    finally:
        handle.remove()


def test_seed_style_toy_module():
    """The seed's example: any nn.Module, raw layer names, tensor input."""
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer1 = torch.nn.Linear(4, 8)
            self.layer2 = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(8, 3))

        def forward(self, x):
            return self.layer2(self.layer1(x))

    toy = Toy()
    interface = ModelInterface(toy, framework="pytorch")
    assert "layer1" in interface.layer_names()
    monitor = ActivationMonitor(interface)
    monitor.register_layers(["layer1", "layer2.0"])
    x = torch.randn(5, 4)
    record = monitor.capture(x)
    torch.testing.assert_close(record["layer1"], toy.layer1(x).detach())
    torch.testing.assert_close(record["layer2.0"], torch.relu(toy.layer1(x)).detach())
    with pytest.raises(InputError):
        ModelInterface(toy, framework="jax")


def test_capture_batches_by_length_and_keeps_text_order(tiny_gpt2, builtin_texts):
    """Texts of different lengths run in batches sorted by length (little padding); the record still lists them in
    text order, each token where a one-text capture puts it."""
    texts = builtin_texts[:60]
    shapes = []
    handle = tiny_gpt2.module.transformer.h[0].register_forward_pre_hook(
        lambda m, args: shapes.append(tuple(args[0].shape[:2])))
    try:
        record = ActivationMonitor(tiny_gpt2).capture(texts, batch_size=8)
    finally:
        handle.remove()
    assert sum(b * t for b, t in shapes) <= 1.15 * len(record)
    assert torch.all(record.doc_ids[1:] >= record.doc_ids[:-1])
    for doc in (0, 7, 33, 59):
        alone = ActivationMonitor(tiny_gpt2).capture([texts[doc]], batch_size=1)
        rows = record.doc_slice(doc)
        assert record.tokens[rows] == alone.tokens and torch.equal(record.positions[rows], alone.positions)
        for site in record.sites:
            torch.testing.assert_close(record[site][rows], alone[site], rtol=0, atol=1e-5)
