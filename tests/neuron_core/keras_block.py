"""A tiny Keras language model and a word-level tokenizer, shared by the Keras tests."""

from __future__ import annotations

import keras

layers = keras.layers

D, HEADS, FF = 16, 2, 32
"""Model width, attention heads and FFN width (the neurons at ``ffn_up``)."""


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


def build_block(vocab: int) -> keras.Model:
    """Embedding + self-attention + LayerNorm + FFN (Dense gelu, Dense back) + LM head over ``vocab`` ids; padding
    id 0 is masked. Seeded: every call builds the same weights."""
    keras.utils.set_random_seed(0)
    ids = keras.Input(shape=(None,), dtype="int32", name="input_ids")
    x = layers.Embedding(vocab, D, mask_zero=True, name="embed")(ids)
    attn = layers.MultiHeadAttention(HEADS, D // HEADS, name="attn")(x, x)
    h = layers.LayerNormalization(name="ln1")(layers.Add(name="res1")([x, attn]))
    f = layers.Dense(FF, activation="gelu", name="ffn_up")(h)
    f = layers.Dense(D, name="ffn_down")(f)
    out = layers.LayerNormalization(name="ln2")(layers.Add(name="res2")([h, f]))
    return keras.Model(ids, layers.Dense(vocab, name="lm_head")(out), name="tiny_block")
