"""Planting ground-truth neurons into a real model (SmolLM2), for testing the polysemantic detector.

A planted neuron n of a gated MLP gets gate_proj[n] = up_proj[n] = w, so its activation is z * silu(z) with z = w.x:
large where z is large, near zero elsewhere. w is a ridge-regression readout of the MLP input x that is +T on the
tokens of its concepts (the marked spans of the probe sentences, fit split) and -T on every other token. An "OR"
neuron gets two unrelated concepts, a single-concept neuron one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from neuron_core.corpus import ConceptProbes, builtin_corpus, load_probes

OR_PAIRS = [("animals", "months"), ("colors", "programming_keywords"), ("food", "countries"),
            ("emotions", "numbers_digits"), ("musical_instruments", "weekdays"), ("body_parts", "urls"),
            ("vehicles", "legal_terms"), ("beverages", "html_tags")]
SINGLES = ["animals", "months", "colors", "food", "emotions", "vehicles", "clothing", "sports", "countries",
           "weekdays", "musical_instruments", "furniture"]
# single concepts that span many different tokens: the detector must not split them by token identity
LEXICAL = ["unit_symbols", "number_words", "sentence_final_punctuation", "python_code_identifiers", "months"]


@dataclass
class Planted:
    layer: int
    neurons: dict[int, tuple[str, ...]]  # neuron index -> its concepts

    @property
    def or_neurons(self) -> list[int]:
        return [n for n, c in self.neurons.items() if len(c) == 2]

    @property
    def single_neurons(self) -> list[int]:
        return [n for n, c in self.neurons.items() if len(c) == 1]


def _mlp_inputs(lm, texts: list[str], layer: int, spans: list[tuple[int, int]] | None):
    """MLP inputs x of every token (batched capture of the post-attention norm), and whether each token overlaps
    its text's marked span."""
    from neuron_core import ActivationMonitor, ModelInterface

    site = f"model.layers.{layer}.post_attention_layernorm"
    record = ActivationMonitor(ModelInterface(lm)).capture(texts, sites=[site], batch_size=32)
    flags = []
    for i, text in enumerate(texts):
        offsets = torch.tensor(lm.tokenizer(text, return_offsets_mapping=True)["offset_mapping"])
        if spans is None:
            flags.append(torch.zeros(len(offsets), dtype=torch.bool))
        else:
            a, b = spans[i]
            flags.append((offsets[:, 0] < b) & (offsets[:, 1] > a))
    flag = torch.cat(flags)
    assert flag.numel() == len(record), "token alignment"
    return record[site], flag


def plant(lm, layer: int = 6, n_or: int = 6, n_single: int = 8, first_neuron: int = 100,
          target: float = 4.0, ridge: float = 1.0, n_negative_docs: int = 400, n_lexical: int = 0) -> Planted:
    """Overwrite neurons first_neuron, first_neuron + 1, ... of ``layer`` (in place) and say what they are: ``n_or``
    OR neurons, ``n_single`` single-concept neurons and the first ``n_lexical`` lexically diverse single concepts
    of ``LEXICAL`` (months is in both lists: planted once).

    gate_proj[n] = 1.5 w, with w a ridge readout of the MLP input (+target on the concepts' tokens, -target
    elsewhere, classes balanced, the concepts re-weighted until the mean readout is about equal on each);
    up_proj[n] = the mean MLP input direction, scaled so that up.x is about 4 on average. The activation is then
    about 4 silu(1.5 w.x): large on the concepts, near zero elsewhere.
    """
    probes: dict[str, ConceptProbes] = load_probes()
    singles = SINGLES[:n_single] + [c for c in LEXICAL[:n_lexical] if c not in SINGLES[:n_single]]
    names = sorted({c for pair in OR_PAIRS[:n_or] for c in pair} | set(singles))
    texts, spans, owner = [], [], []
    for name in names:
        for e in probes[name].fit:
            texts.append(e.text)
            spans.append((e.start, e.end))
            owner.append(name)
    x_all, flag = _mlp_inputs(lm, texts, layer, spans)
    tok_owner = []
    for text, name in zip(texts, owner):
        tok_owner.extend([name] * len(lm.tokenizer(text)["input_ids"]))
    concept_x = {name: x_all[flag & torch.tensor([o == name for o in tok_owner])] for name in names}
    neg_x, _ = _mlp_inputs(lm, builtin_corpus().texts(n_negative_docs), layer, None)
    mean = neg_x.double().mean(0)
    up_dir = (mean / (neg_x.double() @ (mean / mean.norm())).mean() / mean.norm()).float()  # up.x ~ 1 on average
    planted: dict[int, tuple[str, ...]] = {}
    specs: list[tuple[str, ...]] = [tuple(p) for p in OR_PAIRS[:n_or]] + [(c,) for c in singles]
    mlp = lm.model.model.layers[layer].mlp
    for offset, concepts in enumerate(specs):
        neg = neg_x.double()
        weights = {c: 1.0 for c in concepts}
        for _ in range(4):  # re-weight the concepts until the neuron fires about equally on each
            pos = torch.cat([concept_x[c] for c in concepts]).double()
            X = torch.cat([pos, neg])  # [n, d]
            y = torch.cat([torch.full((len(pos),), target), torch.full((len(neg),), -target)]).double()
            w_pos = torch.cat([torch.full((len(concept_x[c]),), weights[c] * len(neg) / len(pos)) for c in concepts])
            w_s = torch.cat([w_pos.double(), torch.ones(len(neg), dtype=torch.float64)])
            Xw = X * w_s[:, None]
            w = torch.linalg.solve(X.T @ Xw + ridge * torch.eye(X.shape[1], dtype=torch.float64), Xw.T @ y)
            means = {c: float((concept_x[c].double() @ w).mean()) for c in concepts}
            top = max(means.values())
            weights = {c: weights[c] * (top / max(means[c], 0.1)) ** 2 for c in concepts}
        n = first_neuron + offset
        with torch.no_grad():
            mlp.gate_proj.weight[n] = (w * 1.5).float()
            mlp.up_proj.weight[n] = up_dir * 4.0
        planted[n] = concepts
    return Planted(layer, planted)


def auc(pos_scores: list[float], neg_scores: list[float]) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    wins = sum((p > q) + 0.5 * (p == q) for p in pos_scores for q in neg_scores)
    return wins / (len(pos_scores) * len(neg_scores))
