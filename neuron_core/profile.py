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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neuron_core.batching import Overflow, batch_contexts, check_budget, check_overflow
from neuron_core.corpus import Corpus, load_corpus
from neuron_core.distributed import Executor
from neuron_core.errors import InputError
from neuron_core.interface import ModelInterface
from neuron_core.models import LoadedModel
from neuron_core.neuron_profile import Example, NeuronProfile, ProfileMeta, SiteProfile
from neuron_core.profile_local import BinaryDocumentsWarning, choose_sites, coerce_interface, profile_local
from neuron_core.shards import profile_sharded
from neuron_core.sites import Site
from neuron_core.stats import StatsConfig

__all__ = ["profile", "NeuronProfile", "SiteProfile", "Example", "ProfileMeta", "batch_contexts",
           "BinaryDocumentsWarning"]


def _check_sizes(batch_size: int, batch_tokens: int, max_tokens: int | None, doc_offset: int) -> None:
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if batch_tokens < 1:
        raise InputError(f"batch_tokens must be >= 1, got {batch_tokens}")
    check_budget(max_tokens, doc_offset)


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
    interface = coerce_interface(model)
    chosen = choose_sites(interface, sites)
    _check_sizes(batch_size, batch_tokens, max_tokens, doc_offset)
    check_overflow(overflow)
    cfg = config or StatsConfig(top_k=top_k, bottom_k=bottom_k, n_samples=n_samples,
                                active_threshold=active_threshold)
    corp = load_corpus(corpus)
    if interface.tokenizer is None:
        raise InputError("profiling text needs a tokenizer; give the ModelInterface one")
    if shards != 1 or executor != "local":
        if doc_offset:
            raise InputError("a sharded profile places its own shards: doc_offset must be 0")
        return profile_sharded(interface, [s.name for s in chosen], corp, shards=shards, executor=executor,
                               address=address, max_tokens=max_tokens, max_length=max_length, overflow=overflow,
                               checkpoint=checkpoint, resume=resume, max_retries=max_retries, progress=bool(progress),
                               options={"batch_size": batch_size, "batch_tokens": batch_tokens, "config": cfg,
                                        "stop_early": stop_early, "checkpoint_every": checkpoint_every})
    return profile_local(interface, chosen, corp, cfg, batch_size=batch_size, batch_tokens=batch_tokens,
                         max_tokens=max_tokens, overflow=overflow, max_length=max_length, doc_offset=doc_offset,
                         checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume, progress=progress,
                         stop_early=stop_early)
