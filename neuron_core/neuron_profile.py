"""What a streaming profile leaves behind: per-site statistics with decoded examples, and its metadata.

Usage::

    prof = NeuronProfile.load("runs/x/profile")     # or neuron_core.profile.profile(...)
    prof["layer 6"].mean                          # float64 [n_neurons]
    prof["layer 6"].top_examples(123)             # list[Example], best first, with the token in its context
    prof.site_stats                               # site name -> SiteStats (the mergeable state)
    a.merge(b)                                    # == profiling both corpora
    ProfileMeta(model="gpt2", ...).as_dict()      # the metadata a new profile starts with

This module reads and writes profiles; :mod:`neuron_core.profile` (PyTorch) and :mod:`neuron_core.keras_backend`
(Keras) make them.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from neuron_core.errors import InputError, ProfileMismatchError, UnknownSiteError
from neuron_core.sites import Site, SiteKeyed, find_site_name
from neuron_core.stats import ExampleSet, SiteStats
from neuron_core.store import atomic_dir, atomic_write_json

__all__ = ["NeuronProfile", "SiteProfile", "Example", "ProfileMeta"]

ExampleKind = Literal["top", "bottom", "sample"]


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


@dataclass(frozen=True)
class ProfileMeta:
    """The metadata a new profile starts with, for PyTorch and Keras profiles alike. ``as_dict()`` is what
    :attr:`NeuronProfile.meta` holds (and profile.json stores); the run then counts into it."""

    model: str
    family: str
    n_layers: int
    corpus: str
    corpus_fingerprint: str | None
    doc_offset: int
    batch_size: int | None
    max_tokens: int | None
    overflow: str
    batch_tokens: int | None = None
    """the token budget of a batch (PyTorch profiles; left out of the dict when None)"""
    framework: str | None = None
    """``"tensorflow"`` for Keras profiles (left out of the dict when None: PyTorch)"""
    created: str = field(default_factory=_now)

    def as_dict(self) -> dict[str, Any]:
        """The metadata dict, counters at zero, keys in the order profiles have always written them."""
        meta: dict[str, Any] = {"model": self.model, "family": self.family}
        if self.framework is not None:
            meta["framework"] = self.framework
        meta.update({"n_layers": self.n_layers, "corpus": self.corpus, "corpus_fingerprint": self.corpus_fingerprint,
                     "doc_offset": self.doc_offset, "next_doc": self.doc_offset, "n_docs": 0, "n_tokens": 0,
                     "n_skipped_docs": 0, "n_truncated_docs": 0, "batch_size": self.batch_size})
        if self.batch_tokens is not None:
            meta["batch_tokens"] = self.batch_tokens
        meta.update({"max_tokens": self.max_tokens, "overflow": self.overflow, "complete": False,
                     "created": self.created})
        return meta


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


class NeuronProfile(SiteKeyed):
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
