"""Checking prose against findings: every number a report states must be a quantity of what the sentence is about.

Usage::

    check = check_claims(text, store.all())
    check.ok, check.issues            # issues: the sentences that state something the findings do not hold
    clean, removed = remove_sentences(text, check.issues)

Rules, per sentence:

- a neuron id (``L6/N12``) must be the subject of some finding; a bare ``neuron 12`` / ``N12`` must be the index of one;
- a layer (``layer 6``, ``L6``) must be one the findings are about; a ``mode 2`` must be a mode a finding holds;
- a cited finding id (``[F003]``) must exist;
- a number is bound to what it is of: the neuron ids written since the previous number (else the previous number's
  neurons, else the sentence's), else the cited findings, else the run. It must equal, at the precision it is written
  with, a quantity of those neurons (any finding's) or cited findings, or a run-level quantity (one of no neuron:
  n_tokens, n_docs, n_analysed, ...; of a layer the sentence names, when it names layers). A number in a sentence that
  names no neuron and cites no finding can only be a run-level quantity.
- where the sentence says which quantity a number is (``score 0.81``, ``p = 0.005``, ``3 modes``, ``20,000 tokens``,
  ``max 4.2``, ``45%`` = a share), it must equal *that* quantity: "a score of 3" fails for a neuron with 3 modes.
  ``45%`` is compared with 0.45; ``20k`` with 20,000.
- text quoted verbatim from a finding's labels (mode labels, tokens) is not searched for numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from neuron_core.sites import NeuronRef
from tools.findings import Finding, Quantity, ref_parts

__all__ = ["ClaimIssue", "ClaimCheck", "check_claims", "remove_sentences", "split_sentences", "QUANTITY_WORDS"]

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\[(*\"'`“‘])|\n+")
_REF = re.compile(r"\bL(-?\d+)\s*/\s*N(\d+)\b", re.I)
_CITE = re.compile(r"\bF\d{3,}\b")
_BARE_NEURON = re.compile(r"\bneurons?\s+#?(\d+)\b|\bN(\d+)\b", re.I)
_LAYER = re.compile(r"\blayers\s+(?P<many>-?\d+(?:\s*(?:,|and|to|-|–)\s*-?\d+)*)\b|\blayer\s+(?P<one>-?\d+)\b"
                    r"|\bL(?P<short>-?\d+)\b", re.I)
_MODE_INDEX = re.compile(r"\bmodes?\s+#?(\d+(?:\s*(?:,|and|&)\s*\d+)*)\b", re.I)
_QUOTED = re.compile(r"'([^'\n]{1,80})'|\"([^\"\n]{1,80})\"|`([^`\n]{1,80})`|‘([^’\n]{1,80})’|“([^”\n]{1,80})”")
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+−])?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
    r"(?P<suffix>\s?%|\s?percent\b|[kK]\b|\s?[M]\b)?(?![\w.]*[A-Za-z_])")
_LIST_MARKER = re.compile(r"^\s*(?:[-*+]|\d+[.)]|#+)\s+")
_WORD = re.compile(r"[A-Za-z][A-Za-z_-]*")
_CLAUSE_BREAK = re.compile(r"[,;()\[\]—]")

_SHARES = frozenset({"share", "top_share"})
_PERCENT = frozenset({"share", "top_share", "frac_active", "mean_frac_active"})
_NEURON_COUNTS = frozenset({"n_analysed", "n_neurons", "n_dead", "n_dense", "n_outlier", "n_polysemantic",
                            "n_borderline", "max_neurons", "top_n", "d_mlp", "n_screened"})
QUANTITY_WORDS: dict[str, frozenset[str]] = {
    **dict.fromkeys(("score", "scores", "scoring"), frozenset({"score"})),
    **dict.fromkeys(("p", "p-value", "p_value", "pvalue"), frozenset({"p_value"})),
    **dict.fromkeys(("z", "z-score", "z_score"), frozenset({"z_score"})),
    "separation": frozenset({"separation"}),
    **dict.fromkeys(("share", "shares"), _SHARES),
    **dict.fromkeys(("effect", "effects", "loss"), frozenset({"effect"})),
    **dict.fromkeys(("max", "maximum", "peak", "peaks", "activation"), frozenset({"max"})),
    **dict.fromkeys(("mode", "modes"), frozenset({"n_modes"})),
    **dict.fromkeys(("token", "tokens"), frozenset({"n_tokens", "max_tokens"})),
    **dict.fromkeys(("document", "documents", "docs"), frozenset({"n_docs"})),
    **dict.fromkeys(("neuron", "neurons"), _NEURON_COUNTS),
    "polysemantic": frozenset({"n_polysemantic"}),
    "borderline": frozenset({"n_borderline"}),
    "dead": frozenset({"n_dead"}),
    "dense": frozenset({"n_dense"}),
    **dict.fromkeys(("outlier", "outliers"), frozenset({"n_outlier"})),
    "layers": frozenset({"n_layers"}),
    **dict.fromkeys(("example", "examples", "contexts"), frozenset({"n_examples"})),
    "similarity": frozenset({"probe_similarity"}),
    **dict.fromkeys(("logit", "logits"), frozenset({"promoted", "suppressed"})),
}
"""Words that say which quantity a number next to them is ("score 0.81", "3 modes"), and the quantity names each
allows. A percentage is always a share-like quantity (share, top_share, frac_active, mean_frac_active)."""
_FILLERS_BEFORE = frozenset({"of", "is", "was", "at", "about", "around", "roughly", "approximately", "a", "an", "the",
                             "its", "their", "with", "by", "equal", "to", "only", "just", "high", "low"})
_FILLERS_AFTER = frozenset({"most", "strongly", "active", "are", "is", "were", "was", "of", "the", "in", "distinct",
                            "more", "other", "top", "analysed", "analyzed", "unrelated", "separate", "different"})


class ClaimIssue(BaseModel):
    sentence: str
    problems: list[str] = Field(min_length=1)


class ClaimCheck(BaseModel):
    n_sentences: int
    n_checked: int = Field(description="sentences stating a number, a neuron id, a layer or a finding id")
    issues: list[ClaimIssue]

    @property
    def ok(self) -> bool:
        return not self.issues

    def feedback(self) -> str:
        if not self.issues:
            return f"All {self.n_checked} sentences with numbers or neuron ids match findings.json."
        lines = [f"{len(self.issues)} of {self.n_checked} checked sentences state what findings.json does not hold:"]
        for issue in self.issues:
            lines.append(f"- \"{issue.sentence}\": " + "; ".join(issue.problems))
        return "\n".join(lines)


def split_sentences(text: str) -> list[str]:
    out: list[str] = []
    for part in _SENTENCE_SPLIT.split(text):
        part = part.strip()
        if part:
            out.append(part)
    return out


def _written(match: re.Match[str]) -> tuple[float, float, str]:
    """(value, tolerance, kind) of a written number; kind is '', '%', 'percent', 'k' or 'M'."""
    raw = match.group("num").replace(",", "")
    sign = -1.0 if match.group("sign") in ("-", "−") else 1.0
    kind = (match.group("suffix") or "").strip()
    mantissa, _, exponent = raw.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    scale = 10.0 ** int(exponent) if exponent else 1.0
    tolerance = 0.5 * 10.0 ** (-decimals) * scale
    value = sign * float(raw)
    if kind in ("k", "K"):
        value, tolerance = value * 1e3, tolerance * 1e3
    elif kind == "M":
        value, tolerance = value * 1e6, tolerance * 1e6
    return value, tolerance, kind


def _matches(value: float, tolerance: float, kind: str, known: float) -> bool:
    candidates = (known * 100.0,) if kind == "%" else (known, known * 100.0) if kind == "percent" else (known,)
    return any(math.isfinite(c) and abs(c - value) <= tolerance + 1e-9 * max(1.0, abs(c)) for c in candidates)


@dataclass(frozen=True)
class _Index:
    """What the findings hold, arranged for the checks."""

    by_id: dict[str, Finding]
    refs: frozenset[str]
    indices: frozenset[int]
    layers: frozenset[int]
    labels: frozenset[str]
    by_neuron: dict[str, list[Quantity]]
    run_level: list[Quantity]
    modes: dict[str | None, frozenset[int]]

    @classmethod
    def of(cls, findings: Sequence[Finding]) -> _Index:
        by_neuron: dict[str, list[Quantity]] = {}
        modes: dict[str | None, set[int]] = {None: set()}
        for f in findings:
            for q in f.quantities:
                if q.neuron is not None:
                    by_neuron.setdefault(q.neuron, []).append(q)
            for ref in f.neurons:
                modes.setdefault(ref, set()).update(f.mode_indices(ref))
            modes[None].update(f.mode_indices())
        refs = frozenset(r for f in findings for r in f.neurons)
        return cls(by_id={f.id: f for f in findings}, refs=refs,
                   indices=frozenset(ref_parts(r)[1] for r in refs),
                   layers=frozenset(x for f in findings for x in f.layers()),
                   labels=frozenset(x.text for f in findings for x in f.labels), by_neuron=by_neuron,
                   run_level=[q for f in findings for q in f.quantities if q.neuron is None],
                   modes={k: frozenset(v) for k, v in modes.items()})


@dataclass
class _Sentence:
    """One sentence being checked: its text with everything but the numbers blanked out (positions kept)."""

    work: str
    refs: list[tuple[int, str]] = field(default_factory=list)  # (position, neuron id) in order
    cited: list[Finding] = field(default_factory=list)
    layers: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    stated: bool = False

    def blank(self, pattern: re.Pattern[str], keep: bool = False) -> list[re.Match[str]]:
        """The matches of ``pattern``, then blanked out of ``work`` (unless ``keep``)."""
        found = list(pattern.finditer(self.work))
        if not keep:
            for m in found:
                self.work = self.work[:m.start()] + " " * (m.end() - m.start()) + self.work[m.end():]
        return found


def _scan_ids(s: _Sentence, index: _Index) -> None:
    """Finding ids, neuron ids and bare neuron indices: checked, remembered and blanked."""
    for m in s.blank(_CITE):
        s.stated = True
        if m.group(0) in index.by_id:
            s.cited.append(index.by_id[m.group(0)])
        else:
            s.problems.append(f"cites {m.group(0)}, which is not a finding")
    for m in s.blank(_REF):
        s.stated = True
        ref = str(NeuronRef(int(m.group(1)), int(m.group(2))))
        s.refs.append((m.start(), ref))
        if ref not in index.refs:
            s.problems.append(f"{ref} is not in any finding")
    for m in s.blank(_BARE_NEURON):
        s.stated = True
        number = int(m.group(1) or m.group(2))
        if number not in index.indices:
            s.problems.append(f"neuron {number} is not in any finding")


def _scan_layers_and_modes(s: _Sentence, index: _Index) -> None:
    for m in s.blank(_LAYER):
        s.stated = True
        written = m.group("many") or m.group("one") or m.group("short")
        for layer in (int(x) for x in re.findall(r"-?\d+", written)):
            s.layers.add(layer)
            if layer not in index.layers:
                s.problems.append(f"layer {layer} is not one the findings are about")
    refs = [r for _, r in s.refs]
    known = set().union(*(index.modes.get(r, frozenset()) for r in refs)) if refs else index.modes[None]
    for m in s.blank(_MODE_INDEX):
        s.stated = True
        for mode in (int(x) for x in re.findall(r"\d+", m.group(1))):
            if mode not in known:
                s.problems.append(f"mode {mode} is not a mode the findings hold"
                                  + (f" of {', '.join(refs)}" if refs else ""))


def _said(work: str, start: int, end: int, floor: int, kind: str) -> tuple[str, frozenset[str]] | None:
    """(word, quantity names) when the words next to the number at [start, end) say which quantity it is."""
    if kind in ("%", "percent"):
        return "%", _PERCENT
    before = work[floor:start]
    breaks = list(_CLAUSE_BREAK.finditer(before))
    before = before[breaks[-1].end():] if breaks else before
    after = work[end:]
    cut = re.search(r"[,;:.()\[\]—]", after)
    after = after[:cut.start()] if cut else after
    candidates: list[tuple[int, int, str]] = []  # (fillers skipped, 0 = after / 1 = before, word)
    for order, words, fillers in ((1, reversed(_WORD.findall(before)), _FILLERS_BEFORE),
                                  (0, iter(_WORD.findall(after)), _FILLERS_AFTER)):
        for skipped, word in enumerate(w.lower() for w in words):
            if word in QUANTITY_WORDS:
                candidates.append((skipped, order, word))
            if word not in fillers or skipped >= 3:
                break
    if not candidates:
        return None
    word = min(candidates)[2]
    return word, QUANTITY_WORDS[word]


def _pool(s: _Sentence, subject: list[str], index: _Index) -> tuple[list[Quantity], str]:
    """The quantities a number of the sentence may be, and what they are of (in words)."""
    run = [q for q in index.run_level if q.layer is None or not s.layers or q.layer in s.layers]
    if subject:
        return [q for r in subject for q in index.by_neuron.get(r, [])] + run, ", ".join(subject)
    if s.cited:
        return [q for f in s.cited for q in f.quantities] + run, ", ".join(f.id for f in s.cited)
    return run, ""


def _check_number(m: re.Match[str], s: _Sentence, subject: list[str], floor: int, index: _Index) -> None:
    value, tolerance, kind = _written(m)
    said = _said(s.work, m.start(), m.end(), floor, kind)
    pool, of = _pool(s, subject, index)
    equal = [q for q in pool if _matches(value, tolerance, kind, q.value)]
    if said is not None and any(q.name in said[1] for q in equal):
        return
    if said is None and equal:
        return
    written = m.group(0).strip()
    if said is not None and equal:
        q = equal[0]
        s.problems.append(f"{written} is the {q.name} of {q.where}, not a {said[0]} quantity")
    elif not of:
        s.problems.append(f"{written} is not a run-level quantity, and the sentence names no neuron (L6/N12) or "
                          "finding ([F003]) it could be of")
    else:
        what = f"{said[0]} " if said is not None else ""
        s.problems.append(f"{written} does not match any {what}quantity of {of} (or of the run)")


def _scan_numbers(s: _Sentence, index: _Index) -> None:
    floor = 0
    subject: list[str] = []
    for m in _NUMBER.finditer(s.work):
        s.stated = True
        since = [r for pos, r in s.refs if floor <= pos < m.start()]
        if since:
            subject = since
        elif not subject:
            subject = [r for pos, r in s.refs if pos > m.start()]
        _check_number(m, s, list(dict.fromkeys(subject)), floor, index)
        floor = m.end()


def check_claims(text: str, findings: Sequence[Finding], *, ignore: Iterable[str] = ()) -> ClaimCheck:
    """Check every sentence of ``text``; ``ignore`` lists names whose digits are not numbers (model, corpus)."""
    index = _Index.of(findings)
    ignored = [re.compile(re.escape(n), re.I) for n in sorted({n for n in ignore if n}, key=len, reverse=True)]
    issues: list[ClaimIssue] = []
    n_checked = 0
    sentences = split_sentences(text)
    for sentence in sentences:
        s = _Sentence(work=sentence)
        s.blank(_LIST_MARKER)
        for pattern in ignored:
            s.blank(pattern)
        for m in s.blank(_QUOTED, keep=True):  # a finding's own label (a mode's name, a token) holds no claim
            if next(g for g in m.groups() if g is not None) in index.labels:
                s.work = s.work[:m.start()] + " " * (m.end() - m.start()) + s.work[m.end():]
        _scan_ids(s, index)
        _scan_layers_and_modes(s, index)
        _scan_numbers(s, index)
        n_checked += int(s.stated)
        if s.problems:
            issues.append(ClaimIssue(sentence=sentence, problems=s.problems))
    return ClaimCheck(n_sentences=len(sentences), n_checked=n_checked, issues=issues)


def remove_sentences(text: str, issues: Sequence[ClaimIssue]) -> tuple[str, list[str]]:
    """``text`` without the sentences of ``issues``; returns (clean text, removed sentences)."""
    bad = {i.sentence for i in issues}
    kept_paragraphs: list[str] = []
    removed: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        kept: list[str] = []
        for sentence in split_sentences(paragraph):
            if sentence in bad:
                removed.append(sentence)
            else:
                kept.append(sentence)
        if kept:
            kept_paragraphs.append(" ".join(kept))
    return "\n\n".join(kept_paragraphs), removed
