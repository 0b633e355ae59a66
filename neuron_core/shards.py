"""A profile cut into shards: ranges of documents, each profiled by its own task, merged into one NeuronProfile.

Usage::

    prof = profile(interface, ["layer 6"], "builtin", max_tokens=200_000, shards=8, executor="ray")
    prof = profile(interface, ["layer 6"], "builtin", shards=4)              # the same plan, run in this process

The corpus is tokenized once here (as ``profile`` would) to cut it into ``shards`` contiguous document ranges of
about equal token counts; ``max_tokens`` keeps its meaning (the first tokens in corpus order), so the shard holding
the budget's last token gets only its share and the documents after it are left out. Each shard is a ``profile``
call with its place in the corpus (``doc_offset``) and its own checkpoint (``<checkpoint>/shard-NNN/``, or a
temporary folder): a task that dies or raises is retried (``max_retries``) and goes on from its checkpoint. The
shards are merged in corpus order (``NeuronProfile.merge``).

What equals the unsharded profile: the statistics are exact functions of the activations, so with one document per
batch (``batch_size=1``: the model sees the same shapes) and the same number of torch threads (a Ray task gets one
CPU, hence one thread), the histogram, counts, min/max and every kept example (top-k, bottom-k, samples, the token
reservoir) are equal to the bit, and the mean and variance to float64 rounding (Chan's merge adds in another
order). With larger batches, or another thread count, a float32 forward may change an activation's last bit: the
statistics then agree to that rounding (about 1e-7 relative).

On a cluster the documents travel with the tasks (a shard's texts, not the corpus path), and a model given by name
is loaded by each worker process once (a model built in memory is sent with the task).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuron_core.batching import DocCounts, context_limit, corpus_segments
from neuron_core.corpus import Corpus
from neuron_core.distributed import Executor, check_executor, portable_model, run_tasks
from neuron_core.errors import EmptyInputError, InputError
from neuron_core.interface import ModelInterface
from neuron_core.neuron_profile import NeuronProfile
from neuron_core.profile_local import profile_local

__all__ = ["ShardSpec", "plan_shards", "profile_sharded"]


@dataclass(frozen=True)
class ShardSpec:
    """One shard: documents ``doc_start`` to ``doc_stop`` (exclusive) of the corpus, ``max_tokens`` of them counted
    (None: all), ``n_tokens`` planned."""

    index: int
    doc_start: int
    doc_stop: int
    max_tokens: int | None
    n_tokens: int


@dataclass
class _ShardTask:
    """What a worker needs for one shard (picklable)."""

    spec: ShardSpec
    model: Any  # a model name (loaded by the worker) or a ModelInterface (sent)
    device: str
    sites: list[str]
    corpus_name: str
    docs: list[Any]
    checkpoint: str
    options: dict[str, Any] = field(default_factory=dict)


def plan_shards(doc_tokens: list[int], n_shards: int, max_tokens: int | None = None) -> list[ShardSpec]:
    """Cut documents with ``doc_tokens`` tokens each (0 for a skipped document) into at most ``n_shards`` contiguous
    ranges of about equal counted tokens. ``max_tokens`` counts the first tokens in corpus order: the documents after
    the one holding the last counted token are left out. Empty shards are never made."""
    if n_shards < 1:
        raise InputError(f"shards must be >= 1, got {n_shards}")
    counted: list[int] = []
    stop, budget = len(doc_tokens), max_tokens
    for i, n in enumerate(doc_tokens):
        take = n if budget is None else min(n, budget)
        counted.append(take)
        if budget is not None:
            budget -= take
            if budget == 0:
                stop = i + 1
                break
    total = sum(counted)
    if total == 0:
        raise EmptyInputError("the corpus has no tokens to profile")
    shards: list[ShardSpec] = []
    start, acc = 0, 0
    for i in range(stop):
        acc += counted[i]
        goal = total * (len(shards) + 1) / n_shards
        if (acc >= goal and len(shards) < n_shards - 1) or i == stop - 1:
            n = acc - sum(s.n_tokens for s in shards)
            if n > 0:
                last = i == stop - 1 and max_tokens is not None
                shards.append(ShardSpec(len(shards), start, i + 1, n if last else None, n))
                start = i + 1
    return shards


def _doc_tokens(corpus: Corpus, interface: ModelInterface, max_length: int | None, overflow: str,
                max_tokens: int | None) -> tuple[list[int], list[Any]]:
    """Tokens per document as ``profile`` counts them (segments), and the documents, up to the budget."""
    context = context_limit(interface.context_length, max_length)
    per_doc: dict[int, int] = {}
    total, cut = 0, None
    for seg in corpus_segments(corpus, 0, interface.tokenizer, context, overflow, DocCounts()):  # type: ignore[arg-type]
        per_doc[seg.doc_id] = per_doc.get(seg.doc_id, 0) + len(seg.ids)
        total += len(seg.ids)
        if max_tokens is not None and total >= max_tokens and seg.final:
            cut = seg.doc_id + 1  # the documents after the budget's last one are never read
            break
    docs = corpus.texts(limit=cut)
    return [per_doc.get(i, 0) for i in range(len(docs))], docs


_WORKER_MODELS: dict[tuple[str, str], Any] = {}


def _worker_model(model: Any, device: str) -> Any:
    """The task's model: loaded once per worker process when given by name."""
    if not isinstance(model, str):
        return model
    key = (model, device)
    if key not in _WORKER_MODELS:
        _WORKER_MODELS[key] = ModelInterface.from_pretrained(model, device=device)
    return _WORKER_MODELS[key]


