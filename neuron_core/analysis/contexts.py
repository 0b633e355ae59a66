"""A neuron's activating contexts, taken from a profile or a record, in one shape the embedders understand.

Usage::

    ctxs = contexts_from_profile(prof, "blocks.6.mlp.hook_post", 123, n_top=24, n_sample=24, band=0.2)
    ctxs = contexts_from_record(record, "blocks.6.mlp.hook_post", 123, n_top=24, n_sample=24, band=0.2)
    ctxs[0].text, ctxs[0].start, ctxs[0].end      # window text, char span of the activating token
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from neuron_core.capture import ActivationRecord
from neuron_core.profile import Example, NeuronProfile

__all__ = ["Context", "contexts_from_profile", "contexts_from_record", "context_from_example"]


@dataclass(frozen=True)
class Context:
    """One activating token in its window. ``text[start:end]`` is the token; ``ids[index]`` its id (subject model).

    ``sampled`` marks contexts drawn uniformly from the neuron's active tokens (unbiased for activation mass),
    as opposed to the top band (biased towards the highest values).
    """

    text: str
    start: int
    end: int
    value: float
    doc_id: int
    position: int
    token: str
    ids: tuple[int, ...] = ()
    index: int = -1
    sampled: bool = False

    @property
    def key(self) -> tuple[int, int]:
        return (self.doc_id, self.position)

    @property
    def word_span(self) -> tuple[int, int]:
        """The character span of the whole word the token belongs to: a sub-word piece ('ting' of 'knitting')
        grows to its word; a token that is not part of a word (punctuation, a space) keeps its own span."""
        text, start, end = self.text, self.start, self.end
        while start < end and text[start].isspace():
            start += 1
        if start == end or not any(ch.isalnum() for ch in text[start:end]):
            return self.start, self.end
        while start > 0 and text[start].isalnum() and text[start - 1].isalnum():
            start -= 1
        while end < len(text) and text[end - 1].isalnum() and text[end].isalnum():
            end += 1
        return start, end

    @property
    def word(self) -> str:
        """The whole word the token belongs to (see :attr:`word_span`)."""
        start, end = self.word_span
        return self.text[start:end]

    def marked(self) -> str:
        return f"{self.text[:self.start]}[[{self.text[self.start:self.end]}]]{self.text[self.end:]}"


def _window(tokens: list[str], index: int) -> tuple[str, int, int]:
    before = "".join(tokens[:index])
    return before + tokens[index] + "".join(tokens[index + 1:]), len(before), len(before) + len(tokens[index])


def context_from_example(ex: Example, ids: list[int] | None = None, sampled: bool = False,
                         before: int = 8, after: int = 2) -> Context:
    lo = max(0, ex.index - before)
    tokens = list(ex.context[lo:ex.index + after + 1])
    text, start, end = _window(tokens, ex.index - lo)
    id_window = tuple(ids[lo:ex.index + after + 1]) if ids is not None else ()
    return Context(text, start, end, ex.value, ex.doc_id, ex.position, ex.token, id_window, ex.index - lo, sampled)


def _example_ids(prof: NeuronProfile, site: str, neuron: int, kind: str) -> list[list[int]]:
    stats = prof[site].stats
    ex = {"top": stats.top, "sample": stats.sample}[kind]
    before = stats.config.context_before
    out = []
    keys = ex.keys[neuron].cpu()
    docs = ex.doc[neuron].cpu()
    for slot in range(ex.k):
        if not torch.isfinite(keys[slot]) or int(docs[slot]) < 0:
            continue
        ids = ex.ctx[neuron, slot].cpu().tolist()
        left = [i for i in ids[:before] if i >= 0]
        right = [i for i in ids[before + 1:] if i >= 0]
        out.append(left + [ids[before]] + right)
    return out


def contexts_from_profile(prof: NeuronProfile, site: str, neuron: int, *, n_top: int = 24, n_sample: int = 24,
                          band: float = 0.2, before: int = 8, after: int = 2) -> list[Context]:
    """Top-band and sampled strong contexts of a neuron (deduplicated by document and position)."""
    view = prof[site]
    top = view.top_examples(neuron)
    top_ids = _example_ids(prof, site, neuron, "top")
    peak = max((e.value for e in top), default=0.0)
    if peak <= 0:
        return []
    floor = band * peak
    chosen: dict[tuple[int, int], Context] = {}
    for ex, ids in list(zip(top, top_ids))[:n_top]:
        if ex.value >= floor:
            chosen[(ex.doc_id, ex.position)] = context_from_example(ex, ids, False, before, after)
    raw_sample = view.examples(neuron, "sample")  # sorted by value, highest first
    stats = view.stats
    sample_ids = _example_ids(prof, site, neuron, "sample")  # in slot order
    by_key: dict[tuple[int, int], list[int]] = {}
    valid_slots = [s for s in range(stats.sample.k) if int(stats.sample.doc[neuron, s]) >= 0
                   and torch.isfinite(stats.sample.keys[neuron, s])]
    for slot, ids in zip(valid_slots, sample_ids):
        by_key[(int(stats.sample.doc[neuron, slot]), int(stats.sample.pos[neuron, slot]))] = ids
    strong = [e for e in raw_sample if e.value >= floor][:n_sample]
    for ex in strong:
        key = (ex.doc_id, ex.position)
        ctx = context_from_example(ex, by_key.get(key), True, before, after)
        chosen[key] = ctx  # a sampled context keeps its unbiased-mass flag even if it is also in the top band
    return list(chosen.values())


def contexts_from_record(record: ActivationRecord, site: str, neuron: int, *, n_top: int = 24, n_sample: int = 24,
                         band: float = 0.2, before: int = 8, after: int = 2, seed: int = 0,
                         min_position: int = 0) -> list[Context]:
    """The same from a record: the top band plus a uniform sample of the other strong tokens (tokens before
    ``min_position`` of their document are left out)."""
    acts = record[site][:, neuron].double().numpy()
    finite = np.isfinite(acts) & (record.positions.numpy() >= min_position)
    if not finite.any():
        return []
    peak = float(np.max(np.where(finite, acts, -np.inf)))
    if peak <= 0:
        return []
    strong = np.nonzero(finite & (acts >= band * peak))[0]
    order = strong[np.argsort(-acts[strong], kind="stable")]
    top = list(order[:n_top])
    rest = order[n_top:]
    rng = np.random.default_rng(seed + neuron)
    sample = list(rng.choice(rest, size=min(n_sample, len(rest)), replace=False)) if len(rest) else []
    doc_ids = record.doc_ids.numpy()
    ids_all = record.token_ids.tolist()
    out = []
    for i, sampled in [(int(i), False) for i in top] + [(int(i), True) for i in sample]:
        out.append(_record_context(record, doc_ids, ids_all, i, float(acts[i]), sampled or len(rest) == 0,
                                   before, after))
    return out


def _record_context(record: ActivationRecord, doc_ids: np.ndarray, ids_all: list[int], i: int, value: float,
                    sampled: bool, before: int, after: int) -> Context:
    """Token ``i`` of a record in its window, never crossing into another document."""
    lo = i
    while lo > 0 and i - lo < before and doc_ids[lo - 1] == doc_ids[i]:
        lo -= 1
    hi = i
    while hi + 1 < len(doc_ids) and hi - i < after and doc_ids[hi + 1] == doc_ids[i]:
        hi += 1
    text, start, end = _window(record.tokens[lo:hi + 1], i - lo)
    return Context(text, start, end, value, int(doc_ids[i]), int(record.positions[i]), record.tokens[i],
                   tuple(ids_all[lo:hi + 1]), i - lo, sampled)


def random_contexts(source: NeuronProfile | ActivationRecord, site: str, n: int, *, seed: int = 0,
                    before: int = 8, after: int = 2) -> list[Context]:
    """Up to ``n`` contexts of random tokens of a site, not selected by any one neuron: the null's raw material.

    From a record: uniform over its tokens. From a profile: its site's token reservoir (a uniform sample of all its
    tokens); for a profile saved without one, the union of the neurons' samples of active tokens (they share one
    hash, so the union is small: a few hundred tokens)."""
    rng = np.random.default_rng(seed)
    out: dict[tuple[int, int], Context] = {}
    if isinstance(source, ActivationRecord):
        total = len(source)
        picks: Any = rng.choice(total, size=min(n, total), replace=False) if total else []
        doc_ids = source.doc_ids.numpy()
        ids_all = source.token_ids.tolist()
        for i in (int(x) for x in picks):
            out[(int(doc_ids[i]), i)] = _record_context(source, doc_ids, ids_all, i, 0.0, True, before, after)
        return list(out.values())
    view = source[site]
    reservoir = view.token_sample()
    if reservoir:
        picks = rng.permutation(len(reservoir))[:n]
        return [context_from_example(reservoir[int(i)], None, True, before, after) for i in picks]
    for neuron in rng.permutation(view.n_neurons):  # a profile saved before the reservoir: the neurons' samples
        for ex in view.examples(int(neuron), "sample"):
            key = (ex.doc_id, ex.position)
            if key not in out:
                out[key] = context_from_example(ex, None, True, before, after)
        if len(out) >= n:
            break
    keys = list(out)
    rng.shuffle(keys)
    return [out[k] for k in keys[:n]]
