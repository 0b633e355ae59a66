"""Understanding a chat follow-up without an LLM: a sentence becomes a typed :class:`FollowUp`.

Usage::

    f = parse_followup("show me its examples for the second mode")
    f.intent, f.neuron.kind, f.mode.index          # 'examples', 'focus', 2
    parse_followup("compare with layer 4").layers   # [4]
    parse_followup("sing me a song").intent         # 'unclear' (the chat asks back, and never guesses a run)

References stay unresolved here (``it``, ``the top neuron``, ``the second one``): the chat session resolves them
against what it knows. :data:`GRAMMAR` is the grammar in words, shown by ``--help`` and ``/help``.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field

from agents.plan import NEURON_OF_LAYER, NEURON_REF

__all__ = ["FollowUp", "NeuronSpec", "ModeSpec", "Intent", "parse_followup", "GRAMMAR", "EXAMPLES"]

Intent = Literal["investigate", "explain", "examples", "compare", "ablate", "promotes", "dashboard", "report",
                 "unclear"]

GRAMMAR = """\
Follow-ups (understood without an LLM):
  investigate layer 3 of smollm2-135m      an investigation (anything `python -m workflows.run` accepts);
                                           a layer the session already has is not computed again
  why is L3/N344 polysemantic?             its verdict, modes, examples, ablation effects and p-value
                                           (also: explain / describe / tell me about ...)
  show me its examples for the second mode its strongest contexts, of one mode or all
  compare with layer 4                     computes only what is missing, then a table and a figure
  ablate it on the log examples            zero-ablates the neuron on a mode's contexts, the loss change
  what does it promote?                    the tokens it promotes and suppresses (logit effects)
  open its dashboard                       the path of its dashboard page
  save the report                          writes the session's report (every answer, checked)
Neurons: L3/N344, neuron 344 (of the current layer), neuron 344 of layer 3, the top neuron [of layer 4],
  the most active neuron, the second one (of the last list shown), it / its / that neuron (the last one named).
