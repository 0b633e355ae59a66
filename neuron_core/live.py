"""Live monitoring: neuron activations while a model generates, and window statistics during your own loops.

Usage::

    live = LiveMonitor(ModelInterface.from_pretrained("smollm2-135m"), neurons=["L6/N12", (6, 99)], top_k=5)
    for step in live.stream_generate("The capital of France is", max_new_tokens=20):
        step.token, step.neurons["L6/N12"], step.top["blocks.6.mlp.hook_post"].indices

    with StatsCallback(interface, ["layer 6"], every=50, reference=prof, fn=print) as cb:
        for batch in loader:                 # your training or evaluation loop
            model(**batch)                   # every 50 forward calls: fn(StatsSummary)

Steps of :meth:`LiveMonitor.stream_generate`: step 0 (``is_prompt=True``) is the prompt's *last* token, read from the
first forward call (which sees the whole prompt); step k >= 1 is the k-th generated token, read at its own position.
``model.generate`` (with its KV cache) never feeds the final token through the model, so one extra single-token forward
on the same cache reads it. Generation runs in a worker thread so that the stream is an ordinary generator; a bounded
queue between the two keeps memory constant in the number of tokens. Nothing is kept per step unless ``history=n``
asks for a ring buffer of the last n steps. Hooks are registered inside a ``try`` and removed in ``finally``: after
the last token, an exception in a callback, KeyboardInterrupt, or the generator being closed early.
"""

from __future__ import annotations

import inspect
import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from neuron_core.capture import ActivationMonitor, attach
from neuron_core.errors import EmptyInputError, InputError, ProfileMismatchError, UnknownSiteError
from neuron_core.interface import ModelInterface
from neuron_core.sites import NeuronRef, Site

if TYPE_CHECKING:
    from rich.console import Console

    from neuron_core.profile import NeuronProfile

__all__ = ["LiveMonitor", "StepActivations", "TopNeurons", "WatchedNeuron", "StatsCallback", "StatsSummary",
           "SiteSummary", "DriftingNeuron", "WindowStats"]

NeuronSpec = str | tuple[int, int]  # 'L6/N12' (see NeuronRef.parse) or (layer, index)
_CACHE_KWARGS = ("cache", "past_key_values")


def _as_interface(model: ModelInterface | ActivationMonitor | Any) -> ModelInterface:
    if isinstance(model, ActivationMonitor):
        return model.interface
    return model if isinstance(model, ModelInterface) else ModelInterface(model)


def _choose_sites(interface: ModelInterface, sites: Sequence[str | int | Site] | str | int | None) -> list[Site]:
    resolver = interface.resolver
    if sites is not None:
        return resolver.resolve_many(sites)  # type: ignore[arg-type]
    if not resolver.has_mlp_sites:
        raise InputError("this model has no canonical MLP sites; name the modules to watch with sites=[...]")
    return [resolver.mlp_site(i) for i in range(resolver.n_layers)]


# ------------------------------------------------------------------------------------------------ streaming
@dataclass(frozen=True)
class WatchedNeuron:
    """One neuron to follow: ``label`` is how people write it (``L6/N12``)."""

    label: str
    site: Site
    index: int


@dataclass(frozen=True)
class TopNeurons:
    """The most active neurons of one site at one step, highest first."""

    indices: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class StepActivations:
    """What the watched sites did at one token.

    step: 0 for the prompt's last token (``is_prompt``), k >= 1 for the k-th generated token.
    position: index of the token in the whole sequence (prompt + generated).
    neurons: activation of each watched neuron at this token, keyed by label (``L6/N12``).
    top: per site name, the ``top_k`` most active neurons at this token.
    """

    step: int
    position: int
    token_id: int
    token: str
    is_prompt: bool
    neurons: Mapping[str, float]
    top: Mapping[str, TopNeurons]


@dataclass
class _Forward:
    """One forward call's reading of its last position (built in the worker thread)."""

    position: int
    token_id: int
    sites: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]  # name -> (top values, top idx, watched)


