"""A few texts' activations, kept whole: what a capture returns.

Usage::

    record = monitor.capture(["The cat sat.", "Le chat dort."])
    record["layer 6"].shape                   # [n_tokens, n_neurons]; padding removed, texts in order
    record.tokens, record.doc_ids, record.positions
    record.site_names                         # the captured site names
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from neuron_core.errors import InputError, UnknownSiteError
from neuron_core.sites import Site, SiteKeyed

if TYPE_CHECKING:
    from neuron_core.backend import Resolver

__all__ = ["ActivationRecord"]


@dataclass
class ActivationRecord(SiteKeyed):
    """Activations of a few texts, kept whole.

    ``record[site]`` is a float tensor [n_tokens, n_neurons] (padding removed, texts concatenated in order); the
    per-token facts are parallel lists/tensors of length n_tokens. ``truncated`` lists documents cut or windowed.
    """

    activations: dict[str, torch.Tensor]
    tokens: list[str]
    token_ids: torch.Tensor
    doc_ids: torch.Tensor
    positions: torch.Tensor
    texts: list[str] = field(default_factory=list)
    model_name: str = ""
    truncated: list[int] = field(default_factory=list)
    overflow: str = "error"
    _resolver: Resolver | None = field(default=None, repr=False)

    @property
    def resolver(self) -> Resolver | None:
        """The resolver of the model the record came from (None for a record built by hand)."""
        return self._resolver

    @property
    def site_names(self) -> list[str]:
        """The captured site names, in capture order."""
        return list(self.activations)

    @property
    def sites(self) -> list[str]:
        """Deprecated alias of :attr:`site_names`."""
        return self.site_names

    def __len__(self) -> int:
        return len(self.tokens)

    def key(self, site: str | int | Site) -> str:
        """The captured site name ``site`` stands for (a shorthand, a Site or the name itself)."""
        if isinstance(site, Site):
            site = site.name
        if isinstance(site, str) and site in self.activations:
            return site
        if self._resolver is not None:
            try:
                name = self._resolver.resolve(site).name
            except UnknownSiteError:
                name = None
            if name in self.activations:
                return name
        raise UnknownSiteError(f"site {site!r} was not captured; captured: {', '.join(self.activations)}")

    def __getitem__(self, site: str | int | Site) -> torch.Tensor:
        return self.activations[self.key(site)]

    @property
    def device(self) -> torch.device:
        """Where the activations live (the host unless captured with ``keep_on``)."""
        return next(iter(self.activations.values())).device if self.activations else torch.device("cpu")

    def to(self, device: torch.device | str) -> ActivationRecord:
        """A record with the activations on ``device`` (the per-token facts stay on the host)."""
        return replace(self, activations={name: acts.to(device) for name, acts in self.activations.items()})

    def neuron(self, site: str | int | Site, index: int) -> torch.Tensor:
        """Activations of one neuron over every token: [n_tokens]."""
        acts = self[site]
        if not 0 <= index < acts.shape[1]:
            raise InputError(f"neuron {index} out of range: site has {acts.shape[1]} neurons")
        return acts[:, index]

    def doc_slice(self, doc_id: int) -> slice:
        idx = (self.doc_ids == doc_id).nonzero().flatten()
        if idx.numel() == 0:
            raise InputError(f"no document {doc_id} in this record")
        return slice(int(idx[0]), int(idx[-1]) + 1)
