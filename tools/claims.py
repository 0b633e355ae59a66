"""Checking prose against findings: every number and neuron id a report states must come from findings.json.

Usage::

    check = check_claims(text, store.all())
    check.ok, check.issues            # issues: the sentences that state something the findings do not hold
    clean, removed = remove_sentences(text, check.issues)

Rules, per sentence:

- a neuron id (``L6/N12``) must be the subject of some finding; a bare ``neuron 12`` / ``N12`` must be the index of one;
- a layer (``layer 6``, ``L6``) must be one the findings are about;
- a cited finding id (``[F003]``) must exist;
- a number must equal, at the precision it is written with, a number of the findings the sentence is about (those of
  its neuron ids and cited findings, plus the run-level ones), or, in a sentence about no neuron, of any finding.
  ``45%`` is compared with 0.45; ``20k`` with 20,000.
- text quoted verbatim from a finding's claim (mode labels, tokens) is not searched for numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, Field

from tools.findings import Finding

__all__ = ["ClaimIssue", "ClaimCheck", "check_claims", "remove_sentences", "split_sentences"]

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\[(*\"'`])|\n+")
_REF = re.compile(r"\bL(-?\d+)\s*/\s*N(\d+)\b", re.I)
_CITE = re.compile(r"\bF\d{3,}\b")
_BARE_NEURON = re.compile(r"\bneurons?\s+#?(\d+)\b|\bN(\d+)\b", re.I)
_LAYER = re.compile(r"\blayers?\s+(-?\d+)(?:\s*(?:-|–|to|and|,)\s*(-?\d+))?\b|\bL(-?\d+)\b", re.I)
_QUOTED = re.compile(r"'([^'\n]{1,80})'|\"([^\"\n]{1,80})\"|`([^`\n]{1,80})`|‘([^’\n]{1,80})’|“([^”\n]{1,80})”")
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+−])?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
    r"(?P<suffix>\s?%|\s?percent\b|[kK]\b|\s?[M]\b)?(?![\w.]*[A-Za-z_])")
_LIST_MARKER = re.compile(r"^\s*(?:[-*+]|\d+[.)]|#+)\s+")


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
    """(value, tolerance, kind) of a written number; kind is '', '%', 'k' or 'M'."""
    raw = match.group("num").replace(",", "")
    sign = -1.0 if match.group("sign") in ("-", "−") else 1.0
    suffix = (match.group("suffix") or "").strip()
    kind = "%" if suffix in ("%", "percent") else suffix
    mantissa, _, exponent = raw.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    scale = 10.0 ** int(exponent) if exponent else 1.0
    tolerance = 0.5 * 10.0 ** (-decimals) * scale
    value = sign * float(raw)
    if kind == "k":
        value, tolerance = value * 1e3, tolerance * 1e3
    elif kind == "M":
        value, tolerance = value * 1e6, tolerance * 1e6
    return value, tolerance, kind


def _matches(value: float, tolerance: float, kind: str, known: Iterable[float]) -> bool:
    for v in known:
        candidates = (v * 100.0,) if kind == "%" else (v, v * 100.0) if kind == "percent" else (v,)
        for c in candidates:
            if math.isfinite(c) and abs(c - value) <= tolerance + 1e-9 * max(1.0, abs(c)):
                return True
    return False


def _layers_of(findings: Sequence[Finding]) -> set[int]:
    layers: set[int] = set()
    for f in findings:
        for ref in f.neurons:
            m = _REF.match(ref)
            if m:
                layers.add(int(m.group(1)))
        for key, value in f.numbers.items():
            if key == "layer" or key.startswith("layer "):
                layers.add(int(value))
        for m in _REF.finditer(f.claim):
            layers.add(int(m.group(1)))
        for m in re.finditer(r"\b(?:[Ll]ayer |L)(\d+)\b", f.claim):
            layers.add(int(m.group(1)))
    return layers


def check_claims(text: str, findings: Sequence[Finding], *, ignore: Iterable[str] = ()) -> ClaimCheck:
    """Check every sentence of ``text``; ``ignore`` lists names whose digits are not numbers (model, corpus)."""
    by_id = {f.id: f for f in findings}
    refs = {r.upper() for f in findings for r in f.neurons}
    indices = {int(r.split("/N")[1]) for r in refs}
    layers = _layers_of(findings)
    global_findings = [f for f in findings if not f.neurons]
    all_numbers = [v for f in findings for v in f.numbers.values()]
    claims_text = " ".join(f.claim for f in findings)
    ignored = sorted({s for s in ignore if s}, key=len, reverse=True)
    issues: list[ClaimIssue] = []
    n_checked = 0
    sentences = split_sentences(text)
    for sentence in sentences:
        work = _LIST_MARKER.sub("", sentence)
        for name in ignored:
            work = re.sub(re.escape(name), " ", work, flags=re.I)
        problems: list[str] = []
        stated = False
        # quoted text copied from a finding (labels, tokens) is not a number source
        def unquote(m: re.Match[str]) -> str:
            inner = next(g for g in m.groups() if g is not None)
            return " " if inner in claims_text else m.group(0)

        work = _QUOTED.sub(unquote, work)
        scope: list[Finding] = list(global_findings)
        for fid in _CITE.findall(work):
            stated = True
            if fid in by_id:
                scope.append(by_id[fid])
            else:
                problems.append(f"cites {fid}, which is not a finding")
        work = _CITE.sub(" ", work)
        sentence_refs: list[str] = []
        for m in _REF.finditer(work):
            stated = True
            ref = f"L{int(m.group(1))}/N{int(m.group(2))}"
            sentence_refs.append(ref)
            if ref not in refs:
                problems.append(f"{ref} is not in any finding")
        work = _REF.sub(" ", work)
        for f in findings:
            if any(r in f.neurons for r in sentence_refs):
                scope.append(f)
        for m in _BARE_NEURON.finditer(work):
            stated = True
            index = int(m.group(1) or m.group(2))
            if index not in indices:
                problems.append(f"neuron {index} is not in any finding")
        work = _BARE_NEURON.sub(" ", work)
        for m in _LAYER.finditer(work):
            stated = True
            for group in (m.group(1), m.group(2), m.group(3)):
                if group is not None and int(group) not in layers:
                    problems.append(f"layer {int(group)} is not one the findings are about")
        work = _LAYER.sub(" ", work)
        pool = [v for f in scope for v in f.numbers.values()] if sentence_refs else all_numbers
        for m in _NUMBER.finditer(work):
            stated = True
            value, tolerance, kind = _written(m)
            if not _matches(value, tolerance, kind, pool):
                where = f"the findings about {', '.join(sentence_refs)}" if sentence_refs else "findings.json"
                problems.append(f"{m.group(0).strip()} does not match any number in {where}")
        n_checked += int(stated)
        if problems:
            issues.append(ClaimIssue(sentence=sentence, problems=problems))
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