@dataclass
class _Finished:
    sequence: torch.Tensor  # [1, L]


class _Cancelled(Exception):  # noqa: N818 - a control-flow signal inside the worker thread
    pass


class _Run:
    """State shared by the consumer and the worker thread of one ``stream_generate`` call."""

    def __init__(self, queue_size: int) -> None:
        self.items: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.cancelled = threading.Event()
        self.thread_id: int | None = None
        self.partial: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        self.call_kwargs: dict[str, Any] = {}
        self.call_position = -1
        self.call_token = -1
        self.last_position = -1

    def put(self, item: Any) -> None:
        """Blocks while the consumer is behind (bounded memory); gives up once the consumer has gone."""
        while True:
            if self.cancelled.is_set():
                raise _Cancelled
            try:
                self.items.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def get(self, worker: threading.Thread) -> Any:
        while True:
            try:
                return self.items.get(timeout=0.1)  # a timeout keeps the wait responsive to Ctrl-C
            except queue.Empty:
                if not worker.is_alive() and self.items.empty():
                    raise RuntimeError("the generation thread ended without a result") from None


class LiveMonitor:
    """Streams the activations of watched neurons and sites, token by token, while a model generates.

    ``sites`` get a top-k readout at every step (default: the watched neurons' layers, or every MLP site when no
    neuron is watched); ``neurons`` are references like ``"L6/N12"`` or ``(6, 12)``. See the module docstring.
    """

    def __init__(self, interface: ModelInterface | ActivationMonitor | Any,
                 sites: Sequence[str | int | Site] | str | int | None = None,
                 neurons: Sequence[NeuronSpec] | None = None, *, top_k: int = 5, history: int = 0,
                 queue_size: int = 8) -> None:
        if top_k < 0 or history < 0 or queue_size < 1:
            raise InputError("top_k and history must be >= 0 and queue_size >= 1")
        self.interface = _as_interface(interface)
        self.neurons = [self._watch(ref) for ref in (neurons or [])]
        if sites is None and isinstance(interface, ActivationMonitor) and interface.sites:
            sites = interface.sites
        if sites is None and self.neurons:
            chosen = []
            for n in self.neurons:
                if n.site not in chosen:
                    chosen.append(n.site)
        else:
            chosen = _choose_sites(self.interface, sites)
            chosen += [n.site for n in self.neurons if n.site not in chosen]
        self.sites: list[Site] = chosen
        self.top_k = top_k
        self.queue_size = queue_size
        self.history: deque[StepActivations] | None = deque(maxlen=history) if history else None
        self.last_sequence: torch.Tensor | None = None  # [1, L] token ids of the latest finished generation
        self._watch_index = {s.name: torch.tensor([n.index for n in self.neurons if n.site == s], dtype=torch.long)
                             for s in self.sites}

    def _watch(self, ref: NeuronSpec) -> WatchedNeuron:
        if isinstance(ref, str):
            layer, index = NeuronRef.parse(ref).pair
        elif (isinstance(ref, tuple) and len(ref) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                 for v in ref)):
            layer, index = ref
        else:
            raise UnknownSiteError(f"cannot read neuron reference {ref!r}; write it as 'L6/N12' or (6, 12)")
        site = self.interface.resolver.mlp_site(layer)
        width = self.interface.resolver.d_mlp()
        if index < 0 or (width is not None and index >= width):
            raise UnknownSiteError(f"neuron {index} is out of range for layer {site.layer}: it has {width} neurons "
                                   f"(0-{(width or 1) - 1})")
        return WatchedNeuron(str(NeuronRef.at(site, index)), site, index)

    # -- public -------------------------------------------------------------------------------------------------
    def stream_generate(self, prompt: str | torch.Tensor | Sequence[int], *, max_new_tokens: int = 20,
                        do_sample: bool = False, on_step: Callable[[StepActivations], Any]
                        | Sequence[Callable[[StepActivations], Any]] | None = None, include_prompt: bool = True,
                        **generate_kwargs: Any) -> Generator[StepActivations, None, None]:
        """Generate from ``prompt`` and yield a :class:`StepActivations` per token (see the module docstring).

        Input is checked now; hooks exist only while the returned generator runs. ``on_step`` callbacks are called
        with each step before it is yielded; an exception in one stops generation and removes the hooks.
        """
        module = self.interface.module
        if not hasattr(module, "generate"):
            raise InputError(f"{type(module).__name__} cannot generate; stream_generate needs a causal LM")
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        for key in ("num_beams", "num_return_sequences"):
            if int(generate_kwargs.get(key, 1) or 1) != 1:
                raise InputError(f"{key}={generate_kwargs[key]} is not supported: the stream follows one sequence")
        for key in ("input_ids", "inputs", "inputs_embeds", "attention_mask"):
            if key in generate_kwargs:
                raise InputError(f"pass the prompt as the first argument, not as {key}=")
        ids = self._encode(prompt).to(self.interface.device)  # [1, P]
        callbacks = [] if on_step is None else [on_step] if callable(on_step) else list(on_step)
        kwargs = dict(generate_kwargs, max_new_tokens=max_new_tokens, do_sample=do_sample)
        tok = self.interface.tokenizer
        config = getattr(module, "generation_config", None)
        if "pad_token_id" not in kwargs and getattr(config, "pad_token_id", None) is None and tok is not None:
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            if pad is not None:
                kwargs["pad_token_id"] = pad
        return self._stream(ids, kwargs, callbacks, include_prompt)

    # -- internals ------------------------------------------------------------------------------------------------
    def _encode(self, prompt: str | torch.Tensor | Sequence[int]) -> torch.Tensor:
        if isinstance(prompt, str):
            if not prompt:
                raise EmptyInputError("empty prompt")
            if self.interface.tokenizer is None:
                raise InputError("this model has no tokenizer; pass token ids instead of text")
            ids = torch.tensor([list(self.interface.tokenizer(prompt, add_special_tokens=True)["input_ids"])])
        else:
            ids = torch.as_tensor(prompt)
            if ids.dim() == 1:
                ids = ids[None]  # [1, P]
        if ids.dim() != 2 or ids.shape[0] != 1 or ids.is_floating_point():
            raise InputError(f"the prompt must be text or integer ids [P] or [1, P], got shape {tuple(ids.shape)}")
        if ids.shape[1] == 0:
            raise EmptyInputError("the prompt has no tokens")
        return ids.long()

    def _stream(self, ids: torch.Tensor, kwargs: dict[str, Any], callbacks: list[Callable[[StepActivations], Any]],
                include_prompt: bool) -> Generator[StepActivations, None, None]:
        run = _Run(self.queue_size)
        prompt_last = ids.shape[1] - 1
        worker = threading.Thread(target=self._work, args=(run, ids, kwargs), name="neuron-live-generate",
                                  daemon=True)
        self.last_sequence = None
        with self._hooks(run):
            try:
                worker.start()
                while True:
                    item = run.get(worker)
                    if isinstance(item, _Finished):
                        self.last_sequence = item.sequence
                        return
                    if isinstance(item, BaseException):
                        raise item
                    if item.position < prompt_last or (item.position == prompt_last and not include_prompt):
                        continue
                    step = self._to_step(item, prompt_last)
                    if self.history is not None:
                        self.history.append(step)
                    for callback in callbacks:
                        callback(step)
                    yield step
            finally:
                run.cancelled.set()
                if worker.is_alive():
                    worker.join()

    def _to_step(self, item: _Forward, prompt_last: int) -> StepActivations:
        neurons: dict[str, float] = {}
        top: dict[str, TopNeurons] = {}
        for site in self.sites:
            values, indices, watched = item.sites[site.name]
            top[site.name] = TopNeurons(tuple(indices.tolist()), tuple(values.tolist()))
            if watched is not None:
                labels = [n.label for n in self.neurons if n.site == site]
                neurons.update(zip(labels, watched.tolist(), strict=True))
        ordered = {n.label: neurons[n.label] for n in self.neurons}
        token = self.interface.token_strings([item.token_id])[0]
        return StepActivations(item.position - prompt_last, item.position, item.token_id, token,
                               item.position == prompt_last, ordered, top)

    @contextmanager
    def _hooks(self, run: _Run) -> Iterator[None]:
        """Site hooks (via :func:`attach`) plus two hooks on the root module that frame each forward call."""
        root = self.interface.module
        sites = self.sites

        def mine() -> bool:
            return threading.get_ident() == run.thread_id  # forwards of other threads (e.g. a callback) are not ours

        def on_site(site: Site, tensor: torch.Tensor) -> None:
            if not mine():
                return
            if tensor.dim() != 3 or tensor.shape[0] != 1:
                raise InputError(f"site {site.name} gave a tensor of shape {tuple(tensor.shape)}; expected [1, T, N]")
            last = tensor[0, -1].float()  # [N]
            values, indices = torch.topk(last, min(self.top_k, last.numel()))  # [k], [k]
            index = self._watch_index[site.name]
            watched = last[index.to(last.device)].cpu() if index.numel() else None  # [n_watched]
            run.partial[site.name] = (values.cpu(), indices.cpu(), watched)

        def before(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if not mine():
                return
            if run.cancelled.is_set():
                raise _Cancelled
            ids = kwargs.get("input_ids", args[0] if args else None)
            if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
                raise InputError("the model was called without input_ids [B, T]; cannot follow the tokens")
            cache = next((kwargs[k] for k in _CACHE_KWARGS if kwargs.get(k) is not None), None)
            past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
            run.partial = {}
            run.call_kwargs = kwargs
            run.call_position = past + ids.shape[1] - 1  # position of the call's last token in the sequence
            run.call_token = int(ids[0, -1])

        def after(_m: nn.Module, _args: tuple[Any, ...], _kwargs: dict[str, Any], _out: Any) -> None:
            if not mine():
                return
            missing = [s.name for s in sites if s.name not in run.partial]
            if missing:
                raise InputError(f"sites {missing} produced no activations in a forward call")
            run.last_position = run.call_position
            run.put(_Forward(run.call_position, run.call_token, run.partial))

        handles: list[torch.utils.hooks.RemovableHandle] = []
        try:
            handles.append(root.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(root.register_forward_hook(after, with_kwargs=True))
            with attach(self.interface.resolver, sites, on_site):
                yield
        finally:
            for handle in handles:
                handle.remove()

    def _work(self, run: _Run, ids: torch.Tensor, kwargs: dict[str, Any]) -> None:
        """Worker thread: ``generate``, then one closing forward for the final token; results go to the queue."""
        run.thread_id = threading.get_ident()
        model = self.interface.module
        try:
            kwargs = dict(kwargs)
            kwargs["stopping_criteria"] = _with_cancel(kwargs.get("stopping_criteria"), run)
            with torch.no_grad():
                out = cast(Any, model).generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
                sequence = out if isinstance(out, torch.Tensor) else out.sequences  # [1, L]
                if run.last_position < sequence.shape[1] - 1:
                    model(**_closing_kwargs(run.call_kwargs, sequence))
            run.put(_Finished(sequence.detach().cpu()))
        except _Cancelled:
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            try:
                run.put(exc)
            except _Cancelled:
                return


def _closing_kwargs(last: dict[str, Any], sequence: torch.Tensor) -> dict[str, Any]:
    """Arguments of one more forward that feeds the final token through the cache of the last call."""
    cache_key = next((k for k in _CACHE_KWARGS if last.get(k) is not None), None)
    if cache_key is None:  # generation without a cache: read the last position of the whole sequence
        return {"input_ids": sequence, "attention_mask": torch.ones_like(sequence)}
    kwargs = dict(last)
    kwargs["input_ids"] = sequence[:, -1:]  # [1, 1]
    for key in ("position_ids", "cache_position"):
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor) and value.numel():
            kwargs[key] = value[..., -1:] + 1
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        kwargs["attention_mask"] = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)  # [1, S + 1]
    return kwargs


