"""Hook-based capture of activations.

Usage::

    monitor = ActivationMonitor(ModelInterface.from_pretrained("smollm2-135m"))
    monitor.register_layers(["mlp.3", "layer 6"])
    record = monitor.capture(["The cat sat.", "Le chat dort."])
    record["blocks.6.mlp.hook_post"].shape      # [n_tokens, 1536]; padding removed, texts in order
    record.tokens, record.doc_ids, record.positions

    with monitor.trace() as record:              # your own forward
        model(**batch)

Records live on the host by default. ``capture(..., keep_on="device")`` / ``trace(keep_on="device")`` keep them on
the model's device (a GPU capture then never crosses to the host; ``record.to("cpu")`` moves it later).

Hooks are registered inside a ``try`` and removed in ``finally`` (success, exception, KeyboardInterrupt); hooks the
user registered are never touched. :func:`attach` is the hook primitive the streaming profiler shares: it knows
nothing about statistics, only hands each site's tensor to a callback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from neuron_core.batching import Overflow, encode_texts, length_sorted_batches, pad_token_id, to_device
from neuron_core.errors import EmptyInputError, InputError, UnknownSiteError
from neuron_core.sites import Site, SiteResolver

if TYPE_CHECKING:
    from neuron_core.interface import ModelInterface

__all__ = ["ActivationRecord", "ActivationMonitor", "attach", "run_forward", "StopForward"]

SiteCallback = Callable[[Site, torch.Tensor], None]


class StopForward(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by the early-stop hook after the last needed block; caught by :func:`run_forward`."""


def _first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            if isinstance(item, torch.Tensor):
                return item
    if hasattr(value, "last_hidden_state"):
        return value.last_hidden_state  # type: ignore[no-any-return]
    raise TypeError(f"cannot read a tensor from a {type(value).__name__}")


@contextmanager
def attach(resolver: SiteResolver, sites: Sequence[Site], callback: SiteCallback, *,
           stop_early: bool = False) -> Iterator[int | None]:
    """Register one hook per site, each calling ``callback(site, tensor)``; always remove them on exit.

    With ``stop_early`` and every site inside a block, a hook on the last needed block raises :class:`StopForward`
    so later blocks and the LM head never run; yields the stopping block's index (or None).
    """
    handles: list[torch.utils.hooks.RemovableHandle] = []
    stop_block: int | None = None
    try:
        for site in sites:
            module = resolver.module(site)
            if site.read == "input":
                def pre_hook(_m: nn.Module, args: tuple[Any, ...], _site: Site = site) -> None:
                    callback(_site, _first_tensor(args).detach())

                handles.append(module.register_forward_pre_hook(pre_hook))
            else:
                def post_hook(_m: nn.Module, _args: Any, output: Any, _site: Site = site) -> None:
                    callback(_site, _first_tensor(output).detach())

                handles.append(module.register_forward_hook(post_hook))
        if stop_early and resolver.blocks_path is not None:
            orders = [resolver.block_order(s) for s in sites]
            if orders and all(o is not None for o in orders):
                stop_block = max(o for o in orders if o is not None)
                # Even for the last block this skips the final norm and the LM head.
                block = resolver.model.get_submodule(f"{resolver.blocks_path}.{stop_block}")

                def stop_hook(_m: nn.Module, _args: Any, _output: Any) -> None:
                    raise StopForward

                handles.append(block.register_forward_hook(stop_hook))
        yield stop_block
    finally:
        for handle in handles:
            handle.remove()


def run_forward(model: nn.Module, kwargs: dict[str, Any]) -> Any:
    """Call the model under inference mode; an early stop is a normal end (returns None)."""
    with torch.inference_mode():
        try:
            return model(**kwargs)
        except StopForward:
            return None


@dataclass
class ActivationRecord:
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
    _resolver: SiteResolver | None = field(default=None, repr=False)

    @property
    def resolver(self) -> SiteResolver | None:
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

    def __contains__(self, site: object) -> bool:
        try:
            self.key(site)  # type: ignore[arg-type]
        except UnknownSiteError:
            return False
        return True

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


def _keep_on(keep_on: str | torch.device, model_device: torch.device) -> torch.device:
    """Where a capture keeps its activations: "cpu" (the host), "device" (the model's device) or a device."""
    if keep_on == "device":
        return model_device
    try:
        return torch.device(keep_on)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"keep_on must be 'cpu', 'device' or a torch device, not {keep_on!r}") from err


