"""What a prose-only model may add to a report: its sentences that pass the findings check and do not loop.

Usage::

    added = filter_prose(model_text, store.all(), earlier=split_sentences(narrative), ignore=["smollm2-135m"],
                         max_sentences=2)
    added.text            # the kept sentences, joined
    added.dropped         # [DroppedSentence(sentence=..., reason="fails the check", detail="3 is the n_modes of ...")]

A small model (the bundled 135M SmolLM2) drifts: it loops on a phrase, restates what the report already says, or
binds a number to the wrong quantity. The deterministic writer writes the report's facts; a model sentence is kept only
when it is a whole sentence, does not repeat itself (a phrase, or one neuron twice in a list) or an earlier sentence,
names a neuron or cites a finding (a sentence about neither adds words, not facts: "the neurons of layer 6 are highly
responsive to the input of the layer"), passes :func:`tools.check_claims`, and, when it calls a neuron the most
active, names first the neuron the layer's ``top_neurons`` finding ranks first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from tools.claims import check_claims, split_sentences
from tools.findings import Finding, normalise_ref, ref_parts

__all__ = ["DroppedSentence", "ProseFilter", "filter_prose", "loop_in", "reply_loop", "shared_phrase"]

DropReason = Literal["fragment", "repeats itself", "repeats an earlier sentence", "states no finding",
                     "fails the check", "over the limit"]

_FENCE_BITS = re.compile(r"</?data>?|<data|</d(?:a(?:t(?:a)?)?)?$")
_WORD = re.compile(r"[\w/]+")
_END = re.compile(r"[.!?][)\]”’\"']*$")
_ID = r"L\d+\s*/\s*N\d+"  # a neuron id as prose writes it
_GROUNDED = re.compile(rf"\b{_ID}\b|\bF\d{{3,}}\b")  # a neuron id or a cited finding
_NEURON = re.compile(rf"\b{_ID}\b")
_ID_LIST = re.compile(rf"{_ID}(?:\s*,?\s*(?:and\s+)?{_ID})+")  # ids one after another: a list, or a stutter
_MOST_ACTIVE = re.compile(r"\bmost (?:strongly )?activ|\b(?:highest|strongest|largest) activation", re.IGNORECASE)
MIN_WORDS = 4
PHRASE = 4  # words: a phrase this long said twice is a repetition


class DroppedSentence(BaseModel):
    sentence: str
    reason: DropReason
    detail: str = ""


class ProseFilter(BaseModel):
    kept: list[str] = Field(default_factory=list)
    dropped: list[DroppedSentence] = Field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(self.kept)


def _words(sentence: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(sentence)]


def _phrases(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def loop_in(sentence: str, n: int = PHRASE) -> str | None:
    """The phrase a sentence loops on: a word three times in a row, a word of four letters or more back after one
    word ('the layer 6 layer'), or an ``n``-word phrase said twice."""
    words = _words(sentence)
    for i in range(len(words) - 2):
        if words[i] == words[i + 1] == words[i + 2]:
            return words[i]
        if len(words[i]) >= 4 and words[i] == words[i + 2]:
            return " ".join(words[i:i + 3])
    seen: set[tuple[str, ...]] = set()
    for phrase in _phrases(words, n):
        if phrase in seen:
            return " ".join(phrase)
        seen.add(phrase)
    return None


def reply_loop(text: str, n: int = 6, times: int = 3) -> tuple[str, int] | None:
    """Where a whole reply starts looping: an ``n``-word phrase said ``times`` times (a model stuck in a cycle, as
    small models are at their length cap). Returns the phrase and the character offset of its second occurrence
    (the reply is cut there), or None."""
    spans = [(m.group(0).lower(), m.start()) for m in _WORD.finditer(text)]
    words = [w for w, _ in spans]
    seen: dict[tuple[str, ...], list[int]] = {}
    for i, phrase in enumerate(_phrases(words, n)):
        starts = seen.setdefault(phrase, [])
        if starts and i - starts[-1] < n:
            continue  # overlapping with its last occurrence ("a a a a ..." counts once per n words)
        starts.append(i)
        if len(starts) >= times:
            return " ".join(phrase), spans[starts[1]][1]
    return None


def shared_phrase(sentence: str, earlier: Iterable[str], n: int = PHRASE) -> str | None:
    """An ``n``-word phrase of ``sentence`` that an earlier sentence already said."""
    said = {p for e in earlier for p in _phrases(_words(e), n)}
    return next((" ".join(p) for p in _phrases(_words(sentence), n) if p in said), None)


def _neurons(sentence: str) -> list[str]:
    return [normalise_ref(ref) for ref in _NEURON.findall(sentence)]


def _listed_twice(sentence: str) -> str | None:
    """A neuron a list of neuron ids names twice ('L6/N486, L6/N1235 and L6/N1235'; 'L1/N5 L1/N5')."""
    for run in _ID_LIST.finditer(sentence):
        named = _neurons(run.group(0))
        twice = next((n for i, n in enumerate(named) if n in named[:i]), None)
        if twice:
            return twice
    return None


def _not_most_active(sentence: str, findings: Sequence[Finding]) -> str | None:
    """Why a sentence that calls a neuron the most active contradicts the findings: the first neuron it names is not
    the one its layer's ``top_neurons`` finding ranks first (None: no such claim, or it agrees)."""
    named = _neurons(sentence)
    if not named or not _MOST_ACTIVE.search(sentence):
        return None
    layer = ref_parts(named[0])[0]
    top = next((f for f in findings if f.kind == "top_neurons" and f.neurons and ref_parts(f.neurons[0])[0] == layer),
               None)
    if top is None or top.neurons[0] == named[0]:
        return None
    return f"{named[0]} is not the most active neuron of L{layer}: {top.neurons[0]} is [{top.id}]"