def _with_cancel(criteria: Any, run: _Run) -> Any:
    """The user's stopping criteria plus one that ends generation once the consumer has gone."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _CancelCriteria(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), run.cancelled.is_set(), dtype=torch.bool,
                              device=input_ids.device)

    merged = StoppingCriteriaList(list(criteria or []))
    merged.append(_CancelCriteria())
    return merged


# ------------------------------------------------------------------------------------------- window statistics
@dataclass(frozen=True)
class DriftingNeuron:
    """A neuron whose window mean moved away from the reference: ``z = |mean - ref_mean| / ref_std``."""

    neuron: int
    z: float
    mean: float
    reference_mean: float


@dataclass(frozen=True)
class SiteSummary:
    """One site over one window of forward calls (padding excluded when the forward had an attention mask).

    sparsity: fraction of (token, neuron) entries at or below the activity threshold; ``frac_active = 1 - sparsity``.
    n_dead: neurons never active in this window; n_dead_so_far: never active since the callback started.
    drift: mean over neurons of ``|window mean - reference mean| / max(reference std, min_std)`` (None without a
    reference); top_drifting: the neurons with the largest such z, largest first.
    """

    site: str
    n_tokens: int
    n_neurons: int
    mean: float
    max: float
    sparsity: float
    frac_active: float
    n_dead: int
    n_dead_so_far: int
    drift: float | None = None
    top_drifting: tuple[DriftingNeuron, ...] = ()


@dataclass(frozen=True)
class StatsSummary:
    """Summaries of every site after ``step`` forward calls; ``n_calls`` of them fell in this window."""

    step: int
    n_calls: int
    sites: Mapping[str, SiteSummary]
    partial: bool = False  # the last, shorter window, flushed when the ``with`` block ended

    def __getitem__(self, site: str) -> SiteSummary:
        return self.sites[site]


class WindowStats:
    """Per-neuron sums of one site over a window (float64), plus which neurons were ever active. Knows no hooks.

    ``add(acts)`` with acts [n_tokens, n_neurons]; ``summary(...)`` reads the window; ``reset()`` starts a new one
    (the ever-active record is kept). Memory is O(n_neurons), whatever the window length.
    """

    def __init__(self, active_threshold: float = 0.0) -> None:
        self.active_threshold = active_threshold
        self.count = 0
        self.sum: torch.Tensor | None = None  # [N] float64
        self.max: torch.Tensor | None = None  # [N] float64
        self.n_active: torch.Tensor | None = None  # [N] int64
        self.ever_active: torch.Tensor | None = None  # [N] bool

    def add(self, acts: torch.Tensor) -> None:
        if acts.dim() != 2:
            raise InputError(f"expected activations [n_tokens, n_neurons], got {tuple(acts.shape)}")
        if self.sum is None or self.max is None or self.n_active is None or self.ever_active is None:
            n, dev = acts.shape[1], acts.device
            self.sum = torch.zeros(n, dtype=torch.float64, device=dev)
            self.max = torch.full((n,), -torch.inf, dtype=torch.float64, device=dev)
            self.n_active = torch.zeros(n, dtype=torch.long, device=dev)
            self.ever_active = torch.zeros(n, dtype=torch.bool, device=dev)
        elif acts.shape[1] != self.sum.shape[0]:
            raise ProfileMismatchError(f"site width changed from {self.sum.shape[0]} to {acts.shape[1]}")
        if acts.shape[0] == 0:
            return
        x = acts.double()  # [n, N]
        active = acts > self.active_threshold  # [n, N]
        self.count += acts.shape[0]
        self.sum += x.sum(0)
        self.max = torch.maximum(self.max, x.amax(0))
        self.n_active += active.sum(0)
        self.ever_active |= active.any(0)

    def reset(self) -> None:
        self.count = 0
        for t in (self.sum, self.n_active):
            if t is not None:
                t.zero_()
        if self.max is not None:
            self.max.fill_(-torch.inf)

    def summary(self, site: str, reference: tuple[torch.Tensor, torch.Tensor] | None = None, *, n_top: int = 5,
                min_std: float = 1e-6) -> SiteSummary:
        """Read the window; ``reference`` is (per-neuron mean, per-neuron std) to measure drift against."""
        if self.sum is None or self.max is None or self.n_active is None or self.ever_active is None:
            return SiteSummary(site, 0, 0, float("nan"), float("nan"), float("nan"), float("nan"), 0, 0)
        n_neurons = self.sum.shape[0]
        entries = max(self.count * n_neurons, 1)
        frac_active = float(self.n_active.sum()) / entries if self.count else float("nan")
        means = self.sum / max(self.count, 1)  # [N]
        drift: float | None = None
        top: tuple[DriftingNeuron, ...] = ()
        if reference is not None:
            ref_mean, ref_std = (t.to(means.device, torch.float64) for t in reference)
            if ref_mean.shape != means.shape:
                raise ProfileMismatchError(f"reference for {site} has {ref_mean.numel()} neurons, the site {n_neurons}")
            z = (means - ref_mean).abs() / ref_std.nan_to_num(0.0).clamp(min=min_std)  # [N]
            drift = float(z.mean()) if self.count else float("nan")
            if self.count and n_top:
                zs, idx = torch.topk(z, min(n_top, n_neurons))
                top = tuple(DriftingNeuron(int(i), float(v), float(means[i]), float(ref_mean[i]))
                            for v, i in zip(zs.tolist(), idx.tolist(), strict=True))
        return SiteSummary(
            site=site, n_tokens=self.count, n_neurons=n_neurons,
            mean=float(self.sum.sum()) / entries if self.count else float("nan"),
            max=float(self.max.max()) if self.count else float("nan"),
            sparsity=1.0 - frac_active, frac_active=frac_active,
            n_dead=int((self.n_active == 0).sum()), n_dead_so_far=int((~self.ever_active).sum()),
            drift=drift, top_drifting=top,
        )


def _rows(tensor: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[B, T, N] -> [n_real_tokens, N], using the last T columns of a [B, S] attention mask (S >= T with a cache)."""
    if tensor.dim() == 3 and mask is not None and mask.dim() == 2 and mask.shape[0] == tensor.shape[0]:
        if mask.shape[1] < tensor.shape[1]:
            raise InputError(f"attention_mask {tuple(mask.shape)} is shorter than the activations "
                             f"{tuple(tensor.shape[:2])}")
        keep = mask[:, -tensor.shape[1]:].bool().to(tensor.device)  # [B, T]
        return tensor[keep]  # [n_real, N]
    return tensor.reshape(-1, tensor.shape[-1]) if tensor.dim() >= 2 else tensor[:, None]


