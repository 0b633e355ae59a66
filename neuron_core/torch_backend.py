"""The PyTorch backend: where a torch model's neurons live and how they are captured (forward hooks).

Usage::

    backend = TorchBackend(load_model("smollm2-135m"))     # ModelInterface builds one; use it through the interface
    backend.layer_names()                                  # canonical MLP sites
    record = backend.capture(["The cat sat."], backend.resolver.resolve_many(["layer 6"]), torch.device("cpu"),
                             max_length=None, overflow="error", batch_size=8, padding_side="right", stop_early=True)

Its twin for Keras is :class:`neuron_core.keras_backend.KerasBackend`; both implement
:class:`neuron_core.backend.Backend`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from neuron_core.batching import Overflow, TokenStrings, encode_texts, length_sorted_batches, pad_token_id, to_device
from neuron_core.errors import EmptyInputError
from neuron_core.hooks import attach, run_forward, run_forward_positional
from neuron_core.models import LoadedModel
from neuron_core.record import ActivationRecord
from neuron_core.sites import Site, SiteResolver

__all__ = ["TorchBackend"]


class TorchBackend:
    """A PyTorch model behind a :class:`~neuron_core.interface.ModelInterface`: its sites and hook-based capture."""

    framework = "pytorch"

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.tokens = TokenStrings(loaded)

    @property
    def resolver(self) -> SiteResolver:
        return self.loaded.resolver

    def layer_names(self) -> list[str]:
        """Canonical MLP site names, or (for networks without blocks of MLPs) every named submodule."""
        if self.resolver.has_mlp_sites:
            return self.resolver.canonical_names()
        return self.module_names()

    def module_names(self) -> list[str]:
        return [name for name, _ in self.loaded.model.named_modules() if name]

    def capture(self, inputs: str | Sequence[str] | torch.Tensor, sites: list[Site], target: torch.device, *,
                max_length: int | None, overflow: Overflow, batch_size: int, padding_side: Literal["left", "right"],
                stop_early: bool) -> ActivationRecord:
        """Run texts (or a tensor of inputs) through the model, keeping every site's activations on ``target``."""
        if isinstance(inputs, torch.Tensor):
            return self._capture_tensor(inputs, sites, target)
        return self._capture_texts(inputs, sites, target, max_length=max_length, overflow=overflow,
                                   batch_size=batch_size, padding_side=padding_side, stop_early=stop_early)

    def _capture_texts(self, texts: str | Sequence[str], chosen: list[Site], target: torch.device, *,
                       max_length: int | None, overflow: Overflow, batch_size: int,
                       padding_side: Literal["left", "right"], stop_early: bool) -> ActivationRecord:
        loaded = self.loaded
        segments = encode_texts(loaded.tokenizer, texts, context_length=loaded.context_length,
                                overflow=overflow, max_length=max_length)
        text_list = [texts] if isinstance(texts, str) else list(texts)
        parts: dict[str, list[torch.Tensor]] = {s.name: [] for s in chosen}
        token_ids: list[torch.Tensor] = []
        doc_ids: list[torch.Tensor] = []
        positions: list[torch.Tensor] = []
        current: dict[str, torch.Tensor | None] = {"mask": None, "index": None}

        def keep(site: Site, tensor: torch.Tensor) -> None:
            parts[site.name].append(_strip(tensor, current["mask"], target, current["index"]))

        model = loaded.model
        device = loaded.device
        pad = pad_token_id(loaded.tokenizer)
        ran: list[int] = []  # segment of each batch row, in the order the batches ran
        with attach(self.resolver, chosen, keep, stop_early=stop_early):
            # batches of texts of about the same length (little padding); the record comes back in text order
            for batch, rows in length_sorted_batches(segments, batch_size=batch_size, pad_id=pad,
                                                     padding_side=padding_side):
                on_device = batch.to(device)
                current["mask"] = batch.mask
                current["index"] = to_device(batch.mask.flatten().nonzero().flatten(), device)
                run_forward(model, on_device.model_kwargs(model))
                doc, pos = batch.token_doc_pos()
                token_ids.append(batch.input_ids[batch.mask])
                doc_ids.append(doc)
                positions.append(pos)
                ran.extend(rows)
        order = _text_order([len(segments[i].ids) for i in ran], ran)

        def in_text_order(chunks: list[torch.Tensor]) -> torch.Tensor:
            joined = torch.cat(chunks)
            chunks.clear()  # one site's batches are freed before the next site is reordered
            return joined if order is None else joined.index_select(0, order.to(joined.device))

        ids = in_text_order(token_ids)
        return ActivationRecord(
            activations={name: in_text_order(chunks) for name, chunks in parts.items()},
            tokens=self.tokens(ids.tolist()),
            token_ids=ids,
            doc_ids=in_text_order(doc_ids),
            positions=in_text_order(positions),
            texts=text_list,
            model_name=loaded.name,
            truncated=sorted({s.doc_id for s in segments if s.truncated}),
            overflow=overflow,
            _resolver=self.resolver,
        )

    def _capture_tensor(self, inputs: torch.Tensor, chosen: list[Site], target: torch.device) -> ActivationRecord:
        if inputs.numel() == 0:
            raise EmptyInputError("empty input tensor")
        parts: dict[str, list[torch.Tensor]] = {s.name: [] for s in chosen}

        def keep(site: Site, tensor: torch.Tensor) -> None:
            parts[site.name].append(_strip(tensor, None, target))

        with attach(self.resolver, chosen, keep):
            run_forward_positional(self.loaded.model, inputs.to(self.loaded.device))
        acts = {name: torch.cat(chunks) for name, chunks in parts.items()}
        n = next(iter(acts.values())).shape[0]
        if inputs.dtype in (torch.long, torch.int32, torch.int64):
            ids = inputs.reshape(-1)[:n].cpu().long()
            tokens = self.tokens(ids.tolist())
        else:
            ids = torch.full((n,), -1, dtype=torch.long)
            tokens = [f"row{i}" for i in range(n)]
        rows = inputs.shape[0]
        per_row = max(n // rows, 1)
        doc_ids = torch.arange(rows).repeat_interleave(per_row)[:n]
        positions = torch.arange(per_row).repeat(rows)[:n]
        return ActivationRecord(acts, tokens, ids, doc_ids, positions, model_name=self.loaded.name,
                                _resolver=self.resolver)

    @contextmanager
    def trace(self, choose: Callable[[], list[Site]], target: torch.device) -> Iterator[ActivationRecord]:
        """Capture during the caller's own forward passes (see ``ActivationMonitor.trace``); ``choose`` gives the
        sites once the trace starts."""
        chosen = choose()
        record = ActivationRecord({}, [], torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long),
                                  torch.empty(0, dtype=torch.long), model_name=self.loaded.name,
                                  _resolver=self.resolver)
        raw: dict[str, list[torch.Tensor]] = {s.name: [] for s in chosen}
        calls: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []

        def keep(site: Site, tensor: torch.Tensor) -> None:
            raw[site.name].append(tensor)

        def grab_inputs(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
            calls.append((ids, kwargs.get("attention_mask")))

        root = self.loaded.model
        handle = None
        try:
            handle = root.register_forward_pre_hook(grab_inputs, with_kwargs=True)
            with attach(self.resolver, chosen, keep):
                yield record
        finally:
            if handle is not None:
                handle.remove()
        self._fill_from_trace(record, raw, calls, target)

    def _fill_from_trace(self, record: ActivationRecord, raw: dict[str, list[torch.Tensor]],
                         calls: list[tuple[torch.Tensor | None, torch.Tensor | None]], target: torch.device) -> None:
        acts: dict[str, list[torch.Tensor]] = {name: [] for name in raw}
        ids_all: list[torch.Tensor] = []
        docs: list[torch.Tensor] = []
        poss: list[torch.Tensor] = []
        doc_base = 0
        for call_index, (ids, attn) in enumerate(calls):
            mask = attn.bool() if isinstance(attn, torch.Tensor) and attn.dim() == 2 else None
            for name, chunks in raw.items():
                if call_index < len(chunks):
                    acts[name].append(_strip(chunks[call_index], mask, target))
            if isinstance(ids, torch.Tensor) and ids.dim() == 2 and not ids.is_floating_point():
                m = mask if mask is not None else torch.ones_like(ids, dtype=torch.bool)
                ids_all.append(ids[m].cpu())
                docs.append((doc_base + torch.arange(ids.shape[0], device=ids.device))[:, None].expand_as(ids)[m].cpu())
                poss.append((m.long().cumsum(1) - 1)[m].cpu())
                doc_base += ids.shape[0]
        record.activations = {n: torch.cat(c) for n, c in acts.items() if c}
        if ids_all:
            record.token_ids = torch.cat(ids_all)
            record.doc_ids = torch.cat(docs)
            record.positions = torch.cat(poss)
            record.tokens = self.tokens(record.token_ids.tolist())


def _strip(tensor: torch.Tensor, mask: torch.Tensor | None, keep_on: torch.device | None = None,
           index: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T, ...] -> [n_real_tokens, features]; other shapes -> [rows, features]. Float32 on ``keep_on`` (None:
    the host). ``index``: the real tokens' row-major positions, on the tensor's device (no host sync, unlike a
    boolean mask)."""
    if mask is not None and tensor.dim() >= 2 and tuple(tensor.shape[:2]) == tuple(mask.shape):
        if index is not None:
            kept = tensor.reshape(-1, *tensor.shape[2:]).index_select(0, index)
        else:
            kept = tensor[mask.to(tensor.device)]  # [n_real, ...]
    elif tensor.dim() >= 2:
        kept = tensor.reshape(-1, *tensor.shape[2:]) if tensor.dim() > 2 else tensor
    else:
        kept = tensor[:, None]
    return kept.reshape(kept.shape[0], -1).float().to(keep_on or "cpu")


def _text_order(lengths: list[int], segments: list[int]) -> torch.Tensor | None:
    """Rows ran as ``segments`` (indices into the text-ordered segments) with these token counts: the index that
    puts their concatenated tokens back in text order (None if they already are). A stable sort by segment keeps
    each segment's tokens in order."""
    if segments == sorted(segments):
        return None
    return torch.argsort(torch.tensor(segments).repeat_interleave(torch.tensor(lengths)), stable=True)