def _problem(sentence: str, earlier: Sequence[str], findings: Sequence[Finding],
             ignore: Sequence[str]) -> DroppedSentence | None:
    if len(_words(sentence)) < MIN_WORDS or not _END.search(sentence):
        return DroppedSentence(sentence=sentence, reason="fragment")
    twice = _listed_twice(sentence)
    if twice:
        return DroppedSentence(sentence=sentence, reason="repeats itself", detail=f"lists {twice} twice")
    looped = loop_in(sentence)
    if looped:
        return DroppedSentence(sentence=sentence, reason="repeats itself", detail=looped)
    shared = shared_phrase(sentence, earlier)
    if shared:
        return DroppedSentence(sentence=sentence, reason="repeats an earlier sentence", detail=shared)
    if not _GROUNDED.search(sentence):  # a sentence about no neuron and no finding adds words, not facts
        return DroppedSentence(sentence=sentence, reason="states no finding",
                               detail="names no neuron (L6/N12) and cites no finding ([F003])")
    check = check_claims(sentence, findings, ignore=ignore)
    if not check.ok:
        return DroppedSentence(sentence=sentence, reason="fails the check",
                               detail="; ".join(p for i in check.issues for p in i.problems))
    contradiction = _not_most_active(sentence, findings)
    if contradiction:
        return DroppedSentence(sentence=sentence, reason="fails the check", detail=contradiction)
    return None


def filter_prose(text: str, findings: Sequence[Finding], *, earlier: Sequence[str] = (), ignore: Iterable[str] = (),
                 max_sentences: int = 3) -> ProseFilter:
    """The sentences of a model's ``text`` that may go into a report (at most ``max_sentences``), and why the
    others may not. ``earlier``: the sentences already written (the model may not repeat their phrases)."""
    if max_sentences < 0:
        raise ValueError(f"max_sentences must be >= 0, got {max_sentences}")
    names = [n for n in ignore if n]
    out = ProseFilter()
    said = list(earlier)
    for sentence in split_sentences(_FENCE_BITS.sub("", text)):
        problem = _problem(sentence, said, findings, names)
        if problem is None and len(out.kept) >= max_sentences:
            problem = DroppedSentence(sentence=sentence, reason="over the limit")
        if problem is not None:
            out.dropped.append(problem)
            continue
        out.kept.append(sentence)
        said.append(sentence)
    return out
