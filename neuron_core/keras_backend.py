"""TensorFlow / Keras backend: capture and profile any layer of a Keras 3 or tf.keras model.

Usage::

    interface = ModelInterface(keras_model, framework="tensorflow", tokenizer=tok)   # tokenizer optional
    interface.layer_names()          # ['input_ids', 'embed', 'attn', 'attn/query', ..., 'ffn_up', ...]
    monitor = ActivationMonitor(interface)
    monitor.register_layers(["ffn_up", "attn/query"])
    record = monitor.capture({"input_ids": ids, "attention_mask": mask})   # or ids, float arrays, texts
    record["ffn_up"]                 # torch float32 [n_tokens, d_ff]; padding removed, rows in order

    prof = profile_keras(interface, ["ffn_up"], batches)   # NeuronProfile, as neuron_core.profile.profile

Inputs: token ids (int arrays [B, T], ragged lists of ids are padded and masked), a mapping with ``input_ids`` and
``attention_mask`` (other keys go to the model's inputs of the same name), float arrays ([B, F] or [B, T, F]), or
texts when the interface has a tokenizer. A layer's output [B, T, ...] becomes one row per real token; [B, F] one row
per example (token strings ``row{i}``).

How layers are read, without changing the user's model: top-level layers of a functional or Sequential model through
a derived multi-output ``keras.Model(model.input, [layer.output, ...])``, built once per set of layers and cached on
the interface; layers nested inside sub-models or custom layers (``attn/query``), shared layers and every layer of a
subclassed model by wrapping the layer's ``call`` on the instance for one eager forward, always removed in ``finally``.
TensorFlow/Keras is imported lazily, only in this module.
"""

from __future__ import annotations

import difflib
import hashlib
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch

from neuron_core.batching import (
    Batch,
    Overflow,
    TokenStrings,
    batch_contexts,
    check_budget,
    encode_texts,
    make_batches,
    pad_token_id,
)
from neuron_core.errors import (
    EmptyInputError,
    FrameworkNotAvailableError,
    InputError,
    UnknownSiteError,
    UnsupportedModelError,
)
from neuron_core.neuron_profile import NeuronProfile, ProfileMeta
from neuron_core.record import ActivationRecord
from neuron_core.sites import Site, resolve_all
from neuron_core.stats import SiteStats, StatsConfig

__all__ = ["KerasModel", "KerasBackend", "KerasSiteResolver", "capture_keras", "profile_keras", "import_keras",
           "INSTALL_HINT"]

INSTALL_HINT = "pip install 'neuron-workbench[tensorflow]'"
_MASK_KEYS = ("attention_mask", "padding_mask", "mask")
_MAIN_KEYS = ("input_ids", "inputs", "x")


def import_keras() -> ModuleType:
    """The Keras module (Keras 3, else legacy tf_keras); FrameworkNotAvailableError with the install command."""
    try:
        import keras

        return keras
    except ImportError as exc:
        try:
            import tf_keras

            return tf_keras  # type: ignore[no-any-return]
        except ImportError:
            raise FrameworkNotAvailableError(
                f"framework='tensorflow' needs TensorFlow/Keras, which is not importable ({exc}); "
                f"install it with: {INSTALL_HINT}"
            ) from exc


def _keras_module_for(model: Any, keras: ModuleType) -> ModuleType | None:
    """The Keras package the model's classes come from (Keras 3 or legacy tf_keras), or None for non-Keras objects."""
    if isinstance(model, keras.Model):
        return keras
    roots = {cls.__module__.split(".")[0] for cls in type(model).__mro__}
    if "tf_keras" in roots:
        import tf_keras

        return tf_keras if isinstance(model, tf_keras.Model) else None
    if "tensorflow" in roots:
        import tensorflow as tf

        return tf.keras if isinstance(model, tf.keras.Model) else None
    return None


# ---------------------------------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class _Entry:
    """One capturable layer: ``path`` is ``name`` for top-level layers, ``parent/child`` for nested ones."""

    path: str
    layer: Any = field(compare=False)
    top: Any = field(compare=False)  # the top-level layer that contains it (itself when top-level)

    @property
    def nested(self) -> bool:
        return self.layer is not self.top


def _children(layer: Any) -> list[Any]:
    flatten = getattr(layer, "_flatten_layers", None)
    if callable(flatten):
        return [c for c in flatten(include_self=False, recursive=False) if c is not layer]
    return list(getattr(layer, "layers", []))


