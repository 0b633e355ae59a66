"""Streaming neuron profiles over corpora far larger than memory.

Usage::

    interface = ModelInterface.from_pretrained("smollm2-135m")
    prof = profile(interface, ["layer 6"], "builtin", max_tokens=50_000, top_k=32)
    prof["layer 6"].mean                       # float64 [n_neurons]
    prof["layer 6"].top_examples(123)          # list[Example], best first, with the token in its context
    prof.save("runs/x/profile"); NeuronProfile.load("runs/x/profile")
    a.merge(b)                                 # == profiling both corpora (shards use doc_offset)
    profile(..., checkpoint="ckpt/", resume=True)   # interrupted then resumed == uninterrupted

The forward stops after the last needed block (no later blocks, no LM head). Statistics stay on the model's device.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812

from neuron_core.batching import (
    Batch,
    Overflow,
    Segment,
    check_overflow,
    document_windows,
    encode_one,
    length_sorted_batches,
    pad_token_id,
    split_ids,
    to_device,
)
from neuron_core.capture import attach, run_forward
from neuron_core.corpus import Corpus, load_corpus
from neuron_core.distributed import Executor
from neuron_core.errors import EmptyInputError, InputError, ProfileMismatchError, UnknownSiteError
from neuron_core.interface import ModelInterface
from neuron_core.models import LoadedModel
from neuron_core.sites import Site, find_site_name
from neuron_core.stats import ExampleSet, SiteStats, StatsConfig
from neuron_core.store import atomic_dir, atomic_write_json

__all__ = ["profile", "NeuronProfile", "SiteProfile", "Example", "batch_contexts", "BinaryDocumentsWarning"]

ExampleKind = Literal["top", "bottom", "sample"]


@dataclass(frozen=True)
class Example:
    """One activation of one neuron on one token, with the token's context (decoded token strings)."""

    site: str
    neuron: int
    kind: str
    value: float
    doc_id: int
    position: int
    token: str
    context: tuple[str, ...]
    index: int  # position of the token inside ``context``

    def text(self, marker: tuple[str, str] = ("[[", "]]")) -> str:
        """The context as one string with the token marked: ``'the quick [[fox]] jumps'``."""
        before = "".join(self.context[: self.index])
        after = "".join(self.context[self.index + 1:])
        return f"{before}{marker[0]}{self.token}{marker[1]}{after}"


