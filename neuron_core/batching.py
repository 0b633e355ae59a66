"""Tokenising texts into padded batches, with the facts needed to strip padding again.

Usage::

    segments = encode_texts(tokenizer, ["a text", "another"], context_length=1024, overflow="error")
    for batch in make_batches(segments, batch_size=8, pad_id=0, padding_side="right"):
        model(**batch.model_kwargs(model))

Each :class:`Segment` is one document or, with ``overflow="window"``, one window of a long document; its tokens
keep their position inside the document (``start`` + index). Padding is stripped later with ``batch.mask``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import torch
from torch import nn

from neuron_core.errors import EmptyInputError, InputError, TextTooLongError

__all__ = ["Segment", "Batch", "Overflow", "encode_texts", "encode_one", "make_batches", "pad_token_id",
           "to_device", "batch_contexts", "check_budget", "context_limit", "DocCounts", "corpus_segments",
           "TokenStrings"]

Overflow = Literal["error", "truncate", "window"]


@dataclass(frozen=True)
class Segment:
    """Token ids of one document (or one window of it). ``start`` is the position of ``ids[0]`` in the document."""

    doc_id: int
    start: int
    ids: tuple[int, ...]
    truncated: bool = False
    final: bool = True  # the last segment of its document


@dataclass
class Batch:
    """A padded batch. Shapes: input_ids, attention_mask, position_ids [B, T]; doc_ids, starts [B]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    doc_ids: torch.Tensor
    starts: torch.Tensor
    padding_side: str

    @property
    def mask(self) -> torch.Tensor:
        return self.attention_mask.bool()

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str) -> Batch:
        """A copy on ``device``; to CUDA through pinned memory without waiting (no host sync per batch)."""
        return Batch(to_device(self.input_ids, device), to_device(self.attention_mask, device),
                     to_device(self.position_ids, device), to_device(self.doc_ids, device),
                     to_device(self.starts, device), self.padding_side)

    def token_doc_pos(self, select: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Document id and in-document position of every real token (or of those ``select`` [B, T] marks), in
        row-major order: two [n] tensors."""
        mask = self.mask if select is None else select
        doc = self.doc_ids[:, None].expand_as(mask)[mask]  # [n]
        pos = (self.starts[:, None] + self.position_ids)[mask]  # [n]
        return doc, pos

    def model_kwargs(self, model: nn.Module) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        params = _forward_params(type(model))  # type: ignore[arg-type]
        if "position_ids" in params:
            kwargs["position_ids"] = self.position_ids
        if "use_cache" in params:
            kwargs["use_cache"] = False
        return kwargs


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Move a host tensor to ``device``. To CUDA it goes through pinned memory with ``non_blocking``: the host does
    not wait for the device (a plain copy synchronises the stream). Safe: the pinned staging copy is a fresh tensor
    that torch's host allocator keeps alive until the copy has run."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@lru_cache(maxsize=64)
def _forward_params(cls: Any) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(cls.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def pad_token_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def check_overflow(overflow: str) -> None:
    if overflow not in ("error", "truncate", "window"):
        raise InputError(f"overflow must be 'error', 'truncate' or 'window', not {overflow!r}")


def encode_one(tokenizer: Any, text: str, doc_id: int, *, context_length: int | None,
               overflow: Overflow = "error") -> list[Segment]:
    if not isinstance(text, str):
        raise InputError(f"document {doc_id} is a {type(text).__name__}, not a string")
    if not text.strip():
        raise EmptyInputError(f"document {doc_id} is empty")
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    return split_ids(ids, doc_id, context_length=context_length, overflow=overflow)


def split_ids(ids: Sequence[int], doc_id: int, *, context_length: int | None,
              overflow: Overflow = "error") -> list[Segment]:
    """Segments of an already tokenised document (see :func:`encode_one`)."""
    ids = list(ids)
    if not ids:
        raise EmptyInputError(f"document {doc_id} has no tokens")
    limit = context_length
    if limit is None or len(ids) <= limit:
        return [Segment(doc_id, 0, tuple(ids))]
    if overflow == "error":
        raise TextTooLongError(
            f"document {doc_id} has {len(ids)} tokens, longer than the model's context of {limit} tokens; "
            "pass overflow='truncate' (keep the first tokens) or overflow='window' (split into windows)"
        )
    if overflow == "truncate":
        return [Segment(doc_id, 0, tuple(ids[:limit]), truncated=True)]
    if overflow == "window":
        starts = range(0, len(ids), limit)
        return [Segment(doc_id, s, tuple(ids[s:s + limit]), truncated=True, final=s == starts[-1]) for s in starts]
    raise InputError(f"overflow must be 'error', 'truncate' or 'window', not {overflow!r}")


def encode_texts(tokenizer: Any, texts: str | Sequence[str], *, context_length: int | None,
                 overflow: Overflow = "error", max_length: int | None = None) -> list[Segment]:
    """Tokenise every text before any model work, so bad input fails fast."""
    check_overflow(overflow)
    if tokenizer is None:
        raise InputError("this model has no tokenizer; pass token-id tensors instead of text, or give a tokenizer")
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise EmptyInputError("no texts given")
    if max_length is not None:
        if max_length < 1:
            raise InputError(f"max_length must be >= 1, got {max_length}")
        context_length = min(max_length, context_length) if context_length else max_length
    segments: list[Segment] = []
    for doc_id, text in enumerate(texts):
        segments.extend(encode_one(tokenizer, text, doc_id, context_length=context_length, overflow=overflow))
    return segments


def make_batches(segments: Iterable[Segment], *, batch_size: int, pad_id: int,
                 padding_side: Literal["left", "right"] = "right") -> Iterator[Batch]:
    """Group segments in order into padded batches of at most ``batch_size`` rows."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if padding_side not in ("left", "right"):
        raise InputError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    chunk: list[Segment] = []
    for segment in segments:
        chunk.append(segment)
        if len(chunk) == batch_size:
            yield _collate(chunk, pad_id, padding_side)
            chunk = []
    if chunk:
        yield _collate(chunk, pad_id, padding_side)


def document_windows(segments: Iterable[Segment], *, size: int) -> Iterator[list[Segment]]:
    """Consecutive segments in groups of whole documents, each group at least ``size`` segments (the last one may
    be smaller): a document never spans two groups, so each group's end is a safe point to checkpoint."""
    if size < 1:
        raise InputError(f"size must be >= 1, got {size}")
    window: list[Segment] = []
    for segment in segments:
        window.append(segment)
        if len(window) >= size and segment.final:
            yield window
            window = []
    if window:
        yield window


def length_sorted_batches(window: Sequence[Segment], *, batch_size: int, pad_id: int, max_tokens: int | None = None,
                          padding_side: Literal["left", "right"] = "right") -> Iterator[tuple[Batch, list[int]]]:
    """Batches of ``window``'s segments sorted by length (stable), so rows of one batch have about the same length
    and padding is small; each with the indices of its rows in ``window``. A batch has at most ``batch_size`` rows
    and, with ``max_tokens``, at most that many positions (rows x its longest row; a longer segment runs alone)."""
    if max_tokens is not None and max_tokens < 1:
        raise InputError(f"max_tokens must be >= 1, got {max_tokens}")
    order = sorted(range(len(window)), key=lambda i: len(window[i].ids))
    rows: list[int] = []
    for i in order:  # ascending length: the row being added is the longest so far
        too_many = max_tokens is not None and (len(rows) + 1) * len(window[i].ids) > max_tokens
        if rows and (len(rows) == batch_size or too_many):
            yield _collate([window[j] for j in rows], pad_id, padding_side), rows
            rows = []
        rows.append(i)
    if rows:
        yield _collate([window[j] for j in rows], pad_id, padding_side), rows


def _collate(chunk: list[Segment], pad_id: int, padding_side: str) -> Batch:
    width = max(len(s.ids) for s in chunk)
    ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)  # [B, T]
    mask = torch.zeros((len(chunk), width), dtype=torch.long)  # [B, T]
    for row, seg in enumerate(chunk):
        n = len(seg.ids)
        cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
        ids[row, cols] = torch.tensor(seg.ids, dtype=torch.long)
        mask[row, cols] = 1
    # Positions count real tokens only, so left padding does not shift them: [B, T]
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    doc_ids = torch.tensor([s.doc_id for s in chunk], dtype=torch.long)
    starts = torch.tensor([s.start for s in chunk], dtype=torch.long)
    return Batch(ids, mask, positions, doc_ids, starts, padding_side)


