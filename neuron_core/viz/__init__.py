"""Pictures of neurons: matplotlib figures and self-contained HTML dashboards.

Usage::

    from neuron_core.viz import ActivationVisualizer, NeuronLogitEffects, save

    viz = ActivationVisualizer(record)                   # an ActivationRecord, NeuronProfile or SiteProfile
    viz.plot_heatmap("layer 6")                          # tokens × most active neurons (profile: layers × bins)
    viz.highlight_polysemantic(verdicts)                 # list[PolysemanticNeuron] marked, a panel per neuron
    viz.plot_token_activations("L6/N12", text=0)         # token boxes coloured by activation + bars
    viz.plot_histogram("layer 6", 12); viz.plot_sparsity(); viz.plot_mode_shares(verdicts)
    viz.plot_logit_effects([NeuronLogitEffects(site="layer 6", neuron=12, promoted=[(" Paris", 2.1)],
                                               suppressed=[(" the", -0.8)])])
    save(fig, "fig.svg")                                 # or path="fig.png" on any plot_*
    viz.save_dashboard("out/", detections=verdicts)      # out/index.html + a page per neuron, no network needed

Figures are created without pyplot (headless, nothing kept alive); notebooks display them as usual. Corpus text is
untrusted: matplotlib text is escaped against mathtext, HTML is autoescaped and scripts carry JSON escaped for
``<``, ``>``, ``&``, behind a Content-Security-Policy that only runs the pages' own scripts.
"""

from neuron_core.sites import neuron_ref
from neuron_core.viz._figures import save
from neuron_core.viz._types import NeuronLogitEffects
from neuron_core.viz._visualizer import ActivationVisualizer, plot_logit_effects, plot_mode_shares

__all__ = ["ActivationVisualizer", "NeuronLogitEffects", "neuron_ref", "plot_logit_effects", "plot_mode_shares",
           "save"]
