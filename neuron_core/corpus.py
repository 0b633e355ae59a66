"""Corpora (what profiles are computed over) and concept probes (labelled spans used to name neuron modes).

Usage::

    corpus = load_corpus("builtin")                 # the bundled corpus: ~3,400 original lines, 28 topics
    corpus = load_corpus(["a text", "another"])     # a list of strings
    corpus = load_corpus("my.txt")                  # one document per non-empty line
    corpus = load_corpus("my.jsonl", text_field="text")
    corpus = load_corpus("folder/")                 # one document per .txt file
    corpus = load_corpus("hf:wikitext:wikitext-2-raw-v1:train")   # a Hugging Face dataset (online, `datasets`)
    for doc_id, text in corpus.iter_from(0): ...

    probes = load_probes()                          # 34 concepts, each with fit and held-out examples
    probes["animals"].fit[0].span_text              # 'fox'

Files are streamed, never read whole, so a corpus may be far larger than memory.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from neuron_core.errors import CorpusError, EmptyInputError

GarbagePolicy = Literal["skip", "keep"]

__all__ = ["Corpus", "load_corpus", "looks_binary", "builtin_corpus", "ProbeExample", "ConceptProbes", "load_probes",
           "BUILTIN_CORPUS_VERSION", "data_path"]

BUILTIN_CORPUS_VERSION = "1"


def data_path(*parts: str) -> Path:
    return Path(__file__).resolve().parent.joinpath("data", *parts)


@dataclass
class Corpus:
    """An ordered, re-iterable collection of documents. ``labels`` (optional) gives a topic per document."""

    name: str
    _docs: Sequence[str] | None = None
    _iter_factory: object = None  # callable () -> Iterator[str] for streamed sources
    labels: list[str] | None = None
    _length: int | None = None
    garbage: GarbagePolicy = "skip"
    """What to do with a document that looks like binary data (see :func:`looks_binary`): skip it or keep it. Files
    only; a list of strings is used as given."""
    n_garbage: int = 0
    """Documents that looked like binary data in the current (or last) pass so far: skipped or kept, as ``garbage``
    says."""

    def __iter__(self) -> Iterator[str]:
        if self._docs is not None:
            return iter(self._docs)
        return self._screened(self._iter_factory())  # type: ignore[operator]

    def _screened(self, docs: Iterator[str]) -> Iterator[str]:
        self.n_garbage = 0
        for text in docs:
            if looks_binary(text):
                self.n_garbage += 1
                if self.garbage == "skip":
                    continue
            yield text

    def iter_from(self, start: int = 0) -> Iterator[tuple[int, str]]:
        """(doc_id, text) pairs from document ``start`` on (doc ids count from 0 in corpus order)."""
        for doc_id, text in enumerate(self):
            if doc_id >= start:
                yield doc_id, text

    def __len__(self) -> int:
        if self._docs is not None:
            return len(self._docs)
        if self._length is None:
            self._length = sum(1 for _ in self)
        return self._length

    def __getitem__(self, doc_id: int) -> str:
        if self._docs is not None:
            return self._docs[doc_id]
        for i, text in enumerate(self):
            if i == doc_id:
                return text
        raise IndexError(doc_id)

    def texts(self, limit: int | None = None) -> list[str]:
        out: list[str] = []
        for text in self:
            if limit is not None and len(out) >= limit:
                break
            out.append(text)
        return out

    def fingerprint(self, n: int = 64) -> str:
        """A hash of the name and the first ``n`` documents, to check that a resume continues the same corpus."""
        digest = hashlib.sha256(self.name.encode())
        for i, text in enumerate(self):
            if i >= n:
                break
            digest.update((text if isinstance(text, str) else repr(list(text))).encode("utf-8", "replace"))
        return digest.hexdigest()[:16]


def looks_binary(text: str, share: float = 0.3) -> bool:
    """Whether a document looks like binary data rather than text: at least ``share`` of its characters are control
    characters (other than tab and line breaks) or U+FFFD (bytes that were not valid UTF-8). A NUL or an emoji in
    real text stays far below that."""
    if not text:
        return False
    bad = sum(1 for ch in text if ch == "\ufffd" or (ch < " " and ch not in "\t\n\r") or ch == "\x7f")
    return bad >= share * len(text)


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.strip()
            if line:
                yield line


def _jsonl(path: Path, field_name: str) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(field_name), str):
                raise CorpusError(f"{path}:{lineno}: no string field {field_name!r}")
            if record[field_name].strip():
                yield record[field_name]


def _folder(path: Path) -> Iterator[str]:
    for file in sorted(path.rglob("*.txt")):
        text = file.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            yield text


def builtin_corpus(topics: Iterable[str] | None = None) -> Corpus:
    """The bundled corpus, topics interleaved round-robin so that any prefix covers every topic."""
    folder = data_path("corpus")
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise CorpusError(f"the built-in corpus is missing from {folder}")
    wanted = set(topics) if topics is not None else None
    per_topic: list[tuple[str, list[str]]] = []
    for file in files:
        if wanted is not None and file.stem not in wanted:
            continue
        per_topic.append((file.stem, list(_lines(file))))
    if wanted is not None and len(per_topic) != len(wanted):
        known = sorted(f.stem for f in files)
        raise CorpusError(f"unknown topics {sorted(wanted - {t for t, _ in per_topic})}; known: {known}")
    docs: list[str] = []
    labels: list[str] = []
    longest = max(len(lines) for _, lines in per_topic)
    for i in range(longest):
        for topic, lines in per_topic:
            if i < len(lines):
                docs.append(lines[i])
                labels.append(topic)
    return Corpus(name=f"builtin-v{BUILTIN_CORPUS_VERSION}", _docs=docs, labels=labels)


def load_corpus(spec: str | Path | Sequence[str] | Corpus, *, text_field: str = "text",
                garbage: GarbagePolicy = "skip") -> Corpus:
    """Turn a corpus specification into a :class:`Corpus`; errors (missing file, empty) come before any work.
    ``garbage``: skip (default) or keep file documents that look like binary data; either way they are counted
    (``Corpus.n_garbage``) and :func:`~neuron_core.profile` warns with the count."""
    if garbage not in ("skip", "keep"):
        raise CorpusError(f"garbage must be 'skip' or 'keep', not {garbage!r}")
    if isinstance(spec, Corpus):
        return spec
    if isinstance(spec, (list, tuple)):
        docs = list(spec)
        if not docs:
            raise EmptyInputError("the corpus is empty")
        bad = [i for i, d in enumerate(docs) if not isinstance(d, str) and not _is_ids(d)]
        if bad:
            raise CorpusError(f"corpus entries must be strings (or lists of token ids); entry {bad[0]} is "
                              f"{type(docs[bad[0]]).__name__}")
        return Corpus(name=f"list[{len(docs)}]", _docs=docs)
    if not isinstance(spec, (str, Path)):
        raise CorpusError(f"cannot read a corpus from a {type(spec).__name__}")
    text = str(spec)
    if text in ("builtin", "built-in", "default"):
        return builtin_corpus()
    if text.startswith("hf:"):
        return _hf_corpus(text[3:], text_field)
    path = Path(text).expanduser()
    if not path.exists():
        raise CorpusError(f"corpus {text!r} not found (a path, 'builtin', a list of strings, or 'hf:NAME')")
    if path.is_dir():
        if not any(path.rglob("*.txt")):
            raise EmptyInputError(f"corpus folder {path} has no .txt files")
        corpus = Corpus(name=str(path), _iter_factory=lambda: _folder(path), garbage=garbage)
    elif path.suffix in (".jsonl", ".ndjson"):
        corpus = Corpus(name=str(path), _iter_factory=lambda: _jsonl(path, text_field), garbage=garbage)
    else:
        corpus = Corpus(name=str(path), _iter_factory=lambda: _lines(path), garbage=garbage)
    if next(iter(corpus), None) is None:
        n = corpus.n_garbage
        skipped = f" ({n} document{'s' if n != 1 else ''} looked like binary data and {'were' if n != 1 else 'was'} " \
            "skipped)" if n else ""
        raise EmptyInputError(f"corpus {path} has no text{skipped}")
    return corpus


def _is_ids(value: object) -> bool:
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # a 1-D tensor/array of token ids
        return getattr(value, "ndim", 1) == 1 and "int" in str(value.dtype)
    return isinstance(value, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in value)


def _hf_corpus(spec: str, text_field: str) -> Corpus:
    parts = spec.split(":")
    name, config, split = parts[0], (parts[1] if len(parts) > 1 and parts[1] else None), (
        parts[2] if len(parts) > 2 else "train")
    try:
        import datasets  # optional dependency
    except ImportError:
        raise CorpusError(
            "Hugging Face datasets need the `datasets` package: pip install 'neuron-workbench[datasets]'") from None
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; all mean "cannot load"
        raise CorpusError(f"cannot load dataset {name!r}: {exc}") from None

    def gen() -> Iterator[str]:
        for row in ds:
            value = row.get(text_field)
            if isinstance(value, str) and value.strip():
                yield value

    return Corpus(name=f"hf:{spec}", _iter_factory=gen)


# ---------------------------------------------------------------------------------------------------- probes
_SPAN_RE = re.compile(r"\[\[(.+?)\]\]")


@dataclass(frozen=True)
class ProbeExample:
    """A sentence with the concept-carrying span at ``text[start:end]``."""

    concept: str
    text: str
    start: int
    end: int

    @property
    def span_text(self) -> str:
        return self.text[self.start:self.end]


@dataclass
class ConceptProbes:
    concept: str
    fit: list[ProbeExample] = field(default_factory=list)
    held_out: list[ProbeExample] = field(default_factory=list)

    @property
    def all(self) -> list[ProbeExample]:
        return self.fit + self.held_out


def parse_probe_line(concept: str, line: str) -> ProbeExample:
    matches = list(_SPAN_RE.finditer(line))
    if len(matches) != 1:
        raise CorpusError(f"probe line for {concept!r} must mark exactly one [[span]]: {line!r}")
    m = matches[0]
    text = line[:m.start()] + m.group(1) + line[m.end():]
    return ProbeExample(concept, text, m.start(), m.start() + len(m.group(1)))


def load_probes(folder: str | Path | None = None, concepts: Iterable[str] | None = None) -> dict[str, ConceptProbes]:
    """Probe sets from a folder of ``<concept>.txt`` files (one ``[[span]]``-marked line each).

    Held-out split: every 5th line (0-based index i with i % 5 == 4).
    """
    root = Path(folder) if folder is not None else data_path("probes")
    files = sorted(root.glob("*.txt"))
    if not files:
        raise CorpusError(f"no probe files (*.txt) in {root}")
    wanted = set(concepts) if concepts is not None else None
    out: dict[str, ConceptProbes] = {}
    for file in files:
        if wanted is not None and file.stem not in wanted:
            continue
        probes = ConceptProbes(file.stem)
        for i, line in enumerate(_lines(file)):
            example = parse_probe_line(file.stem, line)
            (probes.held_out if i % 5 == 4 else probes.fit).append(example)
        out[file.stem] = probes
    if wanted is not None and set(out) != wanted:
        raise CorpusError(f"unknown concepts {sorted(wanted - set(out))}; known: {sorted(f.stem for f in files)}")
    return out