class SiteProfile:
    """Read-only view of one site's statistics, with decoded examples. Tensors are float64 over neurons."""

    def __init__(self, name: str, stats: SiteStats, vocab: Sequence[str]) -> None:
        self.name = name
        self.stats = stats
        self.vocab = vocab

    # moments
    count = property(lambda self: self.stats.count)
    mean = property(lambda self: self.stats.mean)
    var = property(lambda self: self.stats.var)
    std = property(lambda self: self.stats.std)
    min = property(lambda self: self.stats.min)
    max = property(lambda self: self.stats.max)
    frac_active = property(lambda self: self.stats.frac_active)
    n_nonfinite = property(lambda self: self.stats.n_nonfinite)
    hist = property(lambda self: self.stats.hist)
    edges = property(lambda self: self.stats.edges)

    @property
    def n_neurons(self) -> int:
        return self.stats.n_neurons

    def _check(self, neuron: int) -> int:
        if isinstance(neuron, bool) or not isinstance(neuron, int) or not 0 <= neuron < self.n_neurons:
            raise InputError(f"neuron {neuron!r} out of range for {self.name} (0-{self.n_neurons - 1})")
        return neuron

    def _decode(self, token_id: int) -> str:
        return self.vocab[token_id] if 0 <= token_id < len(self.vocab) else f"<{token_id}>"

    def examples(self, neuron: int, kind: ExampleKind = "top", n: int | None = None) -> list[Example]:
        """Kept examples of a neuron: ``top`` (highest first), ``bottom`` (lowest first) or ``sample``."""
        self._check(neuron)
        sets = {"top": self.stats.top, "bottom": self.stats.bottom, "sample": self.stats.sample}
        if kind not in sets:
            raise InputError(f"kind must be one of {sorted(sets)}, not {kind!r}")
        out = self._decoded(sets[kind], neuron, neuron, kind)
        if kind == "sample":
            out.sort(key=lambda e: -e.value)
        return out[:n] if n is not None else out

    def token_sample(self) -> list[Example]:
        """The site's token reservoir: a uniform random sample of all its tokens, not chosen by any neuron (empty
        for profiles saved before it existed). ``neuron`` is -1 and ``value`` 0 in these examples."""
        return self._decoded(self.stats.tokens, 0, -1, "token")

    def _decoded(self, ex: ExampleSet, row: int, neuron: int, kind: str) -> list[Example]:
        """Row ``row`` of an example set as decoded examples, in key order (empty slots left out)."""
        if ex.k == 0:
            return []
        keys, values = ex.keys[row].cpu(), ex.values[row].cpu()
        docs, poss, ctx = ex.doc[row].cpu(), ex.pos[row].cpu(), ex.ctx[row].cpu()
        before = self.stats.config.context_before
        out: list[Example] = []
        for slot in range(ex.k):
            if not torch.isfinite(keys[slot]) or int(docs[slot]) < 0:
                continue
            ids = ctx[slot].tolist()
            left = [i for i in ids[:before] if i >= 0]
            right = [i for i in ids[before + 1:] if i >= 0]
            strings = tuple(self._decode(i) for i in left + [ids[before]] + right)
            out.append(Example(self.name, neuron, kind, float(values[slot]), int(docs[slot]), int(poss[slot]),
                               self._decode(ids[before]), strings, len(left)))
        return out

    def top_examples(self, neuron: int, n: int | None = None) -> list[Example]:
        return self.examples(neuron, "top", n)

    def bottom_examples(self, neuron: int, n: int | None = None) -> list[Example]:
        return self.examples(neuron, "bottom", n)

    def quantile_examples(self, neuron: int, n: int = 10) -> list[Example]:
        """Examples spread over the distribution of the neuron's active tokens (from the random sample),
        highest first: the sample sorted by value, taken at ``n`` evenly spaced ranks."""
        sample = self.examples(neuron, "sample")
        if len(sample) <= n:
            return sample
        step = (len(sample) - 1) / (n - 1) if n > 1 else 0
        return [sample[round(i * step)] for i in range(n)]

    def table(self) -> Any:
        """A tidy pandas DataFrame, one row per neuron."""
        import pandas as pd

        return pd.DataFrame({
            "site": self.name,
            "neuron": range(self.n_neurons),
            "count": self.count.cpu().numpy(),
            "mean": self.mean.cpu().numpy(),
            "std": self.std.cpu().numpy(),
            "min": self.min.cpu().numpy(),
            "max": self.max.cpu().numpy(),
            "frac_active": self.frac_active.cpu().numpy(),
            "n_nonfinite": self.n_nonfinite.cpu().numpy(),
        })