class ActivationMonitor:
    """Captures activations of registered sites. See the module docstring."""

    def __init__(self, interface: ModelInterface | Any, layers: Sequence[str | int] | None = None) -> None:
        from neuron_core.interface import ModelInterface

        self.interface = interface if isinstance(interface, ModelInterface) else ModelInterface(interface)
        self._sites: list[Site] = []
        if layers is not None:
            self.register_layers(layers)

    @property
    def resolver(self) -> SiteResolver:
        return self.interface.resolver

    @property
    def sites(self) -> list[Site]:
        return list(self._sites)

    def register_layers(self, layers: Sequence[str | int | Site] | str | int) -> list[Site]:
        """Resolve and remember sites; every name is checked before anything is registered."""
        resolved = self.resolver.resolve_many(layers)  # type: ignore[arg-type]
        for site in resolved:
            if site not in self._sites:
                self._sites.append(site)
        return resolved

    def clear(self) -> None:
        self._sites.clear()

    def _active_sites(self, sites: Sequence[str | int | Site] | None) -> list[Site]:
        if sites is not None:
            return self.resolver.resolve_many(sites)  # type: ignore[arg-type]
        if self._sites:
            return list(self._sites)
        if self.resolver.has_mlp_sites:
            return [self.resolver.mlp_site(i) for i in range(self.resolver.n_layers)]
        raise InputError("no layers registered; call register_layers([...]) first")

    def capture(self, texts: str | Sequence[str] | torch.Tensor, *, max_length: int | None = None,
                overflow: Overflow = "error", batch_size: int = 8,
                padding_side: Literal["left", "right"] = "right",
                sites: Sequence[str | int | Site] | None = None, stop_early: bool = True,
                keep_on: str | torch.device = "cpu") -> ActivationRecord:
        """Run texts (or a tensor of inputs) through the model and keep every registered site's activations.

        ``keep_on``: where the activations are kept: "cpu" (default), "device" (the model's device: a GPU capture
        never crosses to the host) or any torch device."""
        chosen = self._active_sites(sites)
        target = _keep_on(keep_on, self.interface.device)
        if self.interface.framework == "tensorflow":  # keras backend
            from neuron_core.keras_backend import capture_keras

            return capture_keras(self.interface, texts, chosen, batch_size=batch_size, max_length=max_length,
                                 overflow=overflow, padding_side=padding_side)
        if isinstance(texts, torch.Tensor):
            return self._capture_tensor(texts, chosen, target)
        return self._capture_texts(texts, chosen, target, max_length=max_length, overflow=overflow,
                                   batch_size=batch_size, padding_side=padding_side, stop_early=stop_early)

    def _capture_texts(self, texts: str | Sequence[str], chosen: list[Site], target: torch.device, *,
                       max_length: int | None, overflow: Overflow, batch_size: int,
                       padding_side: Literal["left", "right"], stop_early: bool) -> ActivationRecord:
        interface = self.interface
        segments = encode_texts(interface.tokenizer, texts, context_length=interface.context_length,
                                overflow=overflow, max_length=max_length)
        text_list = [texts] if isinstance(texts, str) else list(texts)
        parts: dict[str, list[torch.Tensor]] = {s.name: [] for s in chosen}
        token_ids: list[torch.Tensor] = []
        doc_ids: list[torch.Tensor] = []
        positions: list[torch.Tensor] = []
        current: dict[str, torch.Tensor | None] = {"mask": None, "index": None}

        def keep(site: Site, tensor: torch.Tensor) -> None:
            parts[site.name].append(_strip(tensor, current["mask"], target, current["index"]))

        model = interface.module
        device = interface.device
        pad = pad_token_id(interface.tokenizer)
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
            tokens=interface.token_strings(ids.tolist()),
            token_ids=ids,
            doc_ids=in_text_order(doc_ids),
            positions=in_text_order(positions),
            texts=text_list,
            model_name=interface.name,
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
            run_forward_positional(self.interface.module, inputs.to(self.interface.device))
        acts = {name: torch.cat(chunks) for name, chunks in parts.items()}
        n = next(iter(acts.values())).shape[0]
        if inputs.dtype in (torch.long, torch.int32, torch.int64):
            ids = inputs.reshape(-1)[:n].cpu().long()
            tokens = self.interface.token_strings(ids.tolist())
        else:
            ids = torch.full((n,), -1, dtype=torch.long)
            tokens = [f"row{i}" for i in range(n)]
        rows = inputs.shape[0]
        per_row = max(n // rows, 1)
        doc_ids = torch.arange(rows).repeat_interleave(per_row)[:n]
        positions = torch.arange(per_row).repeat(rows)[:n]
        return ActivationRecord(acts, tokens, ids, doc_ids, positions, model_name=self.interface.name,
                                _resolver=self.resolver)

    @contextmanager
    def trace(self, sites: Sequence[str | int | Site] | None = None,
              keep_on: str | torch.device = "cpu") -> Iterator[ActivationRecord]:
        """Capture during your own forward passes: ``with monitor.trace() as record: model(**batch)``.

        The record is filled when the block exits. Padding is removed when the forward received an
        ``attention_mask``; token strings come from ``input_ids`` when the forward received them. ``keep_on`` as
        in :meth:`capture`.
        """
        target = _keep_on(keep_on, self.interface.device)
        if self.interface.framework == "tensorflow":  # keras backend
            raise InputError("trace() reads PyTorch hooks and is not available for Keras models; "
                             "use monitor.capture(inputs) instead")
        chosen = self._active_sites(sites)
        record = ActivationRecord({}, [], torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long),
                                  torch.empty(0, dtype=torch.long), model_name=self.interface.name,
                                  _resolver=self.resolver)
        raw: dict[str, list[torch.Tensor]] = {s.name: [] for s in chosen}
        calls: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []

        def keep(site: Site, tensor: torch.Tensor) -> None:
            raw[site.name].append(tensor)

        def grab_inputs(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
            calls.append((ids, kwargs.get("attention_mask")))

        root = self.interface.module
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
            record.tokens = self.interface.token_strings(record.token_ids.tolist())


def run_forward_positional(model: nn.Module, inputs: torch.Tensor) -> Any:
    with torch.inference_mode():
        try:
            return model(inputs)
        except StopForward:
            return None
