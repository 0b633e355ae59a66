"""neuron_core: capture, profile and analyse the MLP neurons of transformer language models.

Usage::

    from neuron_core import ModelInterface, ActivationMonitor, profile

    interface = ModelInterface.from_pretrained("smollm2-135m")     # bundled, offline
    monitor = ActivationMonitor(interface)
    monitor.register_layers(["layer 6"])
    record = monitor.capture(["The cat sat on the mat."])           # record["blocks.6.mlp.hook_post"]: [7, 1536]

    prof = profile(interface, ["layer 6"], "builtin", max_tokens=20_000)
    prof["layer 6"].top_examples(42)

Polysemantic neuron detection lives in :mod:`neuron_core.analysis`, pictures in :mod:`neuron_core.viz`.
neuron_core never imports an LLM library.
"""

from neuron_core.batching import Segment
from neuron_core.capture import ActivationMonitor, ActivationRecord
from neuron_core.corpus import Corpus, load_corpus, load_probes
from neuron_core.errors import (
    CorpusError,
    CorpusTooSmallError,
    EmptyInputError,
    FrameworkNotAvailableError,
    InputError,
    ModelNotAvailableError,
    NeuronCoreError,
    ProfileMismatchError,
    RunFolderError,
    TextTooLongError,
    UnknownSiteError,
    UnsupportedModelError,
)
from neuron_core.interface import ModelInterface
from neuron_core.live import LiveMonitor, SiteSummary, StatsCallback, StatsSummary, StepActivations
from neuron_core.models import LoadedModel, load_model
from neuron_core.profile import Example, NeuronProfile, SiteProfile, profile
from neuron_core.sites import NeuronRef, Site, parse_neuron_ref
from neuron_core.stats import SiteStats, StatsConfig
from neuron_core.store import RunFolder

__version__ = "0.1.0"

__all__ = [
    "ActivationMonitor",
    "ActivationRecord",
    "Corpus",
    "CorpusError",
    "CorpusTooSmallError",
    "EmptyInputError",
    "Example",
    "FrameworkNotAvailableError",
    "InputError",
    "LiveMonitor",
    "LoadedModel",
    "ModelInterface",
    "ModelNotAvailableError",
    "NeuronCoreError",
    "NeuronProfile",
    "ProfileMismatchError",
    "RunFolder",
    "RunFolderError",
    "Segment",
    "Site",
    "SiteProfile",
    "SiteStats",
    "SiteSummary",
    "StatsCallback",
    "StatsSummary",
    "StepActivations",
    "StatsConfig",
    "TextTooLongError",
    "UnknownSiteError",
    "UnsupportedModelError",
    "load_corpus",
    "load_model",
    "load_probes",
    "parse_neuron_ref",
    "NeuronRef",
    "profile",
]