class StatsCallback:
    """Window statistics of some sites during your own forward calls; see the module docstring.

    Every ``every`` forward calls of the model, ``fn`` receives a :class:`StatsSummary` (without ``fn``, a rich table
    is printed to ``console``) and the window restarts. ``reference`` (a NeuronProfile covering the sites) adds drift.
    Only activations inside a call of the root module count, so recomputation during backward (gradient
    checkpointing) is not counted twice. Activations from a forward that raised are kept in the window.
    """

    def __init__(self, interface: ModelInterface | ActivationMonitor | Any,
                 sites: Sequence[str | int | Site] | str | int | None = None, *, every: int = 100,
                 reference: NeuronProfile | None = None, fn: Callable[[StatsSummary], Any] | None = None,
                 active_threshold: float = 0.0, n_top_drift: int = 5, min_std: float = 1e-6,
                 console: Console | None = None, flush_on_exit: bool = True) -> None:
        if every < 1:
            raise InputError(f"every must be >= 1, got {every}")
        self.interface = _as_interface(interface)
        self.sites = _choose_sites(self.interface, sites)
        if reference is not None:
            missing = [s.name for s in self.sites if s.name not in reference]
            if missing:
                raise ProfileMismatchError(f"the reference profile lacks {missing}; it covers {reference.site_names}")
        self.every, self.reference, self.fn = every, reference, fn
        self.n_top_drift, self.min_std, self.console, self.flush_on_exit = n_top_drift, min_std, console, flush_on_exit
        self.windows = {s.name: WindowStats(active_threshold) for s in self.sites}
        self.calls = 0
        self.window_calls = 0
        self.last: StatsSummary | None = None
        self._mask: torch.Tensor | None = None
        self._inside = False
        self._stack: ExitStack | None = None
        params = [p for p in _forward_params(type(self.interface.module)) if p != "self"]
        self._mask_index = params.index("attention_mask") if "attention_mask" in params else None

    def __enter__(self) -> StatsCallback:
        if self._stack is not None:
            raise InputError("this StatsCallback is already active")
        stack = ExitStack()
        try:
            root = self.interface.module
            stack.callback(root.register_forward_pre_hook(self._before, with_kwargs=True).remove)
            stack.callback(root.register_forward_hook(self._after, with_kwargs=True).remove)
            stack.enter_context(attach(self.interface.resolver, self.sites, self._on_site))
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
        self._inside = False
        if exc_type is None and self.flush_on_exit and self.window_calls:
            self.flush(partial=True)

    def _before(self, _m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and self._mask_index is not None and len(args) > self._mask_index:
            mask = args[self._mask_index]
        self._mask = mask if isinstance(mask, torch.Tensor) else None
        self._inside = True

    def _on_site(self, site: Site, tensor: torch.Tensor) -> None:
        if self._inside:
            self.windows[site.name].add(_rows(tensor, self._mask))

    def _after(self, _m: nn.Module, _args: tuple[Any, ...], _kwargs: dict[str, Any], _out: Any) -> None:
        self._inside = False
        self._mask = None
        self.calls += 1
        self.window_calls += 1
        if self.window_calls >= self.every:
            self.flush()

    def flush(self, partial: bool = False) -> StatsSummary:
        """Summarise the current window, hand it to ``fn`` (or print it), and start a new window."""
        sites: dict[str, SiteSummary] = {}
        for site in self.sites:
            ref = None
            if self.reference is not None:
                view = self.reference[site.name]
                ref = (view.mean, view.std)
            sites[site.name] = self.windows[site.name].summary(site.name, ref, n_top=self.n_top_drift,
                                                               min_std=self.min_std)
        summary = StatsSummary(self.calls, self.window_calls, sites, partial)
        for window in self.windows.values():
            window.reset()
        self.window_calls = 0
        self.last = summary
        if self.fn is not None:
            self.fn(summary)
        else:
            self._print(summary)
        return summary

    def _print(self, summary: StatsSummary) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"neuron stats after {summary.step} forward calls ({summary.n_calls} in window)")
        for column in ("site", "tokens", "mean", "sparsity", "dead (window)", "dead (so far)", "drift", "top drift"):
            table.add_column(column, justify="left" if column in ("site", "top drift") else "right")
        for s in summary.sites.values():
            drift = "-" if s.drift is None else f"{s.drift:.3f}"
            top = ", ".join(f"N{d.neuron} ({d.z:.1f})" for d in s.top_drifting[:3]) or "-"
            table.add_row(s.site, str(s.n_tokens), f"{s.mean:+.4f}", f"{s.sparsity:.3f}", str(s.n_dead),
                          str(s.n_dead_so_far), drift, top)
        (self.console or Console()).print(table)


def _forward_params(cls: Any) -> list[str]:
    try:
        return list(inspect.signature(cls.forward).parameters)
    except (TypeError, ValueError):
        return []