def _walk_layers(model: Any) -> dict[str, _Entry]:
    """Every layer in depth-first order; a layer object reached twice keeps its first path."""
    entries: dict[str, _Entry] = {}
    seen: set[int] = {id(model)}

    def visit(layer: Any, prefix: str, top: Any) -> None:
        for child in _children(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}/{child.name}" if prefix else str(child.name)
            entries[path] = _Entry(path, child, top if top is not None else child)
            visit(child, path, top if top is not None else child)

    for layer in list(getattr(model, "layers", [])):
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        entries[str(layer.name)] = _Entry(str(layer.name), layer, layer)
        visit(layer, str(layer.name), layer)
    return entries


def _graph_input(model: Any) -> Any | None:
    """The symbolic input structure of a functional/Sequential model, or None (subclassed, or never built)."""
    try:
        return model.input
    except (AttributeError, ValueError):
        pass
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    return inputs[0] if len(inputs) == 1 else list(inputs)


def _single_node(layer: Any) -> bool:
    """True when the layer was called exactly once in any graph, so ``layer.output`` is unambiguous."""
    return len(getattr(layer, "_inbound_nodes", ())) == 1


def _graph_output(layer: Any) -> Any:
    """The layer's (first) output tensor in the model's graph. Not ``layer.output``: for a sub-model that is the
    output of the sub-model's own graph, disconnected from the outer model's inputs."""
    node = layer._inbound_nodes[0]
    outputs = getattr(node, "outputs", None)
    if outputs is None:  # legacy tf_keras
        outputs = node.output_tensors
    return _first(outputs)


def _first(value: Any) -> Any:
    """The first tensor of a layer output that may be a tuple/list/dict (e.g. attention with scores)."""
    while isinstance(value, (list, tuple, Mapping)):
        if not value:
            raise InputError("a layer returned an empty structure; nothing to capture")
        value = next(iter(value.values())) if isinstance(value, Mapping) else value[0]
    return value


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()  # type: ignore[no-any-return]
    as_numpy = getattr(value, "numpy", None)
    if callable(as_numpy):
        return np.asarray(as_numpy())
    return np.asarray(value)


class KerasSiteResolver:
    """Layer paths -> :class:`Site` for one Keras model; the Keras twin of :class:`neuron_core.sites.SiteResolver`.

    Accepts a path (``ffn_up``, ``attn/query``; ``.`` works as separator too), a top-level index (``-1``: the last
    layer) or a Site. Unknown names raise UnknownSiteError naming close matches.
    """

    has_mlp_sites = False
    blocks_path = None

    def __init__(self, entries: dict[str, _Entry], top_level: list[str]) -> None:
        self.entries = entries
        self.top_level = top_level

    @property
    def n_layers(self) -> int:
        return len(self.top_level)

    def canonical_names(self) -> list[str]:
        return []

    def names(self) -> list[str]:
        return list(self.entries)

    def mlp_site(self, layer: int) -> Site:
        raise UnsupportedModelError("Keras models have no canonical MLP sites; name the layers to read")

    def d_mlp(self) -> int | None:
        return None

    def block_order(self, site: Site) -> int | None:
        return None

    def block_module(self, index: int) -> Any:
        raise UnsupportedModelError("Keras models have no list of blocks")

    def module(self, site: Site) -> Any:
        return self.entries[site.module_path].layer

    def resolve(self, name: str | int | Site) -> Site:
        if isinstance(name, Site):
            name = name.name
        if isinstance(name, bool) or not isinstance(name, (str, int)):
            raise UnknownSiteError(f"a layer name must be a string or an int, got {type(name).__name__}")
        if isinstance(name, int):
            n = len(self.top_level)
            index = name + n if name < 0 else name
            if not 0 <= index < n:
                raise UnknownSiteError(f"layer index {name} is out of range: the model has {n} top-level layers")
            return self._site(self.top_level[index])
        text = name.strip()
        if text in self.entries:
            return self._site(text)
        if text.replace(".", "/") in self.entries:
            return self._site(text.replace(".", "/"))
        leaf_matches = [p for p in self.entries if p.rsplit("/", 1)[-1] == text]
        close = leaf_matches + [c for c in difflib.get_close_matches(text, list(self.entries), n=5, cutoff=0.5)
                                if c not in leaf_matches]
        hint = f"; close matches: {', '.join(close[:5])}" if close else ""
        raise UnknownSiteError(f"unknown layer {text!r}{hint}. See interface.layer_names() "
                               f"({len(self.entries)} layers)")

    def resolve_many(self, names: Iterable[str | int | Site] | str | int | Site) -> list[Site]:
        """Resolve every name first (nothing happens if one fails); duplicates dropped, order kept."""
        return resolve_all(self.resolve, names, "layers")

    @staticmethod
    def _site(path: str) -> Site:
        return Site(name=path, module_path=path, read="output")