def _profile_shard(task: _ShardTask) -> NeuronProfile:
    """One shard, from its checkpoint if an earlier try left one (a Ray task: module level)."""
    corpus = Corpus(name=f"{task.corpus_name}[{task.spec.doc_start}:{task.spec.doc_stop}]", _docs=task.docs)
    return profile_local(_worker_model(task.model, task.device), task.sites, corpus, doc_offset=task.spec.doc_start,
                   max_tokens=task.spec.max_tokens, checkpoint=task.checkpoint, resume=True, progress=False,
                   **task.options)


def profile_sharded(interface: ModelInterface, sites: list[str], corpus: Corpus, *, shards: int,
                    executor: Executor = "local", address: str | None = None, max_tokens: int | None = None,
                    max_length: int | None = None, overflow: str = "truncate", checkpoint: str | Path | None = None,
                    resume: bool = False, max_retries: int = 2, progress: bool = False,
                    options: dict[str, Any] | None = None,
                    shard_task: Callable[[_ShardTask], NeuronProfile] | None = None) -> NeuronProfile:
    """Plan the shards, profile each as a task, merge them (see the module docstring). Without ``resume`` the
    shards' old checkpoints under ``checkpoint`` are removed first. ``shard_task`` replaces the function each task
    runs (a module-level function taking the task; the fault tests wrap the real one)."""
    check_executor(executor, address)
    if checkpoint is not None and not resume:
        for old in Path(checkpoint).glob("shard-*"):
            shutil.rmtree(old, ignore_errors=True)
    doc_tokens, docs = _doc_tokens(corpus, interface, max_length, overflow, max_tokens)
    specs = plan_shards(doc_tokens, shards, max_tokens)
    root = Path(checkpoint) if checkpoint is not None else Path(tempfile.mkdtemp(prefix="neuron-shards-"))
    model = portable_model(interface) if executor == "ray" else interface  # a name, or the model checked
    device = str(interface.device)
    tasks = [_ShardTask(spec, model, device, sites, corpus.name,
                        docs[spec.doc_start:spec.doc_stop], str(root / f"shard-{spec.index:03d}"),
                        {**(options or {}), "max_length": max_length, "overflow": overflow}) for spec in specs]
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(s.n_tokens for s in specs), unit="tok", unit_scale=True, disable=not progress,
               desc=f"profiling {len(specs)} shard(s) ({executor})")
    done_tokens = [0]

    def on_wait(n_done: int) -> None:
        finished = sum(s.n_tokens for s in specs[:n_done]) if executor == "local" else _checkpointed(tasks)
        bar.update(max(0, finished - done_tokens[0]))
        done_tokens[0] = max(done_tokens[0], finished)

    try:
        gpus = 1.0 if executor == "ray" and interface.device.type == "cuda" else 0.0
        parts = run_tasks(shard_task or _profile_shard, tasks, executor=executor, address=address,
                          max_retries=max_retries, num_gpus=gpus, on_wait=on_wait)
    finally:
        bar.close()
        if checkpoint is None:
            shutil.rmtree(root, ignore_errors=True)
    return _merged(parts, corpus, max_tokens, len(specs))


def _checkpointed(tasks: list[_ShardTask]) -> int:
    """Tokens the shards' checkpoints hold so far (readable where the workers share this machine's disk)."""
    import json

    total = 0
    for task in tasks:
        try:
            total += int(json.loads((Path(task.checkpoint) / "profile.json").read_text())["meta"]["n_tokens"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return total


def _merged(parts: list[NeuronProfile], corpus: Corpus, max_tokens: int | None, n_shards: int) -> NeuronProfile:
    merged = functools.reduce(lambda a, b: a.merge(b), parts)
    meta = merged.meta
    meta.update(corpus=corpus.name, corpus_fingerprint=corpus.fingerprint(), max_tokens=max_tokens, shards=n_shards,
                complete=all(p.meta.get("complete") for p in parts))
    meta.pop("merged_from", None)
    return merged
