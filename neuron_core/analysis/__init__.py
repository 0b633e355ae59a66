"""Analyses over records and profiles: neuron statistics, token and logit views, clustering, and polysemantic
neuron detection.

Usage::

    from neuron_core.analysis import PolysemanticDetector, neuron_table, neuron_logit_effects

    det = PolysemanticDetector(profile, interface=interface)
    det.detect()                       # list[PolysemanticNeuron], best first
    det.scores()                       # DataFrame over every analysed neuron
    neuron_table(profile)              # per-neuron statistics with dead / dense / outlier flags
"""

from neuron_core.analysis.clustering import NeuronClusters, cluster_contexts, cluster_neurons
from neuron_core.analysis.contexts import Context, contexts_from_profile, contexts_from_record
from neuron_core.analysis.embed import HiddenStateEmbedder, MiniLMEmbedder, SubjectEmbedder
from neuron_core.analysis.logits import direct_effect, logit_lens, neuron_logit_effects
from neuron_core.analysis.neuron_stats import layer_summary, neuron_table
from neuron_core.analysis.polysemantic import DetectorConfig, PolysemanticDetector, PolysematicDetector
from neuron_core.analysis.tokens import text_neuron_map, token_activations
from neuron_core.analysis.types import (
    DirectEffect,
    Mode,
    ModeExample,
    NeuronLogitEffects,
    PolysemanticNeuron,
    Verdict,
)

__all__ = [
    "Context",
    "DetectorConfig",
    "DirectEffect",
    "HiddenStateEmbedder",
    "MiniLMEmbedder",
    "Mode",
    "ModeExample",
    "NeuronClusters",
    "NeuronLogitEffects",
    "PolysemanticDetector",
    "PolysematicDetector",
    "PolysemanticNeuron",
    "SubjectEmbedder",
    "Verdict",
    "cluster_contexts",
    "cluster_neurons",
    "contexts_from_profile",
    "contexts_from_record",
    "direct_effect",
    "layer_summary",
    "logit_lens",
    "neuron_logit_effects",
    "neuron_ref",
    "neuron_table",
    "text_neuron_map",
    "token_activations",
]