@dataclass
class _Plan:
    """How to read one set of layers: a derived model's outputs and/or call interception."""

    derived: Any | None  # keras.Model or None (run the user's model itself)
    direct: dict[str, int]  # site name -> index into the derived model's outputs
    intercepted: list[_Entry]


class KerasModel:
    """A Keras model, its tokenizer and the facts about it: the Keras twin of :class:`neuron_core.models.LoadedModel`.

    ``ModelInterface(model, framework="tensorflow")`` keeps one in ``interface.loaded``.
    """

    family = "keras"
    source = "in-memory"
    is_causal_lm = False
    d_mlp = None
    d_model = None
    dtype = torch.float32

    def __init__(self, model: Any, tokenizer: Any = None, *, name: str | None = None) -> None:
        keras = import_keras()
        kmod = _keras_module_for(model, keras)
        if kmod is None:
            raise InputError(f"framework='tensorflow' needs a Keras model (keras.Model), got {type(model).__name__}")
        self.keras = kmod
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or str(getattr(model, "name", None) or type(model).__name__)
        self.device = torch.device("cpu")  # records and statistics live on the CPU as torch tensors
        entries = _walk_layers(model)
        if not entries:
            raise UnsupportedModelError(f"the Keras model {self.name!r} has no layers to read")
        top = [p for p, e in entries.items() if not e.nested]
        self.resolver = KerasSiteResolver(entries, top)
        self._plans: dict[tuple[str, ...], _Plan] = {}
        self._weights_hash: str | None = None

    # facts -------------------------------------------------------------------------------------------------
    @property
    def sites(self) -> KerasSiteResolver:
        """Deprecated alias of :attr:`resolver` (as ``LoadedModel.sites``)."""
        return self.resolver

    @property
    def n_layers(self) -> int:
        return self.resolver.n_layers

    @property
    def input_spec(self) -> Any | None:
        return _graph_input(self.model)

    @property
    def context_length(self) -> int | None:
        """The fixed sequence length of a functional model's single input [B, T], else None."""
        spec = self.input_spec
        shape = getattr(spec, "shape", None)
        if shape is not None and len(shape) == 2 and isinstance(shape[1], int):
            return int(shape[1])
        return None

    @property
    def input_rank(self) -> int | None:
        shape = getattr(self.input_spec, "shape", None)
        return len(shape) if shape is not None else None

    def layer_names(self) -> list[str]:
        return self.resolver.names()

    def module_names(self) -> list[str]:
        return self.resolver.names()

    def weights_hash(self) -> str:
        if self._weights_hash is None:
            digest = hashlib.sha256()
            for weight in self.model.weights:
                array = _to_numpy(weight)
                digest.update(f"{weight.path if hasattr(weight, 'path') else weight.name}{array.shape}"
                              f"{array.dtype}".encode())
                digest.update(np.ascontiguousarray(array).tobytes())
            self._weights_hash = digest.hexdigest()
        return self._weights_hash

    def facts(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "source": self.source, "n_layers": self.n_layers,
                "d_mlp": None, "d_model": None, "context_length": self.context_length, "device": "cpu",
                "dtype": "float32", "is_causal_lm": False, "framework": "tensorflow"}

    # reading layers ----------------------------------------------------------------------------------------
    def plan(self, sites: Sequence[Site]) -> _Plan:
        """The (cached) way to read ``sites``; builds the derived model on first use."""
        key = tuple(s.name for s in sites)
        cached = self._plans.get(key)
        if cached is not None:
            return cached
        graph_in = self.input_spec
        outputs: list[Any] = []
        direct: dict[str, int] = {}
        intercepted: list[_Entry] = []

        def output_index(layer: Any) -> int:
            tensor = _graph_output(layer)
            for i, existing in enumerate(outputs):
                if existing is tensor:
                    return i
            outputs.append(tensor)
            return len(outputs) - 1

        whole_model = False
        for site in sites:
            entry = self.resolver.entries[site.module_path]
            if graph_in is not None and not entry.nested and _single_node(entry.layer):
                direct[site.name] = output_index(entry.layer)
                continue
            intercepted.append(entry)
            if graph_in is not None and _single_node(entry.top):
                output_index(entry.top)  # run the graph only as far as the containing layer
            else:
                whole_model = True
        derived = None
        if graph_in is not None and not whole_model:
            derived = self.keras.Model(inputs=graph_in, outputs=outputs, name=f"{self.model.name}_capture")
        elif direct:
            derived = self.keras.Model(inputs=graph_in, outputs=outputs + _as_list(self.model.outputs),
                                       name=f"{self.model.name}_capture")
        plan = _Plan(derived, direct, intercepted)
        self._plans[key] = plan
        return plan


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