class NeuronProfile:
    """Per-site streaming statistics of a corpus, plus what is needed to read them (vocab, meta).

    ``site_stats``: site name -> :class:`SiteStats`; ``site_names``: the profiled site names; ``site_objects``: site
    name -> the :class:`Site` it was read at."""

    def __init__(self, sites: dict[str, SiteStats], meta: dict[str, Any], vocab: Sequence[str],
                 site_objects: dict[str, Site] | None = None) -> None:
        self.site_stats = sites
        self.meta = meta
        self.vocab = list(vocab)
        self.site_objects = site_objects or {}

    @property
    def sites(self) -> dict[str, SiteStats]:
        """Deprecated alias of :attr:`site_stats` (site name -> its statistics); read ``site_stats``."""
        return self.site_stats

    @property
    def site_names(self) -> list[str]:
        return list(self.site_stats)

    @property
    def n_tokens(self) -> int:
        return int(self.meta.get("n_tokens", 0))

    def key(self, site: str | int | Site) -> str:
        """The profiled site name ``site`` stands for (``'layer 6'``, ``6``, ``-1``, a Site, the name itself)."""
        name = find_site_name(site, self.site_stats, int(self.meta.get("n_layers") or 0))
        if name is None:
            raise UnknownSiteError(f"site {site!r} is not in this profile; profiled: {', '.join(self.site_stats)}")
        return name

    def __getitem__(self, site: str | int | Site) -> SiteProfile:
        key = self.key(site)
        return SiteProfile(key, self.site_stats[key], self.vocab)

    def __contains__(self, site: object) -> bool:
        try:
            self.key(site)  # type: ignore[arg-type]
        except UnknownSiteError:
            return False
        return True

    # -- combine --------------------------------------------------------------------------------------------
    def merge(self, other: NeuronProfile) -> NeuronProfile:
        """A new profile equal to profiling both corpora together. Document ranges must not overlap
        (give shards of one corpus their place with ``profile(..., doc_offset=...)``)."""
        if set(self.site_stats) != set(other.site_stats):
            raise ProfileMismatchError(f"profiles cover different sites: {sorted(self.site_stats)} "
                                       f"vs {sorted(other.site_stats)}")
        if self.meta.get("model") != other.meta.get("model"):
            raise ProfileMismatchError(f"profiles come from different models: {self.meta.get('model')!r} "
                                       f"vs {other.meta.get('model')!r}")
        a = (self.meta["doc_offset"], self.meta["next_doc"])
        b = (other.meta["doc_offset"], other.meta["next_doc"])
        if a[0] < b[1] and b[0] < a[1]:
            raise ProfileMismatchError(f"profiles overlap in documents {a} and {b}; shard with doc_offset")
        merged: dict[str, SiteStats] = {}
        for name, stats in self.site_stats.items():
            copy = SiteStats.from_state_dict(stats.state_dict(), stats.config_dict(), device=stats.device)
            merged[name] = copy.merge(other.site_stats[name])
        meta = dict(self.meta)
        meta["n_tokens"] = self.n_tokens + other.n_tokens
        for key in ("n_docs", "n_skipped_docs", "n_truncated_docs", "n_binary_docs"):
            meta[key] = int(self.meta.get(key, 0)) + int(other.meta.get(key, 0))
        meta["doc_offset"] = min(a[0], b[0])
        meta["next_doc"] = max(a[1], b[1])
        meta["merged_from"] = [self.meta.get("corpus"), other.meta.get("corpus")]
        return NeuronProfile(merged, meta, self.vocab or other.vocab, {**other.site_objects, **self.site_objects})

    # -- persist --------------------------------------------------------------------------------------------
    def save(self, folder: str | Path, *, examples_parquet: bool = True) -> Path:
        """Write stats.safetensors (exact state), profile.json, vocab.json and examples.parquet; atomically."""
        from safetensors.torch import save_file

        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            state: dict[str, torch.Tensor] = {}
            for name, stats in self.site_stats.items():
                for key, tensor in stats.state_dict(name).items():
                    state[key] = tensor.detach().cpu().contiguous()
            save_file(state, str(tmp / "stats.safetensors"))
            site_info = {name: {"config": s.config_dict(),
                                "site": vars(self.site_objects[name]) if name in self.site_objects else None}
                         for name, s in self.site_stats.items()}
            atomic_write_json(tmp / "profile.json", {"format": 1, "meta": self.meta, "sites": site_info})
            atomic_write_json(tmp / "vocab.json", self.vocab)
            if examples_parquet:
                self.examples_frame().to_parquet(tmp / "examples.parquet", index=False)
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: torch.device | str = "cpu") -> NeuronProfile:
        from safetensors.torch import load_file

        folder = Path(folder)
        info_path = folder / "profile.json"
        if not info_path.exists():
            raise InputError(f"no profile in {folder} (profile.json missing)")
        info = json.loads(info_path.read_text(encoding="utf-8"))
        state = load_file(str(folder / "stats.safetensors"))
        sites: dict[str, SiteStats] = {}
        objects: dict[str, Site] = {}
        for name, entry in info["sites"].items():
            sites[name] = SiteStats.from_state_dict(state, entry["config"], prefix=name, device=device)
            if entry.get("site"):
                objects[name] = Site(**entry["site"])
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        return cls(sites, info["meta"], vocab, objects)

    def examples_frame(self) -> Any:
        """Every kept example of every site as one tidy DataFrame (site, neuron, kind, rank, value, doc_id,
        position, token, context)."""
        import pandas as pd

        rows: list[dict[str, Any]] = []
        for name in self.site_stats:
            view = self[name]
            for neuron in range(view.n_neurons):
                for kind in ("top", "bottom", "sample"):
                    for rank, ex in enumerate(view.examples(neuron, kind)):  # type: ignore[arg-type]
                        rows.append({"site": name, "neuron": neuron, "kind": kind, "rank": rank, "value": ex.value,
                                     "doc_id": ex.doc_id, "position": ex.position, "token": ex.token,
                                     "context": ex.text()})
        columns = ["site", "neuron", "kind", "rank", "value", "doc_id", "position", "token", "context"]
        return pd.DataFrame(rows, columns=columns)

    def table(self) -> Any:
        import pandas as pd

        return pd.concat([self[name].table() for name in self.site_stats], ignore_index=True)

    def __repr__(self) -> str:
        return (f"NeuronProfile(model={self.meta.get('model')!r}, sites={len(self.site_stats)}, "
                f"n_tokens={self.n_tokens}, docs=[{self.meta.get('doc_offset')}, {self.meta.get('next_doc')}))")