Modes: mode 2, the second mode, that mode, the <word> mode / examples (a mode whose label or tokens hold the word).
A sentence that fits none of these gets a question back."""

EXAMPLES = ("why is the top neuron polysemantic?", "show me its examples for the second mode",
            "compare with layer 4", "what does it promote?")

_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
             "ninth": 9, "tenth": 10, "last": -1}
_ORDINAL = r"(?P<ord>first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|last|\d+(?:st|nd|rd|th))"


class NeuronSpec(BaseModel):
    """A neuron as the sentence names it: ``ref`` (L3/N344), ``index`` (neuron 344 of the current or a named layer),
    ``top`` (the top polysemantic neuron; ``active``: the most strongly activating), ``ordinal`` (the n-th of the
    last list shown) or ``focus`` (it, its, that neuron)."""

    kind: Literal["ref", "index", "top", "active", "ordinal", "focus"]
    layer: int | None = None
    index: int | None = None
    rank: int | None = None


class ModeSpec(BaseModel):
    """A mode as the sentence names it: its 1-based ``index``, ``focus`` (that mode) or a ``concept`` word."""

    kind: Literal["index", "focus", "concept"]
    index: int | None = None
    concept: str | None = None


class FollowUp(BaseModel):
    text: str
    intent: Intent
    neuron: NeuronSpec | None = None
    mode: ModeSpec | None = None
    layers: list[int] = Field(default_factory=list)
    model: str | None = None
    question: str = Field(default="", description="for an unclear sentence: what the chat asks back")


_VERBS: tuple[tuple[Intent, re.Pattern[str]], ...] = (
    ("report", re.compile(r"\b(save|write|export|store)\b.*\breport\b|^report$", re.I)),
    ("dashboard", re.compile(r"\bdashboard\b", re.I)),
    ("compare", re.compile(r"\bcompar\w*\b|\bversus\b|\bvs\.?(?=\s)|\bside by side\b", re.I)),
    ("ablate", re.compile(r"\bablat\w*|\bzero(?:-|\s)?(?:out|it)\b|\bknock\w*\s+(?:it\s+)?out\b", re.I)),
    ("promotes", re.compile(r"\bpromot\w*|\bsuppress\w*|\blogits?\b|\bpredict\w*|\boutput tokens?\b", re.I)),
    ("examples", re.compile(r"\bexamples?\b|\bcontexts?\b|\bwhere does\b.*\bfire\b|\bshow me\b", re.I)),
    ("investigate", re.compile(r"\b(investigate|look\s+(?:for|at|into)|find|profile|analy[sz]e|scan|study|run)\b",
                               re.I)),
    ("explain", re.compile(r"\bwhy\b|\bexplain\w*|\bdescribe\w*|\btell me (?:more )?about\b|\bwhat (?:is|about)\b"
                           r"|\bpolysemantic\b|\bmonosemantic\b|\bmodes?\b|\bverdict\b", re.I)),
)
_NEURON_INDEX = re.compile(r"\bneuron\s+#?(\d+)\b|(?<![/\w])N(\d+)\b", re.I)
_TOP = re.compile(r"\b(?:the\s+)?(?:top|strongest|best|most polysemantic)\b(?:\s+polysemantic)?\s+(?:neuron|one)\b"
                  r"(?:\s+(?:of|in)\s+(?:layer\s+|L)(?P<layer>\d+))?", re.I)
_ACTIVE = re.compile(r"\b(?:the\s+)?(?:most|strongest)\s+(?:strongly\s+)?activ\w*\s+neuron\b"
                     r"(?:\s+(?:of|in)\s+(?:layer\s+|L)(?P<layer>\d+))?", re.I)
_ORDINAL_NEURON = re.compile(rf"\bthe\s+{_ORDINAL}\s+(?:one|neuron)\b", re.I)
_FOCUS = re.compile(r"\b(?:it|its|it's|this|that|same)\b(?!\s+mode)", re.I)
_MODE_INDEX = re.compile(r"\bmode\s+#?(\d+)\b", re.I)
_MODE_ORDINAL = re.compile(rf"\b(?:the\s+)?{_ORDINAL}\s+mode\b", re.I)
_MODE_FOCUS = re.compile(r"\b(?:that|this|the same)\s+mode\b", re.I)
_MODE_CONCEPT = re.compile(r"\b(?:the|on|for|of|with)\s+(?:'|\")?(?P<word>[\w'-]+?)(?:'|\")?\s+"
                           r"(?:mode|examples|contexts|ones)\b", re.I)
_CONTAINING = re.compile(r"\b(?:containing|with the word|with|about)\s+['\"]?(?P<word>[\w-]+)['\"]?\s*\??$", re.I)
_LAYERS = re.compile(r"\blayers?\s+(\d+(?:\s*(?:,|and|&|-|–|to)\s*\d+)*)\b|(?<![\w/])L(\d+)\b(?!\s*/)", re.I)
_MODEL = re.compile(r"\b(?:of|in|for|on|model)\s+(smollm2(?:-135m)?|gpt2(?:-small)?|[\w.-]+/[\w.-]+)\b", re.I)
_NOT_A_CONCEPT = frozenset({"its", "it's", "their", "the", "this", "that", "these", "those", "same", "top", "all",
                            "other", "strongest", "first", "second", "third", "fourth", "fifth", "last", "next",
                            "previous", "mode", "neuron", "his", "her", "our", "my", "your", "some", "any", "more",
                            "different", "random", "best", "a", "an"})


def _ordinal(word: str) -> int:
    word = word.lower()
    return _ORDINALS[word] if word in _ORDINALS else int(re.match(r"\d+", word).group(0))  # type: ignore[union-attr]


def _layers(text: str) -> list[int]:
    out: list[int] = []
    for m in _LAYERS.finditer(text):
        if m.group(2) is not None:
            out.append(int(m.group(2)))
            continue
        written = m.group(1)
        span = re.fullmatch(r"(\d+)\s*(?:-|–|to)\s*(\d+)", written.strip())
        numbers = [int(x) for x in re.findall(r"\d+", written)]
        out += list(range(numbers[0], numbers[1] + 1)) if span and numbers[1] >= numbers[0] else numbers
    return list(dict.fromkeys(out))


def _neuron(text: str) -> NeuronSpec | None:
    if m := NEURON_REF.search(text):
        return NeuronSpec(kind="ref", layer=int(m.group(1)), index=int(m.group(2)))
    if m := NEURON_OF_LAYER.search(text):
        return NeuronSpec(kind="ref", layer=int(m.group(2)), index=int(m.group(1)))
    if m := _ACTIVE.search(text):
        return NeuronSpec(kind="active", layer=int(m.group("layer")) if m.group("layer") else None)
    if m := _TOP.search(text):
        return NeuronSpec(kind="top", layer=int(m.group("layer")) if m.group("layer") else None)
    if m := _ORDINAL_NEURON.search(text):
        return NeuronSpec(kind="ordinal", rank=_ordinal(m.group("ord")))
    if m := _NEURON_INDEX.search(text):
        return NeuronSpec(kind="index", index=int(m.group(1) or m.group(2)))
    if _FOCUS.search(text):
        return NeuronSpec(kind="focus")
    return None


def _mode(text: str) -> ModeSpec | None:
    if m := _MODE_INDEX.search(text):
        return ModeSpec(kind="index", index=int(m.group(1)))
    if m := _MODE_ORDINAL.search(text):
        return ModeSpec(kind="index", index=_ordinal(m.group("ord")))
    if _MODE_FOCUS.search(text):
        return ModeSpec(kind="focus")
    for m in _MODE_CONCEPT.finditer(text):
        if m.group("word").lower() not in _NOT_A_CONCEPT:
            return ModeSpec(kind="concept", concept=m.group("word").lower())
    if m := _CONTAINING.search(text):
        if m.group("word").lower() not in _NOT_A_CONCEPT:
            return ModeSpec(kind="concept", concept=m.group("word").lower())
    return None


def _unclear(text: str, why: str) -> FollowUp:
    return FollowUp(text=text, intent="unclear",
                    question=f"{why} Try, for example: " + "; ".join(f"'{e}'" for e in EXAMPLES)
                    + ". /help lists what I understand.")


def parse_followup(text: str) -> FollowUp:
    """The intent and the references of one chat sentence (see :data:`GRAMMAR`)."""
    clean = " ".join(text.strip().split())
    if not clean:
        return _unclear(clean, "I got an empty line.")
    intent = next((name for name, pattern in _VERBS if pattern.search(clean)), None)
    neuron, mode, layers = _neuron(clean), _mode(clean), _layers(NEURON_REF.sub(" ", clean))
    model_match = _MODEL.search(clean)
    model = model_match.group(1) if model_match and not NEURON_REF.fullmatch(model_match.group(1)) else None
    if intent is None:
        if neuron is not None and neuron.kind in ("ref", "top", "active", "ordinal"):
            intent = "explain"  # "L3/N344?" or "the top neuron?"
        else:
            return _unclear(clean, f"I did not understand {clean!r}.")
    if intent == "investigate" and not layers and neuron is None:
        return _unclear(clean, "Which layer? Name one (e.g. 'investigate layer 3 of smollm2-135m').")
    if intent == "investigate" and neuron is not None and neuron.kind != "ref":
        intent = "explain"  # "look at it", "analyse the top neuron": about a neuron the session knows
    if intent == "compare" and not layers and not model:
        return _unclear(clean, "Compare with what? Name a layer (e.g. 'compare with layer 4').")
    return FollowUp(text=clean, intent=intent, neuron=neuron, mode=mode, layers=layers, model=model)
