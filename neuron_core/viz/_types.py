"""Inputs the pictures accept from the analyses, and the duck-typing that reads them.

Usage::

    effects = NeuronLogitEffects(site="blocks.6.mlp.hook_post", neuron=12,
                                 promoted=[(" Paris", 2.1), (" Berlin", 1.7)], suppressed=[(" the", -0.9)])
    as_neurons(result)        # list of PolysemanticNeuron-like objects from a list, one verdict or `.neurons`
    as_logit_effects(effects) # list of NeuronLogitEffects-like objects

Any object with the same attributes works in place of these classes (the analysis team's types are read by name).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from neuron_core.errors import InputError
from neuron_core.sites import layer_of_site_name, neuron_ref, site_label

__all__ = ["NeuronLogitEffects", "as_neurons", "as_logit_effects", "neuron_ref", "site_label", "layer_index",
           "verdict_title"]

layer_index = layer_of_site_name  # the layer a site name stands for, else None (see neuron_core.sites)


class NeuronLogitEffects(BaseModel):
    """Tokens whose logits one neuron pushes up (promoted) and down (suppressed), e.g. from W_out @ W_U.

    Values are in logit units, promoted positive and suppressed negative, each list strongest first.
    """

    model_config = ConfigDict(frozen=True)

    site: str = Field(description="the neuron's site, canonical (blocks.6.mlp.hook_post) or shorthand (layer 6)")
    neuron: int = Field(ge=0)
    promoted: list[tuple[str, float]] = Field(default_factory=list, description="(token, effect), largest first")
    suppressed: list[tuple[str, float]] = Field(default_factory=list, description="(token, effect), most negative "
                                                "first")

    @property
    def ref(self) -> str:
        return neuron_ref(self.site, self.neuron)


def _is_verdict(obj: Any) -> bool:
    return all(hasattr(obj, name) for name in ("site", "neuron", "modes"))


def _is_effects(obj: Any) -> bool:
    return all(hasattr(obj, name) for name in ("site", "neuron", "promoted", "suppressed"))


def as_neurons(result: Any) -> list[Any]:
    """Polysemantic verdicts from a list/tuple of them, a single one, or an object with ``.neurons``.

    Each item needs ``site``, ``neuron``, ``modes`` (``score`` and the rest are read when present).
    """
    if result is None:
        return []
    if _is_verdict(result):
        return [result]
    items = getattr(result, "neurons", result)
    if isinstance(items, Mapping):
        items = list(items.values())
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise InputError(f"expected PolysemanticNeuron objects (or an object with .neurons), got "
                         f"{type(result).__name__}")
    out = list(items)
    bad = [type(x).__name__ for x in out if not _is_verdict(x)]
    if bad:
        raise InputError(f"these items are not polysemantic verdicts (need site, neuron, modes): {sorted(set(bad))}")
    return out


def as_logit_effects(effects: Any) -> list[Any]:
    """Logit effects from a list of them, a single one, a mapping of them, or an object with ``.effects``."""
    if effects is None:
        return []
    if _is_effects(effects):
        return [effects]
    items = getattr(effects, "effects", effects)
    if isinstance(items, Mapping):
        items = list(items.values())
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise InputError(f"expected NeuronLogitEffects objects, got {type(effects).__name__}")
    out = list(items)
    bad = [type(x).__name__ for x in out if not _is_effects(x)]
    if bad:
        raise InputError("these items are not logit effects (need site, neuron, promoted, suppressed): "
                         f"{sorted(set(bad))}")
    return out


def verdict_title(verdict: Any, number: int | None = None) -> str:
    """'1. L6/N12 · 3 modes · score 0.80 · p 0.01 · z 3.1 · separation 0.42'."""
    modes = list(getattr(verdict, "modes", []) or [])
    ref = getattr(verdict, "ref", None) or neuron_ref(str(verdict.site), int(verdict.neuron))
    facts = [f"{len(modes)} modes"]
    for name, fmt in (("score", "score {:.2f}"), ("p_value", "p {:.3g}"), ("z_score", "z {:.2f}"),
                      ("separation", "separation {:.2f}")):
        value = getattr(verdict, name, None)
        if isinstance(value, (int, float)):
            facts.append(fmt.format(value))
    head = f"{number}. " if number is not None else ""
    return f"{head}{ref}  ·  " + "  ·  ".join(facts)
