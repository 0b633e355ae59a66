"""One streaming profile in this process: the steps of ``neuron_core.profile.profile`` once its arguments are
checked (and what each shard of a sharded profile runs).

Usage::

    prof = profile_local(interface, ["layer 6"], load_corpus("builtin"), StatsConfig(), max_tokens=50_000)

The steps: choose the sites, start (a new profile, or the checkpoint's), then :class:`_Profiler` runs the corpus's
windows of documents through the model, the site hooks adding each batch's counted tokens to the statistics.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neuron_core.batching import (
    Batch,
    DocCounts,
    Overflow,
    Segment,
    batch_contexts,
    context_limit,
    corpus_segments,
    document_windows,
    length_sorted_batches,
    pad_token_id,
    to_device,
)
from neuron_core.capture import attach, run_forward
from neuron_core.corpus import Corpus
from neuron_core.errors import EmptyInputError, InputError, ProfileMismatchError
from neuron_core.interface import ModelInterface
from neuron_core.models import LoadedModel
from neuron_core.neuron_profile import NeuronProfile, ProfileMeta
from neuron_core.sites import Site
from neuron_core.stats import SiteStats, StatsConfig

__all__ = ["profile_local", "coerce_interface", "choose_sites", "BinaryDocumentsWarning"]

_WINDOW_BATCHES = 16
"""Batches per window of documents sorted by length (see ``profile``)."""


@dataclass(frozen=True)
class _Settings:
    """How one ``profile`` run reads its corpus: batch sizes, the token budget, where it checkpoints."""

    batch_size: int
    batch_tokens: int
    max_tokens: int | None
    doc_offset: int
    overflow: Overflow
    context: int | None  # the longest segment a document is cut into
    checkpoint: Path | None
    checkpoint_every: int
    stop_early: bool


@dataclass
class _BatchTokens:
    """The tokens of one batch that count, on the model's device: their row-major index into the batch's
    [B * T] positions, document ids, positions and context windows; ``n`` of them."""

    index: torch.Tensor  # [n]
    doc: torch.Tensor  # [n]
    pos: torch.Tensor  # [n]
    ctx: torch.Tensor  # [n, W]
    n: int

    @classmethod
    def of(cls, batch: Batch, rows: list[int], keep: list[int], cfg: StatsConfig, doc_offset: int,
           device: torch.device) -> _BatchTokens:
        """Worked out on the host, where the batch is, then copied without waiting: on a GPU nothing here waits
        for the device. ``keep[row]``: how many of the row's first tokens count (the token budget)."""
        limit = torch.tensor([keep[i] for i in rows])
        mask = batch.mask & (batch.position_ids < limit[:, None])  # [B, T]
        index = mask.flatten().nonzero().flatten()  # the batch's counted tokens, row-major
        doc, pos = batch.token_doc_pos(select=mask)
        ctx = batch_contexts(batch, cfg.context_before, cfg.context_after, select=mask)
        return cls(to_device(index, device), to_device(doc + doc_offset, device), to_device(pos, device),
                   to_device(ctx, device), n=int(index.numel()))


def _within_budget(window: list[Segment], max_tokens: int | None, n_tokens: int) -> tuple[list[Segment], list[int]]:
    """The window's segments that still count, with how many of each one's tokens count: the statistics' budget is
    spent in corpus order, so the first ``max_tokens`` tokens count (the model still sees whole documents). Empty
    once the budget is spent."""
    keep = [len(seg.ids) for seg in window]
    if max_tokens is not None:
        remaining = max_tokens - n_tokens
        for i, length in enumerate(keep):
            keep[i] = max(0, min(length, remaining))
            remaining -= keep[i]
    kept = [i for i, n_keep in enumerate(keep) if n_keep > 0]
    return [window[i] for i in kept], [keep[i] for i in kept]