@contextmanager
def _intercept(entries: Sequence[_Entry], sink: Callable[[str, Any], None]) -> Iterator[None]:
    """Wrap each layer's ``call`` on the instance so its output reaches ``sink``; always restored on exit."""
    restore: list[tuple[Any, bool, Any]] = []
    try:
        for entry in entries:
            layer = entry.layer
            had_own = "call" in vars(layer)
            previous = vars(layer).get("call")
            original = layer.call

            def wrapper(*args: Any, _original: Any = original, _path: str = entry.path, **kwargs: Any) -> Any:
                out = _original(*args, **kwargs)
                sink(_path, out)
                return out

            # object.__setattr__: bypass Keras/TF attribute tracking, so the model's state is never touched.
            object.__setattr__(layer, "call", wrapper)
            restore.append((layer, had_own, previous))
        yield
    finally:
        for layer, had_own, previous in reversed(restore):
            if had_own:
                object.__setattr__(layer, "call", previous)
            else:
                object.__delattr__(layer, "call")


def _forward(km: KerasModel, sites: Sequence[Site], feed: Any) -> dict[str, np.ndarray]:
    """One eager forward; every site's output as a numpy array (first tensor of the layer's output)."""
    plan = km.plan(sites)
    caught: dict[str, list[np.ndarray]] = {e.path: [] for e in plan.intercepted}

    def sink(path: str, value: Any) -> None:
        try:
            caught[path].append(_to_numpy(_first(value)))
        except (AttributeError, TypeError, ValueError, NotImplementedError) as exc:
            raise InputError(f"layer {path!r} ran inside a compiled graph (tf.function), so its output has no "
                             "value; capture needs the model's layers to run eagerly") from exc

    runner = plan.derived if plan.derived is not None else km.model
    with _intercept(plan.intercepted, sink):
        outputs = _as_list(runner(feed, training=False))
    arrays = {name: _to_numpy(outputs[i]) for name, i in plan.direct.items()}
    for path, got in caught.items():
        if not got:
            raise InputError(f"layer {path!r} did not run eagerly in the forward pass (the model's call may be "
                             "compiled with tf.function, or the layer is unused); capture needs eager layers")
        if len(got) > 1:
            raise InputError(f"layer {path!r} ran {len(got)} times in one forward pass (a shared layer), so its "
                             "output is ambiguous; read the layers around it instead")
        arrays[path] = got[0]
    return {s.name: arrays[s.name] for s in sites}


# ---------------------------------------------------------------------------------------------------- inputs
@dataclass
class _Batch:
    """One batch for the model. ids, mask [B, T] (None for float inputs / no mask); doc, start [B]."""

    feed: Any
    n_rows: int
    seq_len: int | None  # T of token ids [B, T] or float sequences [B, T, F]
    ids: np.ndarray | None
    mask: np.ndarray | None
    doc: np.ndarray
    start: np.ndarray  # position of the row's first token in its document (windows of long texts)


@dataclass
class _Prepared:
    batches: list[_Batch]
    n_docs: int
    texts: list[str] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)


def _is_text(inputs: Any) -> bool:
    return isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and len(inputs) > 0
                                       and all(isinstance(t, str) for t in inputs))


def _pad(rows: Sequence[Sequence[int]], width: int, pad_id: int, side: str) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)  # [B, T]
    mask = np.zeros((len(rows), width), dtype=bool)  # [B, T]
    for r, row in enumerate(rows):
        cols = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[r, cols] = np.asarray(row, dtype=np.int64)
        mask[r, cols] = True
    return ids, mask


def _array(value: Any, what: str) -> np.ndarray:
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple, np.ndarray)):
        if len({len(row) for row in value}) > 1:
            raise InputError(f"{what} rows have different lengths; pad them and give an attention_mask, or pass "
                             "token ids as a list of lists (padded for you)")
    array = _to_numpy(value)
    if array.dtype == object:
        raise InputError(f"cannot read {what} as a numeric array")
    return array


