"""The TensorFlow / Keras backend: capture parity with hand computation, padding, names, profiles, no TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest
import torch
from scipy.special import erf

from neuron_core import ActivationMonitor, ModelInterface
from neuron_core.errors import EmptyInputError, FrameworkNotAvailableError, InputError, UnknownSiteError
from tests.neuron_core.keras_block import FF, D, WordTokenizer, build_block

layers = keras.layers

VOCAB = 40


def build_mlp() -> keras.Model:
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((8,)), layers.Dense(16, activation="relu", name="hidden"),
                             layers.Dense(3, name="out")], name="mlp")


class SubclassedMLP(keras.Model):
    """No functional graph: its layers are read by call interception."""

    def __init__(self) -> None:
        super().__init__(name="sub_mlp")
        self.hidden = layers.Dense(16, activation="relu", name="hidden")
        self.out = layers.Dense(3, name="out")

    def call(self, x):  # type: ignore[no-untyped-def]
        return self.out(self.hidden(x))


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


@pytest.fixture(scope="module")
def block() -> keras.Model:
    return build_block(VOCAB)


@pytest.fixture(scope="module")
def iface(block: keras.Model) -> ModelInterface:
    return ModelInterface(block, framework="tensorflow")


@pytest.fixture(scope="module")
def ids() -> np.ndarray:
    return np.random.default_rng(0).integers(1, VOCAB, size=(3, 6))  # [B, T], no padding


def weights(model: keras.Model, name: str) -> list[np.ndarray]:
    return [np.asarray(w, dtype=np.float64) for w in model.get_layer(name).get_weights()]


# ---------------------------------------------------------------------------------------------------- parity
def test_ffn_hidden_equals_manual_computation_from_its_captured_input(block, iface, ids):
    monitor = ActivationMonitor(iface)
    monitor.register_layers(["ln1", "ffn_up"])
    record = monitor.capture(ids)
    assert record["ffn_up"].dtype == torch.float32
    assert record["ffn_up"].shape == (ids.size, FF) and record["ln1"].shape == (ids.size, D)
    kernel, bias = weights(block, "ffn_up")
    expected = gelu(record["ln1"].double().numpy() @ kernel + bias)  # [n_tokens, FF]
    np.testing.assert_allclose(record["ffn_up"].numpy(), expected, atol=1e-5, rtol=0)
    assert float(record["ffn_up"].abs().max()) > 0.1  # a real signal, not all zeros
    # per-token facts: ids as strings (no tokenizer), document = row, position = column
    assert record.tokens == [str(i) for i in ids.ravel()]
    assert record.token_ids.tolist() == ids.ravel().tolist()
    assert record.doc_ids.tolist() == np.repeat(np.arange(3), 6).tolist()
    assert record.positions.tolist() == np.tile(np.arange(6), 3).tolist()
    assert record.model_name == "tiny_block"


def test_layer_nested_in_attention_equals_manual_projection(block, iface, ids):
    record = ActivationMonitor(iface, ["embed", "attn/query"]).capture(ids)
    kernel, bias = [np.asarray(w, np.float64) for w in block.get_layer("attn").query_dense.get_weights()]
    # query = x @ W + b with W [D, heads, head_dim]; the record flattens heads: [n_tokens, heads * head_dim]
    expected = np.einsum("nd,dhk->nhk", record["embed"].double().numpy(), kernel) + bias
    np.testing.assert_allclose(record["attn/query"].numpy(), expected.reshape(ids.size, -1), atol=1e-5, rtol=0)
    assert record["attn.query"] is record["attn/query"]  # "." works as a separator too


def test_mlp_hidden_layer_equals_numpy_matmul_and_relu():
    model = build_mlp()
    x = np.random.default_rng(2).normal(size=(5, 8)).astype(np.float32)
    record = ActivationMonitor(ModelInterface(model, framework="keras"), ["hidden"]).capture(x)
    kernel, bias = weights(model, "hidden")
    expected = np.maximum(x.astype(np.float64) @ kernel + bias, 0.0)  # [5, 16]
    np.testing.assert_allclose(record["hidden"].numpy(), expected, atol=1e-5, rtol=0)
    assert (record["hidden"] == 0).any() and (record["hidden"] > 0).any()  # relu really cut something
    assert record.tokens == [f"row{i}" for i in range(5)]
    assert record.doc_ids.tolist() == list(range(5)) and record.positions.tolist() == [0] * 5
    assert record.token_ids.tolist() == [-1] * 5
    # a torch tensor and a small batch size give the same rows
    again = ActivationMonitor(ModelInterface(model, framework="keras"), ["hidden"]).capture(torch.from_numpy(x),
                                                                                          batch_size=2)
    assert torch.equal(again["hidden"], record["hidden"]) and again.doc_ids.tolist() == list(range(5))


def test_subclassed_model_is_read_by_interception_and_restored():
    model = SubclassedMLP()
    x = np.random.default_rng(3).normal(size=(4, 8)).astype(np.float32)
    before = np.asarray(model(x))
    iface = ModelInterface(model, framework="tensorflow")
    assert iface.layer_names() == ["hidden", "out"]
    record = ActivationMonitor(iface, ["hidden", "out"]).capture(x)
    kernel, bias = weights(model, "hidden")
    hidden = np.maximum(x.astype(np.float64) @ kernel + bias, 0.0)
    np.testing.assert_allclose(record["hidden"].numpy(), hidden, atol=1e-5, rtol=0)
    np.testing.assert_allclose(record["out"].numpy(), before, atol=1e-6, rtol=0)
    assert all("call" not in vars(layer) for layer in (model.hidden, model.out))
    np.testing.assert_array_equal(np.asarray(model(x)), before)


def test_layers_inside_a_sub_model_and_shared_layers():
    keras.utils.set_random_seed(6)
    inner_in = keras.Input((6,))
    inner = keras.Model(inner_in, layers.Dense(5, name="post")(layers.Dense(7, name="pre")(inner_in)), name="inner")
    outer_in = keras.Input((6,))
    model = keras.Model(outer_in, layers.Dense(2, name="head")(inner(outer_in)))
    x = np.random.default_rng(6).normal(size=(3, 6)).astype(np.float32)
    record = ActivationMonitor(ModelInterface(model, framework="tensorflow"), ["inner/pre", "inner"]).capture(x)
    kernel, bias = weights(inner, "pre")
    np.testing.assert_allclose(record["inner/pre"].numpy(), x @ kernel + bias, atol=1e-5, rtol=0)
    np.testing.assert_allclose(record["inner"].numpy(), np.asarray(inner(x)), atol=1e-6, rtol=0)

    shared = layers.Dense(6, name="shared")
    shared_in = keras.Input((6,))
    twice = keras.Model(shared_in, shared(shared(shared_in)))
    with pytest.raises(InputError, match="ran 2 times"):
        ActivationMonitor(ModelInterface(twice, framework="tensorflow"), ["shared"]).capture(x)


# ---------------------------------------------------------------------------------------------------- padding
def test_padded_positions_are_removed(iface):
    rows = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    monitor = ActivationMonitor(iface, ["ffn_up"])
    alone = torch.cat([monitor.capture(np.array([r]))["ffn_up"] for r in rows])  # [9, FF], no padding at all
    right = np.zeros((3, 4), dtype=np.int64)
    left = np.zeros((3, 4), dtype=np.int64)
    for i, r in enumerate(rows):
        right[i, : len(r)] = r
        left[i, 4 - len(r):] = r
    for padded in (right, left):
        record = monitor.capture({"input_ids": padded, "attention_mask": (padded != 0).astype(np.int64)})
        assert record["ffn_up"].shape == (9, FF)
        torch.testing.assert_close(record["ffn_up"], alone, atol=1e-5, rtol=0)
        assert record.token_ids.tolist() == [t for r in rows for t in r]
        assert record.positions.tolist() == [0, 1, 2, 3, 0, 1, 0, 1, 2]  # left padding does not shift them
        assert record.doc_ids.tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 2]
    ragged = monitor.capture(rows)  # lists of different lengths are padded and masked for you
    torch.testing.assert_close(ragged["ffn_up"], alone, atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="attention_mask has shape"):
        monitor.capture({"input_ids": right, "attention_mask": np.ones((3, 2))})


def test_texts_use_the_tokenizer(block):
    tok = WordTokenizer("the cat sat on a mat dog ran".split())
    iface = ModelInterface(block, framework="tensorflow", tokenizer=tok)
    assert iface.tokenizer is tok and iface.token_strings([2]) == [" cat"]
    record = ActivationMonitor(iface, ["ffn_up"]).capture(["the cat sat", "a dog ran on the mat"])
    assert record.tokens == [" the", " cat", " sat", " a", " dog", " ran", " on", " the", " mat"]
    assert record.texts == ["the cat sat", "a dog ran on the mat"]
    assert record.doc_ids.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    ids = np.array([[1, 2, 3]])
    torch.testing.assert_close(record["ffn_up"][:3], ActivationMonitor(iface, ["ffn_up"]).capture(ids)["ffn_up"],
                               atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------- names
def test_layer_names_and_interface_facts(block, iface):
    names = iface.layer_names()
    assert names[:3] == ["input_ids", "embed", "attn"]
    assert {"attn/query", "attn/key", "attn/value", "attn/attention_output", "ln1", "ffn_up", "ffn_down",
            "lm_head"} <= set(names)
    assert iface.framework == "tensorflow" and iface.name == "tiny_block" and iface.model is block
    assert iface.module_names() == names and iface.tokenizer is None
    assert iface.token_strings([3, 7]) == ["3", "7"]
    assert "family='keras'" in repr(iface)


def test_unknown_layer_names_close_matches_before_any_work(iface, ids, monkeypatch):
    monitor = ActivationMonitor(iface)
    with pytest.raises(UnknownSiteError, match="ffn_up"):
        monitor.register_layers(["ffn_upp"])
    with pytest.raises(UnknownSiteError, match="attn/query"):
        monitor.register_layers(["ln1", "query"])
    assert monitor.sites == []  # nothing registered when one name is wrong

    from neuron_core import keras_backend

    def no_forward(*args, **kwargs):
        raise AssertionError("the model ran before the names were checked")

    monkeypatch.setattr(keras_backend, "_forward", no_forward)
    with pytest.raises(UnknownSiteError, match="ffn_down"):
        monitor.capture(ids, sites=["ffn_up", "ffn_dwn"])
    with pytest.raises(InputError, match="no layers registered"):
        monitor.capture(ids)
    with pytest.raises(EmptyInputError):
        monitor.capture(np.zeros((0, 4), dtype=np.int64), sites=["ffn_up"])
    with pytest.raises(InputError, match="capture"):
        with monitor.trace(["ffn_up"]):
            pass


def test_capture_leaves_the_model_unchanged(iface, ids):
    model = build_block(VOCAB)
    before = np.asarray(model(ids))
    n_layers, n_weights = len(model.layers), len(model.weights)
    nodes = [len(layer._inbound_nodes) for layer in model.layers]
    values = [np.array(w) for w in model.get_weights()]
    face = ModelInterface(model, framework="tensorflow")
    monitor = ActivationMonitor(face, ["ffn_up", "attn/query", "lm_head"])
    first = monitor.capture(ids)
    second = monitor.capture(ids)
    torch.testing.assert_close(first["ffn_up"], second["ffn_up"], atol=0, rtol=0)
    np.testing.assert_allclose(first["lm_head"].numpy(), before.reshape(-1, VOCAB), atol=1e-5, rtol=0)
    assert face.loaded.plan(monitor.sites) is face.loaded.plan(monitor.sites)  # derived model built once, cached
    assert len(model.layers) == n_layers and len(model.weights) == n_weights
    assert [len(layer._inbound_nodes) for layer in model.layers] == nodes
    assert all(np.array_equal(a, b) for a, b in zip(values, model.get_weights(), strict=True))
    assert all("call" not in vars(entry.layer) for entry in face.loaded.sites.entries.values())
    np.testing.assert_array_equal(np.asarray(model(ids)), before)


# ---------------------------------------------------------------------------------------------------- profile
def test_profile_keras_statistics_equal_numpy(iface):
    from neuron_core.keras_backend import profile_keras
    from neuron_core.profile import NeuronProfile

    rng = np.random.default_rng(4)
    batches = []
    for lengths in ([5, 3, 4], [2, 6]):
        padded = np.zeros((len(lengths), 6), dtype=np.int64)
        for i, n in enumerate(lengths):
            padded[i, :n] = rng.integers(1, VOCAB, size=n)
        batches.append({"input_ids": padded, "attention_mask": (padded != 0).astype(np.int64)})
    k = 4
    prof = profile_keras(iface, ["ffn_up"], iter(batches), top_k=k, bottom_k=2, n_samples=4, progress=False)
    assert isinstance(prof, NeuronProfile) and prof.n_tokens == 20 and prof.meta["n_docs"] == 5
    # the same tokens, captured whole (documents numbered across batches)
    monitor = ActivationMonitor(iface, ["ffn_up"])
    records = [monitor.capture(b) for b in batches]
    acts = torch.cat([r["ffn_up"] for r in records]).double().numpy()  # [20, FF]
    docs = torch.cat([records[0].doc_ids, records[1].doc_ids + 3]).numpy()
    pos = torch.cat([r.positions for r in records]).numpy()
    site = prof["ffn_up"]
    np.testing.assert_allclose(site.mean.numpy(), acts.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(site.var.numpy(), acts.var(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(site.max.numpy(), acts.max(0))
    np.testing.assert_array_equal(site.min.numpy(), acts.min(0))
    assert site.count.tolist() == [20.0] * FF
    np.testing.assert_array_equal(site.frac_active.numpy(), (acts > 0).mean(0))
    for neuron in range(FF):
        top = site.top_examples(neuron)
        np.testing.assert_allclose([e.value for e in top], np.sort(acts[:, neuron])[::-1][:k], atol=0, rtol=0)
        best = int(np.argmax(acts[:, neuron]))
        assert (top[0].doc_id, top[0].position) == (int(docs[best]), int(pos[best]))
    # without a tokenizer, examples show token ids as numbers, with their context inside the document
    example = site.top_examples(0)[0]
    assert example.token.isdigit() and all(t.isdigit() for t in example.context)
    capped = profile_keras(iface, ["ffn_up"], batches, top_k=k, max_tokens=7, progress=False)
    assert capped.n_tokens == 7 and capped["ffn_up"].count.tolist() == [7.0] * FF
    assert (capped.meta["n_docs"], capped.meta["next_doc"], prof.meta["next_doc"]) == (2, 2, 5)
    np.testing.assert_allclose(capped["ffn_up"].mean.numpy(), acts[:7].mean(0), rtol=1e-12, atol=1e-12)


def test_profile_keras_on_numeric_rows():
    from neuron_core.keras_backend import profile_keras

    model = build_mlp()
    x = np.random.default_rng(5).normal(size=(10, 8)).astype(np.float32)
    prof = profile_keras(ModelInterface(model, framework="tensorflow"), ["hidden"], [x[:6], x[6:]], top_k=3,
                         progress=False)
    acts = ActivationMonitor(ModelInterface(model, framework="tensorflow"), ["hidden"]).capture(x)["hidden"]
    np.testing.assert_allclose(prof["hidden"].mean.numpy(), acts.double().numpy().mean(0), rtol=1e-12, atol=1e-12)
    top = prof["hidden"].top_examples(0)
    assert top[0].doc_id == int(acts[:, 0].argmax())  # numeric examples are identified by their row
    with pytest.raises(EmptyInputError):
        profile_keras(ModelInterface(model, framework="tensorflow"), ["hidden"], [], progress=False)


# ---------------------------------------------------------------------------------------------------- no TF
def test_without_tensorflow_the_error_says_how_to_install(monkeypatch):
    for name in ("tensorflow", "keras", "tf_keras"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    for framework in ("tensorflow", "keras", "TensorFlow"):
        with pytest.raises(FrameworkNotAvailableError, match=r"pip install 'neuron-workbench\[tensorflow\]'"):
            ModelInterface(object(), framework=framework)


def test_a_torch_module_is_not_a_keras_model():
    with pytest.raises(InputError, match="needs a Keras model"):
        ModelInterface(torch.nn.Linear(2, 2), framework="tensorflow")


def test_neuron_core_imports_tensorflow_lazily():
    code = ("import sys, neuron_core, neuron_core.keras_backend; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
