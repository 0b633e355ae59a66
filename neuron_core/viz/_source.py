"""One read-only view over what the pictures draw from: an ActivationRecord or a (Neuron|Site)Profile.

Usage::

    src = as_source(record_or_profile)
    site = src.site("layer 6")                 # 'blocks.6.mlp.hook_post'
    site, n = src.neuron_key("L6/N12")         # or (12, layer="layer 6")
    src.summary(site).max                      # float64 numpy [n_neurons]
    src.histogram(site, n)                     # counts with bin bounds
    src.examples(site, n, "top", 10)           # list[TokenExample], each a context with per-token values

A record knows every token's activation; a profile keeps per-neuron statistics and the contexts of a few examples,
where only the example token's own activation is known (the other context values are None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from neuron_core.capture import ActivationRecord
from neuron_core.errors import InputError, UnknownSiteError
from neuron_core.profile import NeuronProfile, SiteProfile
from neuron_core.sites import NeuronRef, Site, find_site_name

__all__ = ["TokenExample", "Summary", "Histogram", "Source", "as_source"]

ExampleKind = Literal["top", "quantile", "bottom"]
CONTEXT_BEFORE, CONTEXT_AFTER = 12, 4


@dataclass(frozen=True)
class TokenExample:
    """A context around one token of one neuron, ready to draw."""

    site: str
    neuron: int
    kind: str
    tokens: tuple[str, ...]
    values: tuple[float | None, ...]  # activation of every context token; None where not kept (profiles)
    index: int  # the example token's place in ``tokens``
    value: float
    doc_id: int
    position: int

    @property
    def token(self) -> str:
        return self.tokens[self.index]


@dataclass(frozen=True)
class Summary:
    """Per-neuron statistics of one site: float64 numpy arrays [n_neurons]."""

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    frac_active: np.ndarray
    count: np.ndarray

    def stat(self, name: str) -> np.ndarray:
        if name not in STATS:
            raise InputError(f"stat must be one of {list(STATS)}, not {name!r}")
        return getattr(self, name)  # type: ignore[no-any-return]


STATS = {"max": "max activation", "mean": "mean activation", "frac_active": "fraction of tokens active",
         "std": "std of activation", "min": "min activation"}


@dataclass(frozen=True)
class Histogram:
    """Counts of one neuron's activations. ``lo``/``hi`` bound each bin (±inf for the overflow bins)."""

    counts: np.ndarray  # [n_bins] int
    lo: np.ndarray  # [n_bins]
    hi: np.ndarray  # [n_bins]
    log_bins: bool  # True: the profile's signed log-spaced bins; False: equal-width bins over a record


def _np(tensor: Any) -> np.ndarray:
    return np.asarray(tensor.detach().cpu().double().numpy() if hasattr(tensor, "detach") else tensor,
                      dtype=np.float64)


class Source:
    """Common reads of records and profiles; see the module docstring."""

    kind: Literal["record", "profile"]
    model_name: str
    site_names: list[str]
    active_threshold: float

    def __init__(self) -> None:
        self._summaries: dict[str, Summary] = {}

    # -- names ----------------------------------------------------------------------------------------------
    def site(self, layer: str | int | Site | None) -> str:
        """Canonical site name of ``layer``; None means the only site (an error when there are several)."""
        if layer is None:
            if len(self.site_names) == 1:
                return self.site_names[0]
            raise InputError(f"name a layer: this {self.kind} has sites {', '.join(self.site_names)}")
        name = find_site_name(layer, self.site_names, self.n_layers)
        if name is not None:
            return name
        raise UnknownSiteError(f"site {layer!r} is not in this {self.kind}; it has {', '.join(self.site_names)}")

    @property
    def n_layers(self) -> int:
        return 0

    def neuron_key(self, neuron: Any, layer: str | int | Site | None = None) -> tuple[str, int]:
        """(site, index) from an int with ``layer``, ``"L6/N12"``, a ``(site, index)`` pair or a verdict."""
        if hasattr(neuron, "site") and hasattr(neuron, "neuron"):
            return self._checked(self.site(neuron.site), int(neuron.neuron))
        if isinstance(neuron, tuple) and len(neuron) == 2:
            return self._checked(self.site(neuron[0]), int(neuron[1]))
        if isinstance(neuron, str):
            if layer is not None and neuron.strip().lstrip("Nn").isdigit():
                return self._checked(self.site(layer), int(neuron.strip().lstrip("Nn")))
            ref = NeuronRef.parse(neuron, sites=self.site_names)
            return self._checked(ref.site if ref.layer is None else self.site(ref.layer), ref.index)
        if isinstance(neuron, (int, np.integer)) and not isinstance(neuron, bool):
            return self._checked(self.site(layer), int(neuron))
        raise InputError(f"cannot read neuron {neuron!r}: give an int with layer=, 'L6/N12' or (site, index)")

    def _checked(self, site: str, index: int) -> tuple[str, int]:
        n = self.n_neurons(site)
        if not 0 <= index < n:
            raise InputError(f"neuron {index} out of range for {site} (0-{n - 1})")
        return site, index

    # -- to implement ---------------------------------------------------------------------------------------
    def n_neurons(self, site: str) -> int:
        raise NotImplementedError

    def _summary(self, site: str) -> Summary:
        raise NotImplementedError

    def histogram(self, site: str, neuron: int) -> Histogram:
        raise NotImplementedError

    def examples(self, site: str, neuron: int, kind: ExampleKind = "top", n: int = 10) -> list[TokenExample]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def quantiles(self, site: str, neuron: int, qs: list[float]) -> list[float]:
        raise NotImplementedError

    def summary(self, site: str) -> Summary:
        if site not in self._summaries:
            self._summaries[site] = self._summary(site)
        return self._summaries[site]