def _feed(km: KerasModel, main: np.ndarray, mask: np.ndarray | None, extras: dict[str, np.ndarray]) -> Any:
    """What the model is called with: the main array, or a dict/list matching a multi-input model by name."""
    spec = km.input_spec
    if spec is None or not isinstance(spec, (list, tuple, Mapping)):
        return main
    keys = list(spec) if isinstance(spec, Mapping) else [getattr(t, "name", "") for t in spec]
    values: list[tuple[str, Any]] = []
    main_used = False
    for key in keys:
        name = str(key)
        base = name.split(":")[0]
        if base in extras:
            values.append((key, extras[base]))
        elif "mask" in base.lower():
            values.append((key, (mask if mask is not None else np.ones(main.shape[:2], bool)).astype(np.int32)))
        elif not main_used:
            values.append((key, main))
            main_used = True
        else:
            raise InputError(f"the model has an input {name!r}; pass a mapping with a key {name!r}")
    if isinstance(spec, Mapping):
        return dict(values)
    return [v for _, v in values]


def _prepare(km: KerasModel, inputs: Any, *, batch_size: int | None, doc_base: int,
             max_length: int | None, overflow: Overflow, padding_side: Literal["left", "right"]) -> _Prepared:
    """Turn any accepted input into padded batches with their document ids; fails before any model work."""
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if padding_side not in ("left", "right"):
        raise InputError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    fixed = km.context_length
    pad = pad_token_id(km.tokenizer)
    if _is_text(inputs):
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        segments = encode_texts(km.tokenizer, texts, context_length=fixed, overflow=overflow,
                                max_length=max_length)
        batches = []
        for b in make_batches(segments, batch_size=batch_size or len(segments), pad_id=pad,
                              padding_side=padding_side):
            rows = [row[m].tolist() for row, m in zip(b.input_ids, b.mask, strict=True)]
            ids, real = _pad(rows, fixed or b.input_ids.shape[1], pad, padding_side)  # [B, T]
            batches.append(_Batch(_feed(km, ids, real, {}), len(rows), ids.shape[1], ids, real,
                                  b.doc_ids.numpy() + doc_base, b.starts.numpy()))
        return _Prepared(batches, len(texts), texts, sorted({s.doc_id for s in segments if s.truncated}))
    main, mask, extras = _read_arrays(inputs, fixed, pad, padding_side)
    if km.input_rank is not None and main.ndim == km.input_rank - 1:
        main = main[None]  # one example without its batch axis
        mask = mask[None] if mask is not None and mask.ndim == 1 else mask
        extras = {k: v[None] if v.ndim == main.ndim - 1 else v for k, v in extras.items()}
    is_ids = np.issubdtype(main.dtype, np.integer)
    if mask is not None and (main.ndim < 2 or mask.shape != main.shape[:2]):
        raise InputError(f"attention_mask has shape {mask.shape}, but the input has shape {main.shape}")
    n = main.shape[0]
    seq_len = main.shape[1] if (is_ids and main.ndim == 2) or (not is_ids and main.ndim >= 3) else None
    step = batch_size or n
    batches = []
    for lo in range(0, n, step):
        part = slice(lo, lo + step)
        x = main[part]
        m = mask[part] if mask is not None else None
        sub = {k: v[part] if v.ndim and v.shape[0] == n else v for k, v in extras.items()}
        batches.append(_Batch(_feed(km, x, m, sub), x.shape[0], seq_len,
                              x.astype(np.int64) if is_ids and x.ndim == 2 else None, m,
                              np.arange(lo, lo + x.shape[0]) + doc_base, np.zeros(x.shape[0], dtype=np.int64)))
    return _Prepared(batches, n)


def _read_arrays(inputs: Any, fixed: int | None, pad: int,
                 padding_side: str) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
    """(main input, attention mask or None, every named array) from a mapping, ragged id lists or an array."""
    if isinstance(inputs, Mapping):
        keys = [k for k in inputs if k not in _MASK_KEYS]
        main_key = next((k for k in _MAIN_KEYS if k in inputs), keys[0] if keys else None)
        if main_key is None:
            raise InputError(f"the input mapping has no input array (keys: {', '.join(map(str, inputs))})")
        extras = {str(k): _array(v, repr(k)) for k, v in inputs.items()}
        mask_key = next((k for k in _MASK_KEYS if k in inputs), None)
        return extras[str(main_key)], extras[mask_key].astype(bool) if mask_key else None, extras
    if isinstance(inputs, (list, tuple)) and inputs and all(
            isinstance(r, (list, tuple)) and all(isinstance(i, (int, np.integer)) for i in r) for r in inputs):
        rows = [list(r) for r in inputs]
        if any(not r for r in rows):
            raise EmptyInputError("a row of token ids is empty")
        lengths = {len(r) for r in rows}
        if len(lengths) > 1 or fixed is not None:
            ids, real = _pad(rows, fixed or max(lengths), pad, padding_side)  # [B, T]
            return ids, real, {}
        return np.asarray(rows, dtype=np.int64), None, {}
    main = _array(inputs, "the input")
    if main.size == 0:
        raise EmptyInputError("empty input")
    return main, None, {}