# ---------------------------------------------------------------------------------------------------- driver
def batch_contexts(batch: Batch, before: int, after: int, select: torch.Tensor | None = None) -> torch.Tensor:
    """Token-id windows around every real token (or those of ``select`` [B, T]): [n, before + 1 + after] int32,
    -1 outside the document."""
    ids = torch.where(batch.mask, batch.input_ids, -1).to(torch.int32)  # [B, T]
    padded = F.pad(ids, (before, after), value=-1)  # [B, before + T + after]
    windows = padded.unfold(1, before + 1 + after, 1)  # [B, T, W]
    return windows[batch.mask if select is None else select]  # [n, W]


_WINDOW_BATCHES = 16
"""Batches per window of documents sorted by length (see ``profile``)."""


def _coerce_interface(model: ModelInterface | LoadedModel | Any) -> ModelInterface:
    return model if isinstance(model, ModelInterface) else ModelInterface(model)


def _segments(corpus: Corpus, start: int, tokenizer: Any, context: int | None, overflow: Overflow,
              seen: list[int]) -> Iterator[Segment]:
    for doc_id, text in corpus.iter_from(start):
        if isinstance(text, (list, tuple, torch.Tensor)):  # an already tokenised document
            ids = text.tolist() if isinstance(text, torch.Tensor) else list(text)
            if not ids:
                seen[1] += 1
                continue
            segments = split_ids(ids, doc_id, context_length=context, overflow=overflow)
        elif not isinstance(text, str) or not text.strip():
            seen[1] += 1  # skipped empty documents are counted, never silently lost
            continue
        else:
            segments = encode_one(tokenizer, text, doc_id, context_length=context, overflow=overflow)
        seen[0] = doc_id
        if segments[0].truncated:
            seen[2] += 1
        yield from segments


