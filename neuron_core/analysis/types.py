"""Typed results of the analyses (pydantic, so they export to JSON for findings and tools)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from neuron_core.sites import neuron_ref

__all__ = ["ModeExample", "Mode", "PolysemanticNeuron", "Verdict", "NeuronLogitEffects", "DirectEffect"]


class ModeExample(BaseModel):
    """One context that activates a neuron, as shown to people."""

    model_config = ConfigDict(frozen=True)

    text: str = Field(description="the context with the activating token marked as [[token]]")
    token: str
    value: float = Field(description="the neuron's activation on the token")
    doc_id: int
    position: int


class Mode(BaseModel):
    """One cluster of a neuron's strongly activating contexts."""

    model_config = ConfigDict(frozen=True)

    label: str = Field(description="a short name: the best matching probe concept, else the top tokens")
    share: float = Field(ge=0.0, le=1.0, description="share of the neuron's activation mass in this mode (estimated "
                         "from a uniform sample of its active tokens)")
    top_share: float | None = Field(default=None, ge=0.0, le=1.0, description="share of the activation of the "
                                    "neuron's top examples in this mode: a mode can hold many of the strongest "
                                    "examples and little of the mass; None when there is no top band")
    found_by_probes: bool = Field(default=False, description="the corpus barely shows this mode: it was found "
                                  "through the neuron's response to a probe concept's held-out sentences")
    n_examples: int
    top_tokens: list[str] = Field(default_factory=list)
    probe_concept: str | None = Field(default=None, description="best matching probe concept, if any matched")
    probe_similarity: float | None = Field(default=None, description="cosine similarity to that concept's centroid")
    examples: list[ModeExample] = Field(default_factory=list)
    effect: float | None = Field(
        default=None, description="mean increase of the model's loss on this mode's contexts when the neuron is "
        "zero-ablated (nats per token); None when not measured")

    @property
    def share_text(self) -> str:
        """How much of the neuron the mode is, in words: '35%', '0% of the mass, 20% of the top examples' (a mode
        seen among the top examples only) or 'found through the probes'. Every number in it is a field of the
        mode, at the precision written (the report's claim checker compares them)."""
        if self.found_by_probes:
            return "found through the probes"
        if self.share < 0.005 and self.top_share:
            return f"{self.share:.0%} of the mass, {self.top_share:.0%} of the top examples"
        return f"{self.share:.0%}"


Verdict = Literal["detected", "borderline", "not detected"]
"""A neuron's verdict: ``borderline`` when the null test cannot settle it at the detector's sample size (its p-value's
confidence interval straddles alpha, or its score sits within the margin of the threshold)."""


class PolysemanticNeuron(BaseModel):
    """The verdict on one neuron."""

    model_config = ConfigDict(frozen=True)

    site: str
    neuron: int
    score: float = Field(ge=0.0, le=1.0, description="polysemanticity score: 0 = one mode, 1 = several distinct, "
                         "balanced, far-apart modes")
    p_value: float = Field(ge=0.0, le=1.0, description="share of random context sets scoring at least as high")
    z_score: float
    n_modes: int
    separation: float = Field(description="mean cosine distance between the modes' centroids")
    modes: list[Mode]
    summary: str
    verdict: Verdict = Field(default="not detected", description="detected, borderline (the test cannot settle it) "
                             "or not detected")

    @property
    def ref(self) -> str:
        """Neuron id for people: L6/N1234 (site name when the site is not a canonical block)."""
        return neuron_ref(self.site, self.neuron)


class NeuronLogitEffects(BaseModel):
    """What a neuron's output direction promotes and suppresses in the vocabulary (logit units per unit of
    activation, through the final norm's scale and the unembedding), strongest first."""

    model_config = ConfigDict(frozen=True)

    site: str
    neuron: int
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]


class DirectEffect(BaseModel):
    """The direct effect of one neuron on the next-token logits at one position of a text."""

    model_config = ConfigDict(frozen=True)

    site: str
    neuron: int
    position: int
    token: str
    activation: float
    promoted: list[tuple[str, float]] = Field(description="tokens whose logit the neuron raises most, with the change")
    suppressed: list[tuple[str, float]]
    predicted: str = Field(description="the model's top next-token prediction at the position")
    predicted_change: float = Field(description="change of the predicted token's logit due to the neuron")