class RecordSource(Source):
    kind = "record"

    def __init__(self, record: ActivationRecord, active_threshold: float = 0.0) -> None:
        super().__init__()
        if len(record) == 0 or not record.activations:
            raise InputError("this record is empty: capture at least one text")
        self.record = record
        self.model_name = record.model_name
        self.site_names = list(record.activations)
        self.active_threshold = active_threshold
        self.doc_ids = np.asarray(record.doc_ids.cpu().numpy(), dtype=np.int64)  # [n_tokens]
        self.positions = np.asarray(record.positions.cpu().numpy(), dtype=np.int64)  # [n_tokens]
        self._acts: dict[str, np.ndarray] = {}

    @property
    def n_layers(self) -> int:
        resolver = self.record.resolver
        return int(getattr(resolver, "n_layers", 0) or 0) if resolver is not None else 0

    def site(self, layer: str | int | Site | None) -> str:
        try:
            return super().site(layer)
        except UnknownSiteError:
            if layer is not None and self.record.resolver is not None:
                return self.record.key(layer)  # the model's own names (raw module paths)
            raise

    def acts(self, site: str) -> np.ndarray:
        """Activations [n_tokens, n_neurons] as float64 numpy (cached)."""
        if site not in self._acts:
            self._acts[site] = _np(self.record.activations[site])
        return self._acts[site]

    @property
    def tokens(self) -> list[str]:
        return self.record.tokens

    def n_neurons(self, site: str) -> int:
        return int(self.record.activations[site].shape[1])

    def _summary(self, site: str) -> Summary:
        a = self.acts(site)  # [n_tokens, N]
        finite = np.isfinite(a)
        count = finite.sum(0).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            clean = np.where(finite, a, np.nan)
            return Summary(mean=np.nanmean(clean, 0), std=np.nanstd(clean, 0), min=np.nanmin(clean, 0),
                           max=np.nanmax(clean, 0),
                           frac_active=(np.where(finite, a, -np.inf) > self.active_threshold).sum(0) / count,
                           count=count)

    def doc_index(self, text: int | str | None, site: str | None = None, neuron: int | None = None) -> int:
        """Document id from an index or the document's text; None: the document where ``neuron`` peaks."""
        docs = sorted(set(self.doc_ids.tolist()))
        if text is None:
            if site is None or neuron is None:
                return docs[0]
            values = self.acts(site)[:, neuron]
            return int(self.doc_ids[int(np.nanargmax(np.where(np.isfinite(values), values, -np.inf)))])
        if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
            if int(text) not in docs:
                raise InputError(f"no document {text} in this record (documents {docs[0]}-{docs[-1]})")
            return int(text)
        if isinstance(text, str):
            if text in self.record.texts:
                return self.record.texts.index(text)
            raise InputError(f"text {text[:60]!r} is not one of this record's {len(self.record.texts)} texts; "
                             "give its index or capture it first")
        raise InputError(f"text must be a document index or the text itself, not {type(text).__name__}")

    def doc_rows(self, doc: int) -> np.ndarray:
        return np.flatnonzero(self.doc_ids == doc)

    def histogram(self, site: str, neuron: int) -> Histogram:
        values = self.acts(site)[:, neuron]
        values = values[np.isfinite(values)]
        bins = int(min(60, max(10, math.ceil(math.sqrt(max(len(values), 1))))))
        lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        width = (hi - lo) / bins
        # Edges on multiples of the width, so that 0 is an edge and no bin mixes signs.
        edges = np.arange(math.floor(lo / width), math.ceil(hi / width) + 1) * width
        if edges[-1] <= hi:
            edges = np.append(edges, edges[-1] + width)
        counts, edges = np.histogram(values, bins=edges)
        return Histogram(counts, edges[:-1], edges[1:], log_bins=False)

    def _example(self, site: str, neuron: int, kind: str, row: int) -> TokenExample:
        doc = self.doc_ids[row]
        rows = self.doc_rows(doc)
        start = max(int(rows[0]), row - CONTEXT_BEFORE)
        stop = min(int(rows[-1]) + 1, row + CONTEXT_AFTER + 1)
        values = self.acts(site)[start:stop, neuron]
        return TokenExample(site, neuron, kind, tuple(self.tokens[start:stop]), tuple(float(v) for v in values),
                            row - start, float(self.acts(site)[row, neuron]), int(doc), int(self.positions[row]))

    def examples(self, site: str, neuron: int, kind: ExampleKind = "top", n: int = 10) -> list[TokenExample]:
        values = self.acts(site)[:, neuron]
        order = np.argsort(-np.where(np.isfinite(values), values, -np.inf), kind="stable")  # highest first
        if kind == "top":
            rows = order[:n]
        elif kind == "bottom":
            rows = np.argsort(np.where(np.isfinite(values), values, np.inf), kind="stable")[:n]
        elif kind == "quantile":
            active = [r for r in order if values[r] > self.active_threshold]
            if len(active) > n:
                step = (len(active) - 1) / (n - 1) if n > 1 else 0
                active = [active[round(i * step)] for i in range(n)]
            rows = np.asarray(active, dtype=np.int64)
        else:
            raise InputError(f"kind must be 'top', 'quantile' or 'bottom', not {kind!r}")
        return [self._example(site, neuron, kind, int(r)) for r in rows]

    def quantiles(self, site: str, neuron: int, qs: list[float]) -> list[float]:
        values = self.acts(site)[:, neuron]
        values = values[np.isfinite(values)]
        return [float(np.quantile(values, q)) if values.size else math.nan for q in qs]

    def describe(self) -> str:
        n_docs = len(set(self.doc_ids.tolist()))
        return f"record of {len(self.tokens)} tokens in {n_docs} text{'s' if n_docs != 1 else ''}"


