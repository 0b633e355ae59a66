"""Neuron sites: names people type -> the module and tensor read, for every supported family."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neuron_core import ModelInterface, UnknownSiteError, UnsupportedModelError, parse_neuron_ref
from neuron_core.sites import NeuronRef, SiteResolver, find_site_name, layer_of_site_name, neuron_ref, site_label


@pytest.mark.parametrize("name", ["blocks.2.mlp.hook_post", "mlp.2", "mlp2", "2", "layer 2", "Layer_2", "L2",
                                  "-1", "blocks.2", 2, -1, "transformer.h.2.mlp.act"])
def test_shorthand_resolves_to_canonical(tiny_gpt2, name):
    site = tiny_gpt2.resolve(name)
    assert site.name == "blocks.2.mlp.hook_post"
    assert site.module_path == "transformer.h.2.mlp.act" and site.read == "output" and site.layer == 2


def test_raw_module_paths(tiny_gpt2):
    site = tiny_gpt2.resolve("transformer.h.1.attn")
    assert site.name == site.module_path == "transformer.h.1.attn" and site.read == "output"
    assert site.layer is None and tiny_gpt2.resolver.block_order(site) == 1


def test_unknown_names_have_close_matches(tiny_gpt2):
    with pytest.raises(UnknownSiteError, match="transformer.h.1.attn"):
        tiny_gpt2.resolve("transformer.h.1.atn")
    with pytest.raises(UnknownSiteError, match="out of range.*3 layers"):
        tiny_gpt2.resolve("layer 40")
    with pytest.raises(UnknownSiteError):
        tiny_gpt2.resolve("")
    with pytest.raises(UnknownSiteError):
        tiny_gpt2.resolver.resolve_many([])


def test_layer_names(tiny_gpt2, smollm):
    assert tiny_gpt2.layer_names() == [f"blocks.{i}.mlp.hook_post" for i in range(3)]
    assert len(ModelInterface(smollm).layer_names()) == 30


def test_gated_mlp_reads_down_proj_input(smollm):
    site = smollm.sites.resolve("layer 6")
    assert site.module_path == "model.layers.6.mlp.down_proj" and site.read == "input"


def test_bert_reads_intermediate(minilm):
    site = minilm.sites.resolve(3)
    assert site.module_path == "encoder.layer.3.intermediate" and site.read == "output"


def _tiny(config_cls, **kw):
    from transformers import AutoModel, AutoModelForCausalLM

    config = config_cls(**kw)
    try:
        return AutoModelForCausalLM.from_config(config)
    except ValueError:
        return AutoModel.from_config(config)


@pytest.mark.parametrize("family,module,read", [
    ("gpt_neox", "gpt_neox.layers.1.mlp.act", "output"),
    ("gemma", "model.layers.1.mlp.down_proj", "input"),
    ("qwen2", "model.layers.1.mlp.down_proj", "input"),
    ("mistral", "model.layers.1.mlp.down_proj", "input"),
    ("phi", "model.layers.1.mlp.fc2", "input"),
    ("phi3", "model.layers.1.mlp.down_proj", "input"),
    ("opt", "model.decoder.layers.1.fc2", "input"),
])
def test_other_families(family, module, read):
    from transformers import AutoConfig

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=100, head_dim=8)
    if family == "opt":
        small = dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
                     word_embed_proj_dim=32)
    if family == "gpt_neox":
        small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     vocab_size=100)
    small.update(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = AutoConfig.for_model(family, **small)
    model = _tiny(type(config), **config.to_dict())
    resolver = SiteResolver(model)
    site = resolver.resolve(1)
    assert (site.module_path, site.read) == (module, read)
    assert resolver.d_mlp() == 64


class _NoMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def test_unplaceable_model_lists_candidates():
    resolver = SiteResolver(_NoMLP())
    with pytest.raises(UnsupportedModelError, match="cannot place"):
        resolver.resolve("layer 0")
    # raw module names still work on such a model
    assert resolver.resolve("blocks.0").module_path == "blocks.0"


def test_generic_down_projection_found():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.Linear(8, 8)
            self.ffn_in = nn.Linear(8, 32)
            self.w2 = nn.Linear(32, 8)

        def forward(self, x):
            return x + self.w2(torch.relu(self.ffn_in(x + self.attn(x))))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([Block() for _ in range(3)])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    resolver = SiteResolver(Net())
    site = resolver.resolve("mlp.2")
    assert (site.module_path, site.read) == ("layers.2.w2", "input") and resolver.d_mlp() == 32


@pytest.mark.parametrize("ref,expected", [("L6/N1234", (6, 1234)), ("6/1234", (6, 1234)), ("6:12", (6, 12)),
                                          ("layer 3 neuron 7".replace(" neuron ", "/"), (3, 7))])
def test_parse_neuron_ref(ref, expected):
    assert parse_neuron_ref(ref) == expected


def test_parse_neuron_ref_bad():
    with pytest.raises(UnknownSiteError):
        parse_neuron_ref("neuron twelve")


@pytest.mark.parametrize("text", ["L6/N12", "l6/n12", "6/12", "6:12", "L6 / N12", "layer 6, neuron 12", "blocks.6.12"])
def test_neuron_ref_parse_forms(text):
    ref = NeuronRef.parse(text)
    assert (ref.layer, ref.index, ref.site, str(ref)) == (6, 12, "blocks.6.mlp.hook_post", "L6/N12")


def test_neuron_ref_of_a_site():
    assert str(NeuronRef.at("blocks.6.mlp.hook_post", 12)) == "L6/N12" == neuron_ref("layer 6", 12)
    raw = NeuronRef.at("transformer.h.6.attn", 3)
    assert (raw.layer, str(raw)) == (None, "transformer.h.6.attn/N3")
    assert NeuronRef.parse("transformer.h.6.attn/N3", sites=["transformer.h.6.attn"]) == raw
    with pytest.raises(UnknownSiteError):
        NeuronRef.parse("L6N12")  # a separator is needed, as before NeuronRef


def test_site_names_are_found_in_a_list():
    names = ["blocks.0.mlp.hook_post", "blocks.2.mlp.hook_post", "transformer.h.1.attn"]
    assert [find_site_name(s, names, n_layers=3) for s in ("layer 2", -1, "L0", "transformer.h.1.attn", "mlp.1")] \
        == ["blocks.2.mlp.hook_post", "blocks.2.mlp.hook_post", "blocks.0.mlp.hook_post", "transformer.h.1.attn", None]
    assert (layer_of_site_name("mlp.6"), layer_of_site_name("x.y"), site_label("blocks.3.mlp.hook_post")) == (6, None,
                                                                                                              "L3")