def batch_contexts(batch: Batch, before: int, after: int, select: torch.Tensor | None = None) -> torch.Tensor:
    """Token-id windows around every real token (or those of ``select`` [B, T]): [n, before + 1 + after] int32,
    -1 outside the document."""
    ids = torch.where(batch.mask, batch.input_ids, -1).to(torch.int32)  # [B, T]
    padded = torch.nn.functional.pad(ids, (before, after), value=-1)  # [B, before + T + after]
    windows = padded.unfold(1, before + 1 + after, 1)  # [B, T, W]
    return windows[batch.mask if select is None else select]  # [n, W]


def check_budget(max_tokens: int | None, doc_offset: int) -> None:
    """InputError unless ``max_tokens`` (None: no budget) and ``doc_offset`` are possible."""
    if max_tokens is not None and max_tokens < 1:
        raise InputError(f"max_tokens must be >= 1, got {max_tokens}")
    if doc_offset < 0:
        raise InputError("doc_offset must be >= 0")


def context_limit(model_context: int | None, max_length: int | None) -> int | None:
    """The longest segment a document is cut into: the model's context, or ``max_length`` if shorter."""
    if max_length is None:
        return model_context
    return min(max_length, model_context) if model_context else max_length


@dataclass
class DocCounts:
    """What reading a corpus into segments has met so far: the last document read, how many were skipped (empty)
    and how many truncated. Skipped documents are counted, never silently lost."""

    last_doc: int = -1
    skipped: int = 0
    truncated: int = 0