class ProfileSource(Source):
    kind = "profile"

    def __init__(self, prof: NeuronProfile | SiteProfile) -> None:
        super().__init__()
        if isinstance(prof, SiteProfile):
            self.views = {prof.name: prof}
            self.meta: dict[str, Any] = {}
        else:
            self.views = {name: prof[name] for name in prof.site_names}
            self.meta = dict(prof.meta)
        if not self.views:
            raise InputError("this profile has no sites")
        self.model_name = str(self.meta.get("model", ""))
        self.site_names = list(self.views)
        first = next(iter(self.views.values()))
        self.active_threshold = float(first.stats.config.active_threshold)

    @property
    def n_layers(self) -> int:
        return int(self.meta.get("n_layers") or 0)

    def n_neurons(self, site: str) -> int:
        return self.views[site].n_neurons

    def _summary(self, site: str) -> Summary:
        v = self.views[site]
        return Summary(mean=_np(v.mean), std=_np(v.std), min=_np(v.min), max=_np(v.max),
                       frac_active=_np(v.frac_active), count=_np(v.count))

    def histogram(self, site: str, neuron: int) -> Histogram:
        stats = self.views[site].stats
        counts = np.asarray(stats.hist[neuron].cpu().numpy(), dtype=np.int64)  # [n_bins]
        edges = _np(stats.edges)  # [n_bins - 1]
        lo = np.concatenate([[-np.inf], edges])
        hi = np.concatenate([edges, [np.inf]])
        return Histogram(counts, lo, hi, log_bins=True)

    def examples(self, site: str, neuron: int, kind: ExampleKind = "top", n: int = 10) -> list[TokenExample]:
        view = self.views[site]
        if kind == "top":
            found = view.top_examples(neuron, n)
        elif kind == "bottom":
            found = view.bottom_examples(neuron, n)
        elif kind == "quantile":
            found = view.quantile_examples(neuron, n)
        else:
            raise InputError(f"kind must be 'top', 'quantile' or 'bottom', not {kind!r}")
        out = []
        for ex in found:
            values: list[float | None] = [None] * len(ex.context)
            values[ex.index] = ex.value
            out.append(TokenExample(site, neuron, kind, tuple(ex.context), tuple(values), ex.index, ex.value,
                                    ex.doc_id, ex.position))
        return out

    def quantiles(self, site: str, neuron: int, qs: list[float]) -> list[float]:
        """Approximate (the histogram's bin resolution)."""
        return [float(x) for x in self.views[site].stats.quantiles(qs)[neuron].tolist()]

    def describe(self) -> str:
        if not self.meta:
            return "profile of one site"
        return (f"profile of {int(self.meta.get('n_tokens', 0)):,} tokens in {int(self.meta.get('n_docs', 0)):,} "
                f"documents ({self.meta.get('corpus', 'corpus')})")


def as_source(obj: Any) -> Source:
    """Wrap a record or profile; a Source is returned as it is."""
    if isinstance(obj, Source):
        return obj
    if isinstance(obj, ActivationRecord):
        return RecordSource(obj)
    if isinstance(obj, (NeuronProfile, SiteProfile)):
        return ProfileSource(obj)
    raise InputError(f"expected an ActivationRecord, NeuronProfile or SiteProfile, got {type(obj).__name__}")