# ---------------------------------------------------------------------------------------------------- rows
@dataclass
class _Rows:
    """Where the rows of one batch come from: keep [B, X] selects (example, step) pairs in row-major order."""

    kind: Literal["rows", "tokens", "grid"]
    keep: np.ndarray
    doc: np.ndarray  # [n] int64
    pos: np.ndarray  # [n] int64
    ids: np.ndarray  # [n] int64, -1 where rows are not input tokens


def _rows(arrays: dict[str, np.ndarray], batch: _Batch) -> _Rows:
    """One layout for every site of a batch: [B, T, ...] -> real tokens, [B, F] -> examples, else [B * X] rows."""
    layouts: dict[str, tuple[str, int]] = {}
    for name, arr in arrays.items():
        if arr.ndim == 0 or arr.shape[0] != batch.n_rows:
            raise InputError(f"layer {name!r} returned shape {tuple(arr.shape)}, without the batch dimension "
                             f"{batch.n_rows}; it cannot be split into rows")
        if arr.ndim <= 2:
            layouts[name] = ("rows", 1)
        else:
            layouts[name] = ("tokens" if arr.shape[1] == batch.seq_len else "grid", int(arr.shape[1]))
    if len(set(layouts.values())) > 1:
        shapes = ", ".join(f"{n} {tuple(a.shape)}" for n, a in arrays.items())
        raise InputError(f"these layers give rows of different kinds ({shapes}); capture them in separate calls")
    kind, width = next(iter(layouts.values()))
    b = batch.n_rows
    steps = np.broadcast_to(np.arange(width), (b, width))  # [B, X]
    if kind == "tokens" and batch.mask is not None:
        keep = batch.mask.copy()
        steps = np.cumsum(keep, axis=1) - 1  # positions count real tokens only (left padding does not shift them)
    else:
        keep = np.ones((b, width), dtype=bool)
    doc = np.broadcast_to(batch.doc[:, None], (b, width))[keep].astype(np.int64)
    n = int(keep.sum())
    pos = (batch.start[:, None] + steps)[keep].astype(np.int64) if kind != "rows" else np.zeros(n, np.int64)
    ids = batch.ids[keep] if kind == "tokens" and batch.ids is not None else np.full(n, -1, np.int64)
    return _Rows(kind, keep, doc, pos, ids)  # type: ignore[arg-type]


def _acts(arr: np.ndarray, keep: np.ndarray) -> torch.Tensor:
    """[B, X, ...] (or [B, F]) -> float32 torch [n_kept, features]."""
    b, width = keep.shape
    grid = arr.reshape(b, width, -1)  # [B, X, F]
    return torch.from_numpy(np.ascontiguousarray(grid[keep], dtype=np.float32))  # [n, F]


class KerasBackend:
    """A Keras model behind a :class:`~neuron_core.interface.ModelInterface`: its layers as sites, and capture
    through a derived sub-model (or call interception); the twin of :class:`neuron_core.torch_backend.TorchBackend`.
    """

    framework = "tensorflow"

    def __init__(self, km: KerasModel) -> None:
        self.loaded = km
        self.tokens = TokenStrings(km)

    @property
    def resolver(self) -> KerasSiteResolver:
        return self.loaded.resolver

    def layer_names(self) -> list[str]:
        return self.loaded.layer_names()

    def module_names(self) -> list[str]:
        return self.loaded.module_names()

    def capture(self, inputs: Any, sites: list[Site], target: torch.device, *, max_length: int | None,
                overflow: Overflow, batch_size: int, padding_side: Literal["left", "right"],
                stop_early: bool) -> ActivationRecord:
        """Activations of ``sites`` on ``inputs`` (on the host: Keras records live there; no early stop)."""
        return _capture(self, inputs, sites, batch_size=batch_size, max_length=max_length, overflow=overflow,
                        padding_side=padding_side)

    @contextmanager
    def trace(self, choose: Callable[[], list[Site]], target: torch.device) -> Iterator[ActivationRecord]:
        raise InputError("trace() reads PyTorch hooks and is not available for Keras models; "
                         "use monitor.capture(inputs) instead")
        yield  # a generator, for @contextmanager  # pragma: no cover


def _keras_backend(model: Any, tokenizer: Any = None) -> KerasBackend:
    """The Keras backend of a ModelInterface built with framework='tensorflow', or of a Keras model."""
    backend = getattr(model, "backend", None)
    if isinstance(backend, KerasBackend):
        return backend
    if backend is not None and hasattr(model, "loaded"):
        raise InputError("this function reads Keras models; wrap the model with framework='tensorflow'")
    return KerasBackend(KerasModel(model, tokenizer))