def corpus_segments(corpus: Any, start: int, tokenizer: Any, context: int | None, overflow: Overflow,
                    counts: DocCounts) -> Iterator[Segment]:
    """The segments of a corpus's documents from document ``start`` on (texts tokenised, token-id lists split),
    counting into ``counts`` as it goes."""
    for doc_id, text in corpus.iter_from(start):
        if isinstance(text, (list, tuple, torch.Tensor)):  # an already tokenised document
            ids = text.tolist() if isinstance(text, torch.Tensor) else list(text)
            if not ids:
                counts.skipped += 1
                continue
            segments = split_ids(ids, doc_id, context_length=context, overflow=overflow)
        elif not isinstance(text, str) or not text.strip():
            counts.skipped += 1
            continue
        else:
            segments = encode_one(tokenizer, text, doc_id, context_length=context, overflow=overflow)
        counts.last_doc = doc_id
        if segments[0].truncated:
            counts.truncated += 1
        yield from segments


class TokenStrings:
    """Readable text of token ids, decoded one by one with ``source.tokenizer`` (a LoadedModel, a KerasModel) and
    cached; without a tokenizer an id reads as its number. ``tokens(ids)``; ``tokens.vocab()`` for every id."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self._cache: dict[int, str] = {}

    def __call__(self, ids: list[int]) -> list[str]:
        tok = self.source.tokenizer
        out: list[str] = []
        for i in ids:
            text = self._cache.get(i)
            if text is None:
                text = tok.decode([i]) if tok is not None else str(i)
                self._cache[i] = text
            out.append(text)
        return out

    def vocab(self) -> list[str]:
        """Readable text of every token id in the vocabulary, indexed by id (empty without a tokenizer)."""
        tok = self.source.tokenizer
        if tok is None:
            return []
        return self(list(range(len(tok))))