class _Profiler:
    """One ``profile`` run in this process: the profile it fills, the documents it has counted, the tokens of the
    batch on its way through the model (which the site hooks read)."""

    def __init__(self, interface: ModelInterface, sites: list[Site], corpus: Corpus, prof: NeuronProfile,
                 cfg: StatsConfig, settings: _Settings, start_doc: int) -> None:
        self.interface, self.sites, self.corpus, self.prof = interface, sites, corpus, prof
        self.cfg, self.settings, self.start_doc = cfg, settings, start_doc
        meta = prof.meta
        self.counts = DocCounts(start_doc - 1, int(meta.get("n_skipped_docs", 0)),
                                int(meta.get("n_truncated_docs", 0)))
        self.current: _BatchTokens  # set before every forward, read by the site hooks
        self.processed_any = False

    def on_site(self, site: Site, tensor: torch.Tensor) -> None:
        """A site hook: the counted tokens' activations into the site's statistics."""
        tokens = self.current
        # index_select with the batch's precomputed token index: no host sync per site (a boolean mask would wait)
        acts = tensor.reshape(-1, tensor.shape[-1]).index_select(0, tokens.index)  # [n_tokens, N]
        self.prof.site_stats[site.name].add(acts, tokens.doc, tokens.pos, tokens.ctx)

    def run(self, progress: bool) -> None:
        """Every window of documents through the model, until the corpus or the token budget ends; a progress bar
        on stderr if ``progress``.

        Batches are formed within windows of whole documents (16 batches' worth), sorted by length: rows of a
        batch then have about the same length and little padding (built-in corpus, batch_size 16: padded
        positions per token 1.65 -> 1.09). Windows start at the first document and end at document boundaries, so
        a resumed run sees the same windows, hence the same batches, as an uninterrupted one; checkpoints are
        written at the end of a window once ``checkpoint_every`` batches have run."""
        s, meta = self.settings, self.prof.meta
        segments = corpus_segments(self.corpus, self.start_doc, self.interface.tokenizer, s.context, s.overflow,
                                   self.counts)
        batches_since = 0
        from tqdm.auto import tqdm

        bar = tqdm(total=s.max_tokens, initial=int(meta["n_tokens"]), unit="tok", unit_scale=True,
                   disable=not progress, desc=f"profiling {len(self.sites)} site(s)", file=sys.stderr)
        with closing(bar), attach(self.interface.resolver, self.sites, self.on_site, stop_early=s.stop_early):
            for window in document_windows(segments, size=s.batch_size * _WINDOW_BATCHES):
                window, keep = _within_budget(window, s.max_tokens, int(meta["n_tokens"]))
                if not window:
                    break
                batches_since += self.run_window(window, keep, bar)
                meta["n_docs"] = int(meta["n_docs"]) + len({seg.doc_id for seg in window})
                meta["next_doc"] = window[-1].doc_id + 1 + s.doc_offset
                if s.checkpoint is not None and batches_since >= s.checkpoint_every:
                    self.write_counts()
                    self.prof.save(s.checkpoint, examples_parquet=False)
                    batches_since = 0

    def run_window(self, window: list[Segment], keep: list[int], bar: Any) -> int:
        """One window's batches through the model; returns how many batches ran."""
        s, meta, module, device = self.settings, self.prof.meta, self.interface.module, self.interface.device
        pad = pad_token_id(self.interface.tokenizer)
        n_batches = 0
        for batch, rows in length_sorted_batches(window, batch_size=s.batch_size, pad_id=pad,
                                                 max_tokens=s.batch_tokens):
            self.current = _BatchTokens.of(batch, rows, keep, self.cfg, s.doc_offset, device)
            run_forward(module, batch.to(device).model_kwargs(module))
            n_new = self.current.n
            self.processed_any = self.processed_any or n_new > 0
            meta["n_tokens"] = int(meta["n_tokens"]) + n_new
            bar.update(n_new)
            n_batches += 1
        return n_batches

    def write_counts(self) -> None:
        """The document counts into the profile's metadata."""
        meta = self.prof.meta
        meta["n_skipped_docs"], meta["n_truncated_docs"] = self.counts.skipped, self.counts.truncated


def coerce_interface(model: ModelInterface | LoadedModel | Any) -> ModelInterface:
    return model if isinstance(model, ModelInterface) else ModelInterface(model)


def choose_sites(interface: ModelInterface, sites: Sequence[str | int | Site] | str | int | None) -> list[Site]:
    """The sites to profile, every name resolved first; None: every MLP site."""
    resolver = interface.resolver
    if sites is None:
        if not resolver.has_mlp_sites:
            raise InputError("this model has no canonical MLP sites; name the modules to profile")
        return [resolver.mlp_site(i) for i in range(resolver.n_layers)]
    return resolver.resolve_many(sites if isinstance(sites, (list, tuple)) else [sites])  # type: ignore[list-item]


def _start(interface: ModelInterface, sites: list[Site], corpus: Corpus, cfg: StatsConfig, settings: _Settings,
           resume: bool) -> tuple[NeuronProfile, int]:
    """The profile to fill and the corpus document it starts at: the checkpoint's when resuming from one, else a
    new, empty profile (one tiny forward reads each site's width)."""
    fingerprint = corpus.fingerprint()
    if resume:
        if settings.checkpoint is None:
            raise InputError("resume=True needs a checkpoint folder")
        if (settings.checkpoint / "profile.json").exists():
            prof = NeuronProfile.load(settings.checkpoint, device=interface.device)
            _check_resume(prof, interface, sites, cfg, fingerprint, settings.doc_offset)
            return prof, int(prof.meta["next_doc"]) - settings.doc_offset
    n_neurons = _probe_widths(interface, sites)
    stats = {s.name: SiteStats(n_neurons[s.name], device=interface.device, config=cfg) for s in sites}
    meta = ProfileMeta(model=interface.name, family=interface.loaded.family, n_layers=interface.n_layers,
                       corpus=corpus.name, corpus_fingerprint=fingerprint, doc_offset=settings.doc_offset,
                       batch_size=settings.batch_size, batch_tokens=settings.batch_tokens,
                       max_tokens=settings.max_tokens, overflow=settings.overflow)
    return NeuronProfile(stats, meta.as_dict(), interface.vocab_strings(), {s.name: s for s in sites}), 0


