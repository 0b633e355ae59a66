"""Faults for Ray tasks (imported by Ray workers): a shard task that dies once, after its first checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from neuron_core.shards import _profile_shard


def profile_shard_dying_once(task):
    """The real shard task; on the first try of shard 1 the worker process dies right after the shard's first
    checkpoint is written (as a killed or preempted worker would), so the retry must go on from that checkpoint."""
    marker = Path(task.checkpoint).parent / f"died-{task.spec.index}"
    if task.spec.index == 1 and not marker.exists():
        from neuron_core.profile import NeuronProfile

        real_save = NeuronProfile.save

        def save_then_die(self, folder, **kwargs):
            out = real_save(self, folder, **kwargs)
            if not self.meta.get("complete"):
                marker.write_text(str(self.meta["n_tokens"]))
                os._exit(1)
            return out

        NeuronProfile.save = save_then_die  # type: ignore[method-assign]
    return _profile_shard(task)