def profile(model: ModelInterface | LoadedModel | Any, sites: Sequence[str | int | Site] | str | int | None = None,
            corpus: str | Path | Sequence[str] | Corpus = "builtin", *, batch_size: int = 64,
            batch_tokens: int = 8192, max_tokens: int | None = None, top_k: int = 32, bottom_k: int = 8,
            n_samples: int = 32, active_threshold: float = 0.0, config: StatsConfig | None = None,
            overflow: Overflow = "truncate", max_length: int | None = None, doc_offset: int = 0,
            checkpoint: str | Path | None = None, checkpoint_every: int = 50, resume: bool = False,
            progress: bool | None = None, stop_early: bool = True, shards: int = 1, executor: Executor = "local",
            address: str | None = None, max_retries: int = 2) -> NeuronProfile:
    """Profile ``sites`` (default: every MLP site) of a model over a corpus; see the module docstring.

    At most ``batch_size`` rows and ``batch_tokens`` positions (rows x the longest row; a longer document runs
    alone) go through the model at once; documents are batched by length within windows of ``16 * batch_size``
    documents (little padding), so the model sees them out of corpus order: the statistics do not depend on
    batching, and activations only to float rounding (a batch's shape can change the last bit).
    ``doc_offset`` is the corpus's first document id (for shards of one corpus that will be merged).
    ``max_tokens`` stops after exactly that many tokens: the first ones in corpus order. With ``checkpoint`` the
    profile is saved at the end of the first window after each ``checkpoint_every`` batches; ``resume=True``
    continues from it and, with the same batch settings, gives the same result as an uninterrupted run to the bit.
    ``shards`` > 1 or ``executor="ray"`` cuts the corpus into document ranges profiled as separate tasks (Ray tasks
    with ``executor="ray"``, on the cluster at ``address`` if given; ``max_retries`` each) and merges them: see
    :mod:`neuron_core.shards` for what equals the unsharded profile.
    """
    interface = _coerce_interface(model)
    resolver = interface.resolver
    if sites is None:
        if not resolver.has_mlp_sites:
            raise InputError("this model has no canonical MLP sites; name the modules to profile")
        chosen = [resolver.mlp_site(i) for i in range(resolver.n_layers)]
    else:
        chosen = resolver.resolve_many(sites if isinstance(sites, (list, tuple)) else [sites])  # type: ignore[list-item]
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if batch_tokens < 1:
        raise InputError(f"batch_tokens must be >= 1, got {batch_tokens}")
    if max_tokens is not None and max_tokens < 1:
        raise InputError(f"max_tokens must be >= 1, got {max_tokens}")
    if doc_offset < 0:
        raise InputError("doc_offset must be >= 0")
    check_overflow(overflow)
    cfg = config or StatsConfig(top_k=top_k, bottom_k=bottom_k, n_samples=n_samples,
                                active_threshold=active_threshold)
    corp = load_corpus(corpus)
    if interface.tokenizer is None:
        raise InputError("profiling text needs a tokenizer; give the ModelInterface one")
    if shards != 1 or executor != "local":
        from neuron_core.shards import profile_sharded

        if doc_offset:
            raise InputError("a sharded profile places its own shards: doc_offset must be 0")
        return profile_sharded(interface, [s.name for s in chosen], corp, shards=shards, executor=executor,
                               address=address, max_tokens=max_tokens, max_length=max_length, overflow=overflow,
                               checkpoint=checkpoint, resume=resume, max_retries=max_retries, progress=bool(progress),
                               options={"batch_size": batch_size, "batch_tokens": batch_tokens, "config": cfg,
                                        "stop_early": stop_early, "checkpoint_every": checkpoint_every})
    context = interface.context_length
    if max_length is not None:
        context = min(max_length, context) if context else max_length
    device = interface.device
    fingerprint = corp.fingerprint()

    prof: NeuronProfile | None = None
    meta: dict[str, Any]
    start_doc = 0
    if resume:
        if checkpoint is None:
            raise InputError("resume=True needs a checkpoint folder")
        if (Path(checkpoint) / "profile.json").exists():
            prof = NeuronProfile.load(checkpoint, device=device)
            _check_resume(prof, interface, chosen, cfg, fingerprint, doc_offset)
            start_doc = int(prof.meta["next_doc"]) - doc_offset
            if prof.meta.get("complete"):
                return prof
    if prof is None:
        n_neurons = _probe_widths(interface, chosen)
        stats = {s.name: SiteStats(n_neurons[s.name], device=device, config=cfg) for s in chosen}
        meta = {"model": interface.name, "family": interface.loaded.family, "n_layers": interface.n_layers,
                "corpus": corp.name, "corpus_fingerprint": fingerprint, "doc_offset": doc_offset,
                "next_doc": doc_offset, "n_docs": 0, "n_tokens": 0, "n_skipped_docs": 0, "n_truncated_docs": 0,
                "batch_size": batch_size, "batch_tokens": batch_tokens, "max_tokens": max_tokens,
                "overflow": overflow, "complete": False,
                "created": _dt.datetime.now().isoformat(timespec="seconds")}
        prof = NeuronProfile(stats, meta, interface.vocab_strings(), {s.name: s for s in chosen})

    meta = prof.meta
    stats = prof.site_stats
    before, after = cfg.context_before, cfg.context_after
    pad = pad_token_id(interface.tokenizer)
    seen = [start_doc - 1, int(meta.get("n_skipped_docs", 0)), int(meta.get("n_truncated_docs", 0))]
    current: dict[str, Any] = {}

    def on_site(site: Site, tensor: torch.Tensor) -> None:
        # index_select with the batch's precomputed token index: no host sync per site (a boolean mask would wait)
        acts = tensor.reshape(-1, tensor.shape[-1]).index_select(0, current["index"])  # [n_tokens, N]
        stats[site.name].add(acts, current["doc"], current["pos"], current["ctx"])

    show = sys.stderr.isatty() if progress is None else progress
    from tqdm.auto import tqdm

    bar = tqdm(total=max_tokens, initial=int(meta["n_tokens"]), unit="tok", unit_scale=True, disable=not show,
               desc=f"profiling {len(chosen)} site(s)", file=sys.stderr)
    batches_since = 0
    processed_any = False
    module = interface.module
    # Batches are formed within windows of whole documents (16 batches' worth), sorted by length: rows of a batch
    # then have about the same length and little padding (built-in corpus, batch_size 16: padded positions per
    # token 1.65 -> 1.09). Windows start at the first document and end at document boundaries, so a resumed run
    # sees the same windows, hence the same batches, as an uninterrupted one; checkpoints are written at the end of
    # a window once ``checkpoint_every`` batches have run.
    try:
        with attach(resolver, chosen, on_site, stop_early=stop_early):
            segs = _segments(corp, start_doc, interface.tokenizer, context, overflow, seen)
            for window in document_windows(segs, size=batch_size * _WINDOW_BATCHES):
                # The statistics' token budget is spent in corpus order: the first `max_tokens` tokens count (the
                # model still sees whole documents; only the statistics stop at the budget).
                keep = [len(seg.ids) for seg in window]
                if max_tokens is not None:
                    remaining = max_tokens - int(meta["n_tokens"])
                    for i, length in enumerate(keep):
                        keep[i] = max(0, min(length, remaining))
                        remaining -= keep[i]
                kept = [i for i, n_keep in enumerate(keep) if n_keep > 0]
                if not kept:
                    break
                window = [window[i] for i in kept]
                keep = [keep[i] for i in kept]
                for batch, rows in length_sorted_batches(window, batch_size=batch_size, pad_id=pad,
                                                         max_tokens=batch_tokens):
                    # Which tokens count, their places and contexts: worked out on the host, where the batch is,
                    # then copied without waiting; on a GPU nothing in this loop waits for the device.
                    limit = torch.tensor([keep[i] for i in rows])
                    mask = batch.mask & (batch.position_ids < limit[:, None])
                    index = mask.flatten().nonzero().flatten()  # the batch's counted tokens, row-major
                    doc, pos = batch.token_doc_pos(select=mask)
                    doc = doc + doc_offset
                    ctx = batch_contexts(batch, before, after, select=mask)
                    for key, value in (("index", index), ("doc", doc), ("pos", pos), ("ctx", ctx)):
                        current[key] = to_device(value, device)
                    run_forward(module, batch.to(device).model_kwargs(module))
                    n_new = int(index.numel())
                    processed_any = processed_any or n_new > 0
                    meta["n_tokens"] = int(meta["n_tokens"]) + n_new
                    bar.update(n_new)
                    batches_since += 1
                meta["n_docs"] = int(meta["n_docs"]) + len({seg.doc_id for seg in window})
                meta["next_doc"] = window[-1].doc_id + 1 + doc_offset
                if checkpoint is not None and batches_since >= checkpoint_every:
                    meta["n_skipped_docs"], meta["n_truncated_docs"] = seen[1], seen[2]
                    prof.save(checkpoint, examples_parquet=False)
                    batches_since = 0
    finally:
        bar.close()
    _note_binary_documents(corp, meta)
    if not processed_any and int(meta["n_tokens"]) == 0:
        raise EmptyInputError(f"corpus {corp.name!r} produced no tokens")
    meta["n_skipped_docs"], meta["n_truncated_docs"] = seen[1], seen[2]
    meta["complete"] = True
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
                      stacklevel=3)


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