def profile_local(model: ModelInterface | LoadedModel | Any, sites: Sequence[str | int | Site] | str | int | None,
                  corpus: Corpus, config: StatsConfig | None = None, *, batch_size: int = 64, batch_tokens: int = 8192,
                  max_tokens: int | None = None, overflow: Overflow = "truncate", max_length: int | None = None,
                  doc_offset: int = 0, checkpoint: str | Path | None = None, checkpoint_every: int = 50,
                  resume: bool = False, progress: bool | None = None, stop_early: bool = True) -> NeuronProfile:
    """Profile ``sites`` of a model over ``corpus`` in this process; the arguments as in
    :func:`neuron_core.profile.profile`, already checked there (``config`` None: the default statistics)."""
    config = config or StatsConfig()
    interface = coerce_interface(model)
    chosen = choose_sites(interface, sites)
    settings = _Settings(batch_size, batch_tokens, max_tokens, doc_offset, overflow,
                         context_limit(interface.context_length, max_length),
                         Path(checkpoint) if checkpoint is not None else None, checkpoint_every, stop_early)
    prof, start_doc = _start(interface, chosen, corpus, config, settings, resume)
    if prof.meta.get("complete"):
        return prof  # resumed from a finished checkpoint
    run = _Profiler(interface, chosen, corpus, prof, config, settings, start_doc)
    run.run(sys.stderr.isatty() if progress is None else progress)
    _note_binary_documents(corpus, prof.meta)
    if not run.processed_any and int(prof.meta["n_tokens"]) == 0:
        raise EmptyInputError(f"corpus {corpus.name!r} produced no tokens")
    run.write_counts()
    prof.meta["complete"] = True
    if checkpoint is not None:
        prof.save(checkpoint, examples_parquet=False)
    return prof


class BinaryDocumentsWarning(UserWarning):
    """Documents of a corpus that look like binary data rather than text."""


def _note_binary_documents(corp: Corpus, meta: dict[str, Any]) -> None:
    """Warn, with a count, when documents looked like binary data (skipped or kept, as the corpus says); the count
    goes into the profile's metadata (``n_binary_docs``)."""
    n = int(corp.n_garbage)
    meta["n_binary_docs"] = n
    if n:
        action = "skipped" if corp.garbage == "skip" else "kept (load_corpus(..., garbage='keep'))"
        warnings.warn(f"{n} document{'s' if n != 1 else ''} of corpus {corp.name!r} look like binary data, not text "
                      f"(mostly control characters or invalid UTF-8): {action}", BinaryDocumentsWarning,
                      stacklevel=4)


def _probe_widths(interface: ModelInterface, sites: list[Site]) -> dict[str, int]:
    """Number of neurons at each site, read by one tiny forward (cheap, exact for raw modules too)."""
    widths: dict[str, int] = {}

    def grab(site: Site, tensor: torch.Tensor) -> None:
        widths[site.name] = int(tensor.shape[-1])

    ids = interface.tokenizer("hello", add_special_tokens=True)["input_ids"][:4] or [0]
    t = to_device(torch.tensor([ids]), interface.device)
    batch = Batch(t, torch.ones_like(t), torch.arange(t.shape[1], device=t.device)[None], torch.zeros(1),
                  torch.zeros(1), "right")
    with attach(interface.resolver, sites, grab, stop_early=True):
        run_forward(interface.module, batch.model_kwargs(interface.module))
    missing = [s.name for s in sites if s.name not in widths]
    if missing:
        raise InputError(f"sites {missing} produced no activations in a forward pass")
    return widths


def _check_resume(prof: NeuronProfile, interface: ModelInterface, sites: list[Site], cfg: StatsConfig,
                  fingerprint: str, doc_offset: int) -> None:
    problems = []
    if prof.meta.get("model") != interface.name:
        problems.append(f"model {prof.meta.get('model')!r} != {interface.name!r}")
    if set(prof.site_stats) != {s.name for s in sites}:
        problems.append(f"sites {sorted(prof.site_stats)} != {sorted(s.name for s in sites)}")
    if any(s.config != cfg for s in prof.site_stats.values()):
        problems.append("statistics settings differ")
    if prof.meta.get("corpus_fingerprint") != fingerprint:
        problems.append("the corpus differs")
    if int(prof.meta.get("doc_offset", 0)) != doc_offset:
        problems.append("doc_offset differs")
    if problems:
        raise ProfileMismatchError("cannot resume from this checkpoint: " + "; ".join(problems))