# ---------------------------------------------------------------------------------------------------- public
def capture_keras(interface: Any, inputs: Any, sites: Sequence[str | int | Site] | str | int,
                  *, batch_size: int = 8, max_length: int | None = None, overflow: Overflow = "error",
                  padding_side: Literal["left", "right"] = "right") -> ActivationRecord:
    """Activations of ``sites`` on ``inputs``, kept whole (what ``ActivationMonitor.capture`` does for Keras).
    ``interface``: a ModelInterface built with ``framework="tensorflow"``, or a Keras model."""
    backend = _keras_backend(interface)
    return _capture(backend, inputs, backend.resolver.resolve_many(sites), batch_size=batch_size,
                    max_length=max_length, overflow=overflow, padding_side=padding_side)


def _capture(backend: KerasBackend, inputs: Any, chosen: list[Site], *, batch_size: int, max_length: int | None,
             overflow: Overflow, padding_side: Literal["left", "right"]) -> ActivationRecord:
    km = backend.loaded
    prepared = _prepare(km, inputs, batch_size=batch_size, doc_base=0, max_length=max_length,
                        overflow=overflow, padding_side=padding_side)
    parts: dict[str, list[torch.Tensor]] = {s.name: [] for s in chosen}
    facts: list[_Rows] = []
    for batch in prepared.batches:
        arrays = _forward(km, chosen, batch.feed)
        rows = _rows(arrays, batch)
        if facts and facts[0].kind != rows.kind:
            raise InputError("batches gave rows of different kinds; capture them in separate calls")
        facts.append(rows)
        for name, arr in arrays.items():
            parts[name].append(_acts(arr, rows.keep))
    ids = torch.from_numpy(np.concatenate([f.ids for f in facts]))
    if bool((ids >= 0).all()):
        tokens = backend.tokens(ids.tolist())
    else:
        tokens = [f"row{i}" for i in range(ids.numel())]
    return ActivationRecord(
        activations={name: torch.cat(chunks) for name, chunks in parts.items()},
        tokens=tokens,
        token_ids=ids,
        doc_ids=torch.from_numpy(np.concatenate([f.doc for f in facts])),
        positions=torch.from_numpy(np.concatenate([f.pos for f in facts])),
        texts=prepared.texts,
        model_name=km.name,
        truncated=prepared.truncated,
        overflow=overflow,
        _resolver=km.resolver,
    )


def profile_keras(interface: Any, sites: Sequence[str | int | Site] | str | int,
                  batches: Iterable[Any], *, top_k: int = 32, bottom_k: int = 8, n_samples: int = 32,
                  active_threshold: float = 0.0, config: StatsConfig | None = None, max_tokens: int | None = None,
                  doc_offset: int = 0, batch_size: int | None = None, max_length: int | None = None,
                  overflow: Overflow = "truncate", corpus_name: str = "batches",
                  progress: bool | None = None) -> NeuronProfile:
    """Streaming statistics of Keras layers over an iterable of batches (anything ``capture`` accepts per item:
    token ids, ``{"input_ids", "attention_mask"}`` mappings, float arrays, lists of texts).

    Returns the same :class:`NeuronProfile` as :func:`neuron_core.profile.profile`. Documents (rows) are numbered
    from ``doc_offset`` across batches; ``max_tokens`` stops after exactly that many rows. Examples of float inputs
    have no tokens: their ``doc_id`` is the row's index.
    """
    from tqdm.auto import tqdm

    backend = _keras_backend(interface)
    km = backend.loaded
    chosen = km.resolver.resolve_many(sites)
    check_budget(max_tokens, doc_offset)
    cfg = config or StatsConfig(top_k=top_k, bottom_k=bottom_k, n_samples=n_samples,
                                active_threshold=active_threshold)
    meta = ProfileMeta(model=km.name, family=km.family, framework="tensorflow", n_layers=km.n_layers,
                       corpus=corpus_name, corpus_fingerprint=None, doc_offset=doc_offset, batch_size=batch_size,
                       max_tokens=max_tokens, overflow=overflow).as_dict()
    run = _KerasProfiler(km, chosen, cfg, meta, max_tokens)
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=max_tokens, unit="tok", unit_scale=True, disable=not show,
               desc=f"profiling {len(chosen)} Keras layer(s)", file=sys.stderr)
    with closing(bar):
        doc_base = doc_offset
        for item in batches:
            if run.spent():
                break
            prepared = _prepare(km, item, batch_size=batch_size, doc_base=doc_base, max_length=max_length,
                                overflow=overflow, padding_side="right")
            doc_base += prepared.n_docs
            meta["n_truncated_docs"] += len(prepared.truncated)
            for batch in prepared.batches:
                if run.spent():
                    break
                bar.update(run.add(batch))
    if meta["n_tokens"] == 0:
        raise EmptyInputError("the batches produced no activations")
    meta["complete"] = True
    if km.tokenizer is not None:
        vocab = backend.tokens.vocab()
    else:
        vocab = [str(i) for i in range(run.max_id + 1)]  # token ids shown as their numbers, as in records
    return NeuronProfile(run.stats, meta, vocab, {s.name: s for s in chosen})


class _KerasProfiler:
    """The statistics of one ``profile_keras`` run as its batches come: per site, and the counts in ``meta``."""

    def __init__(self, km: KerasModel, sites: list[Site], cfg: StatsConfig, meta: dict[str, Any],
                 max_tokens: int | None) -> None:
        self.km, self.sites, self.cfg, self.meta, self.max_tokens = km, sites, cfg, meta, max_tokens
        self.stats: dict[str, SiteStats] = {}
        self.max_id = -1  # the largest token id seen (the vocabulary of a profile without a tokenizer)
        self.last_doc: int | None = None

    def remaining(self) -> int | None:
        return None if self.max_tokens is None else self.max_tokens - self.meta["n_tokens"]

    def spent(self) -> bool:
        remaining = self.remaining()
        return remaining is not None and remaining <= 0

    def add(self, batch: _Batch) -> int:
        """One batch through the model and into the statistics; returns how many rows counted."""
        arrays = _forward(self.km, self.sites, batch.feed)
        rows = _rows(arrays, batch)
        remaining = self.remaining()
        if remaining is not None and int(rows.keep.sum()) > remaining:
            # keep exactly `remaining` rows, in row-major order; the model still saw whole examples
            budget = (np.cumsum(rows.keep.ravel()) <= remaining).reshape(rows.keep.shape)
            rows = _rows_subset(rows, budget)
        n = int(rows.keep.sum())
        if rows.kind == "tokens" and batch.ids is not None:
            ctx = _contexts(batch, rows.keep, self.cfg, batch_contexts)
            self.max_id = max(self.max_id, int(batch.ids.max()))
        else:
            ctx = torch.full((n, self.cfg.context_width), -1, dtype=torch.int32)
        doc, pos = torch.from_numpy(rows.doc), torch.from_numpy(rows.pos)
        for site in self.sites:
            acts = _acts(arrays[site.name], rows.keep)  # [n, N]
            if site.name not in self.stats:
                self.stats[site.name] = SiteStats(acts.shape[1], device="cpu", config=self.cfg)
            self.stats[site.name].add(acts, doc, pos, ctx)
        self._count(rows, n)
        return n

    def _count(self, rows: _Rows, n: int) -> None:
        meta = self.meta
        docs = [int(d) for d in np.unique(rows.doc)]
        meta["n_docs"] += len(set(docs) - {self.last_doc})
        self.last_doc = docs[-1] if docs else self.last_doc
        meta["next_doc"] = (self.last_doc + 1) if self.last_doc is not None else meta["doc_offset"]
        meta["n_tokens"] += n


def _rows_subset(rows: _Rows, budget: np.ndarray) -> _Rows:
    keep = rows.keep & budget
    chosen = budget[rows.keep]  # [n_old] which of the kept rows survive
    return _Rows(rows.kind, keep, rows.doc[chosen], rows.pos[chosen], rows.ids[chosen])


def _contexts(batch: _Batch, keep: np.ndarray, cfg: StatsConfig, windows: Callable[..., torch.Tensor]) -> torch.Tensor:
    """Token-id windows around every kept token: [n, W] int32, -1 outside the document."""
    real = batch.mask if batch.mask is not None else np.ones(keep.shape, dtype=bool)  # [B, T]
    ids = batch.ids if batch.ids is not None else np.full(keep.shape, -1, np.int64)
    ids_t = torch.from_numpy(np.where(real, ids, -1))  # [B, T]; -1 outside documents
    keep_t = torch.from_numpy(keep)
    zeros = torch.zeros(keep.shape[0], dtype=torch.long)
    full = windows(Batch(ids_t, torch.from_numpy(real).long(), zeros[:, None].expand_as(ids_t), zeros, zeros, "right"),
                   cfg.context_before, cfg.context_after)  # [n_real, W]
    return full[keep_t[torch.from_numpy(real)]]  # [n_kept, W]
