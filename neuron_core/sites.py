"""Neuron sites: where a layer's MLP neurons are read, and how names people type map onto them.

Usage::

    resolver = SiteResolver(model)            # any torch nn.Module (HF transformers models get family rules)
    resolver.canonical_names()                # ['blocks.0.mlp.hook_post', ..., 'blocks.11.mlp.hook_post']
    site = resolver.resolve("layer 6")        # Site(name='blocks.6.mlp.hook_post', module_path=..., read='output')
    resolver.resolve("transformer.h.6.attn")  # any raw submodule: its output is read

Neurons are written ``L6/N12`` for people: ``NeuronRef.parse("l6/n12")`` -> ``NeuronRef(layer=6, index=12,
site='blocks.6.mlp.hook_post')``, ``str(ref) == 'L6/N12'``; ``str(NeuronRef.at("transformer.h.6.attn", 3)) ==
'transformer.h.6.attn/N3'``. This module is the one home of site and neuron names: all others go through it.

Canonical names follow TransformerLens (``blocks.{i}.mlp.hook_post``). Shorthand accepted: ``mlp.6``, ``6``,
``layer 6``, ``L6``, ``-1`` (counted from the end). What a canonical site reads depends on the family: GPT-2 the output
of ``mlp.act``; gated MLPs (Llama, SmolLM2, Mistral, Qwen, Gemma, Phi-3) the *input* of ``mlp.down_proj``, i.e.
act(gate) * up; BERT-style encoders the output of ``intermediate``. Families without a rule are placed by looking for
the MLP's down projection (a linear layer that contracts the MLP width back to the model width).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from neuron_core.errors import UnknownSiteError, UnsupportedModelError

__all__ = ["Site", "SiteResolver", "FAMILY_RULES", "NeuronRef", "canonical_site_name", "parse_neuron_ref",
           "layer_of_site_name", "find_site_name", "SiteKeyed", "neuron_ref", "site_label", "CANONICAL_SITE_RE",
           "SITE_SHORTHAND_RES"]

ReadMode = Literal["output", "input"]


@dataclass(frozen=True)
class Site:
    """One place activations are read from.

    name: canonical name (``blocks.{i}.mlp.hook_post``) or, for a raw module, its dotted path.
    module_path: the submodule the hook is registered on.
    read: ``"output"`` reads the module's output, ``"input"`` its first positional input.
    layer: block index for canonical MLP sites, ``None`` for raw modules.
    """

    name: str
    module_path: str
    read: ReadMode
    layer: int | None = None

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class _FamilyRule:
    blocks_suffix: str  # dotted path suffix of the ModuleList of blocks
    mlp_module: str  # path of the module inside one block
    read: ReadMode


# model_type (from the HF config) -> where its neurons live. Keep in sync with docs/ARCHITECTURE.md "Site".
FAMILY_RULES: dict[str, _FamilyRule] = {
    **dict.fromkeys(("gpt2", "gptj", "gpt_neo"), _FamilyRule("h", "mlp.act", "output")),
    "gpt_neox": _FamilyRule("layers", "mlp.act", "output"),
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "electra"),
                    _FamilyRule("encoder.layer", "intermediate", "output")),
    "distilbert": _FamilyRule("transformer.layer", "ffn.lin2", "input"),
    "opt": _FamilyRule("layers", "fc2", "input"),
    "phi": _FamilyRule("layers", "mlp.fc2", "input"),
    **dict.fromkeys(("falcon", "bloom"), _FamilyRule("h", "mlp.dense_4h_to_h", "input")),
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "phi3",
                     "granite", "smollm3", "stablelm", "cohere", "starcoder2_gated"),
                    _FamilyRule("layers", "mlp.down_proj", "input")),  # gated MLPs: act(gate) * up
}

# Names of down projections, for families without a rule: (name, read)
_DOWN_PROJ_NAMES = ("down_proj", "c_proj", "fc2", "fc_out", "dense_4h_to_h", "w2", "lin2", "wo")

CANONICAL_SITE_RE = re.compile(r"^blocks\.(-?\d+)\.mlp\.hook_post$")
"""A canonical MLP site name; group 1 is the layer."""
SITE_SHORTHAND_RES = (
    re.compile(r"^blocks\.(-?\d+)(?:\.mlp)?$"),
    re.compile(r"^mlp[._ ]?(-?\d+)$", re.IGNORECASE),
    re.compile(r"^(?:layer|block)[._ ]*(-?\d+)$", re.IGNORECASE),
    re.compile(r"^l(-?\d+)$", re.IGNORECASE),
    re.compile(r"^(-?\d+)$"),
)
"""Shorthand people write for layer i's MLP site (``mlp.6``, ``6``, ``layer 6``, ``L6``, ``blocks.6``); group 1
is the layer."""


def canonical_site_name(layer: int) -> str:
    """``canonical_site_name(6) == 'blocks.6.mlp.hook_post'``."""
    return f"blocks.{layer}.mlp.hook_post"


def layer_of_site_name(name: str | Site) -> int | None:
    """The layer a site name stands for: ``'blocks.6.mlp.hook_post'``, ``'layer 6'``, ``'L6'``, ``'-1'`` -> 6, 6,
    6, -1 (negative: counted from the end); None for any other name (a raw module path)."""
    text = (name.name if isinstance(name, Site) else str(name)).strip()
    matches = (m for pattern in (CANONICAL_SITE_RE, *SITE_SHORTHAND_RES) if (m := pattern.match(text)) is not None)
    return next((int(m.group(1)) for m in matches), None)


class SiteKeyed:
    """A container keyed by site name (a profile, a record): ``site in container`` when :meth:`key` finds it."""

    def key(self, site: str | int | Site) -> str:  # the container's own name for ``site``, or UnknownSiteError
        raise NotImplementedError

    def __contains__(self, site: object) -> bool:
        try:
            self.key(site)  # type: ignore[arg-type]
        except UnknownSiteError:
            return False
        return True


def find_site_name(site: str | int | Site, names: Iterable[str], n_layers: int = 0) -> str | None:
    """The name among ``names`` that ``site`` stands for: itself, or its layer's canonical name (negative layers
    counted from the end when ``n_layers`` is known); else None."""
    known = list(names)
    name = site.name if isinstance(site, Site) else site
    if isinstance(name, str) and name in known:
        return name
    layer = layer_of_site_name(str(name))
    if layer is not None and layer < 0 and n_layers:
        layer += n_layers
    canonical = None if layer is None else canonical_site_name(layer)
    return canonical if canonical in known else None


def site_label(site: str | Site) -> str:
    """``'blocks.6.mlp.hook_post'`` (or ``'layer 6'``) -> ``'L6'``; other site names are returned as they are."""
    layer = site.layer if isinstance(site, Site) and site.layer is not None else layer_of_site_name(site)
    return f"L{layer}" if layer is not None and layer >= 0 else str(site)


_SITE_NEURON_RE = re.compile(r"^\s*(.+?)/N(\d+)\s*$")  # '<site name>/N12', for sites that are not layers
_NEURON_RE = re.compile(r"^\s*(?:L|layer\s*|blocks\.)?(-?\d+)\s*(?:/|:|\.|,\s*)\s*(?:N|neuron\s*)?(\d+)\s*$", re.I)


@dataclass(frozen=True)
class NeuronRef:
    """One neuron: its layer (None for a site that is not a numbered layer), its index and its site's name (by
    default the layer's canonical one). ``str(ref)`` is the form for people: ``L6/N12``, or ``<site name>/N12``."""

    layer: int | None
    index: int
    site: str = ""

    def __post_init__(self) -> None:
        if not self.site:
            if self.layer is None:
                raise ValueError("a NeuronRef needs a layer or a site")
            object.__setattr__(self, "site", canonical_site_name(self.layer))

    def __str__(self) -> str:
        return f"L{self.layer}/N{self.index}" if self.layer is not None else f"{self.site}/N{self.index}"

    @classmethod
    def parse(cls, ref: str, *, sites: Iterable[str] = ()) -> NeuronRef:
        """A neuron written for people: ``L6/N1234``, ``l6/n1234``, ``6/1234``, ``6:1234``, ``layer 6, neuron
        1234``, ``blocks.6.1234`` (case-insensitive, spaces around the separator allowed); with ``sites``, also
        ``<site name>/N12`` for one of those sites (its layer None). UnknownSiteError else."""
        named = _SITE_NEURON_RE.match(ref) if sites else None
        if named is not None and named.group(1) in set(sites):
            return cls(None, int(named.group(2)), named.group(1))
        match = _NEURON_RE.match(ref)
        if not match:
            raise UnknownSiteError(f"cannot read neuron reference {ref!r}; write it as L6/N1234 or 6/1234")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def at(cls, site: str | Site, index: int) -> NeuronRef:
        """The neuron ``index`` of a site (a Site or a site name); its layer is read off the name (a raw module
        path or a negative layer has none)."""
        name = site.name if isinstance(site, Site) else str(site)
        layer = site.layer if isinstance(site, Site) and site.layer is not None else layer_of_site_name(name)
        return cls(layer if layer is not None and layer >= 0 else None, int(index), name)

    @property
    def pair(self) -> tuple[int, int]:
        if self.layer is None:  # (layer, index) exists for neurons of numbered layers only
            raise ValueError(f"{self} is not on a numbered layer")
        return self.layer, self.index


def parse_neuron_ref(ref: str) -> tuple[int, int]:
    """Parse a neuron written for people: ``L6/N1234``, ``6/1234``, ``6:1234`` -> ``(6, 1234)`` (see
    :meth:`NeuronRef.parse`)."""
    return NeuronRef.parse(ref).pair


def neuron_ref(site: str | Site, neuron: int) -> str:
    """``('blocks.6.mlp.hook_post', 12)`` -> ``'L6/N12'``; ``('transformer.h.6.attn', 3)`` ->
    ``'transformer.h.6.attn/N3'``."""
    return str(NeuronRef.at(site, neuron))


def resolve_all(resolve: Callable[[str | int | Site], Site], names: Iterable[str | int | Site] | str | int | Site,
                what: str = "sites") -> list[Site]:
    """Resolve every name with ``resolve`` before anything else happens; duplicates dropped, order kept."""
    if isinstance(names, (str, int, Site)):
        names = [names]
    sites: list[Site] = []
    for name in names:
        site = resolve(name)
        if site not in sites:
            sites.append(site)
    if not sites:
        raise UnknownSiteError(f"no {what} given")
    return sites


def _is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) for nn.Linear and HF's GPT-2 Conv1D."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        weight = torch.as_tensor(module.weight)  # Conv1D stores [in, out]
        return int(weight.shape[0]), int(weight.shape[1])
    return None


class SiteResolver:
    """Maps names to :class:`Site` objects for one model. Construction is cheap and registers nothing."""

    def __init__(self, model: nn.Module, model_type: str | None = None) -> None:
        self.model = model
        config = getattr(model, "config", None)
        self.model_type = model_type or (getattr(config, "model_type", None) if config is not None else None)
        self._modules: dict[str, nn.Module] = dict(model.named_modules())
        self._blocks_path: str | None = None
        self._mlp_rel: str | None = None
        self._read: ReadMode = "output"
        self._place_error: str | None = None
        self._place_mlps()

    # ------------------------------------------------------------------ placement
    def _find_blocks(self, suffix: str | None) -> str | None:
        lists = [(name, m) for name, m in self._modules.items() if isinstance(m, nn.ModuleList) and len(m) > 0]
        if suffix is not None:
            matches = [name for name, _ in lists if name == suffix or name.endswith("." + suffix)]
            return min(matches, key=len) if matches else None
        if not lists:
            return None
        # The blocks are the longest ModuleList whose children are all of one type.
        homogeneous = [(n, m) for n, m in lists if len({type(c) for c in m}) == 1]
        candidates = homogeneous or lists
        return max(candidates, key=lambda item: (len(item[1]), -len(item[0])))[0]

    def _place_mlps(self) -> None:
        rule = FAMILY_RULES.get(self.model_type or "")
        if rule is not None:
            blocks = self._find_blocks(rule.blocks_suffix)
            if blocks is not None and f"{blocks}.0.{rule.mlp_module}" in self._modules:
                self._blocks_path, self._mlp_rel, self._read = blocks, rule.mlp_module, rule.read
                return
        blocks = self._find_blocks(None)
        if blocks is None:
            self._place_error = "the model has no list of blocks (nn.ModuleList)"
            return
        first = f"{blocks}.0."
        candidates: list[tuple[str, tuple[int, int]]] = []
        for name, module in self._modules.items():
            if name.startswith(first) and _is_linear_like(module):
                shape = _linear_shape(module)
                if shape is not None:
                    candidates.append((name[len(first):], shape))
        for rel, (d_in, d_out) in candidates:
            leaf = rel.rsplit(".", 1)[-1]
            in_attention = any(part in rel for part in ("attn", "attention"))
            if leaf in _DOWN_PROJ_NAMES and d_in > d_out and not in_attention:
                self._blocks_path, self._mlp_rel, self._read = blocks, rel, "input"
                return
        listed = ", ".join(f"{first}{rel} [{i}->{o}]" for rel, (i, o) in candidates[:20]) or "none"
        self._place_error = (
            f"cannot place the MLP neurons of this model (model_type={self.model_type!r}); "
            f"linear modules in the first block: {listed}. Pass a raw module path instead, "
            "or add a rule to neuron_core.sites.FAMILY_RULES"
        )

    # ------------------------------------------------------------------ facts
    @property
    def has_mlp_sites(self) -> bool:
        return self._blocks_path is not None

    @property
    def n_layers(self) -> int:
        if self._blocks_path is None:
            return 0
        blocks = self._modules[self._blocks_path]
        return len(blocks) if isinstance(blocks, nn.ModuleList) else 0

    @property
    def blocks_path(self) -> str | None:
        return self._blocks_path

    def d_mlp(self) -> int | None:
        """Number of neurons per MLP site (None when it cannot be read off the weights)."""
        if self._blocks_path is None or self._mlp_rel is None:
            return None
        block = f"{self._blocks_path}.0."
        if self._read == "input":
            shape = _linear_shape(self._modules[block + self._mlp_rel])
            return shape[0] if shape else None
        # Output of an activation/intermediate module: the width of the up projection feeding it, looked for
        # inside the module itself (BERT's intermediate), else beside it (GPT-2's mlp.c_fc next to mlp.act).
        own = block + self._mlp_rel
        parent = own.rsplit(".", 1)[0] if "." in self._mlp_rel else own
        for scope in (own + ".", parent + "."):
            widths = [s[1] for n, m in self._modules.items() if n.startswith(scope) and (s := _linear_shape(m))]
            if widths:
                return max(widths)
        return None

    def canonical_names(self) -> list[str]:
        return [canonical_site_name(i) for i in range(self.n_layers)]

    def mlp_site(self, layer: int) -> Site:
        if self._blocks_path is None or self._mlp_rel is None:
            raise UnsupportedModelError(self._place_error or "no MLP sites")
        n = self.n_layers
        index = layer + n if layer < 0 else layer
        if not 0 <= index < n:
            raise UnknownSiteError(f"layer {layer} is out of range: the model has {n} layers (0-{n - 1})")
        return Site(
            name=canonical_site_name(index),
            module_path=f"{self._blocks_path}.{index}.{self._mlp_rel}",
            read=self._read,
            layer=index,
        )

    def module(self, site: Site) -> nn.Module:
        return self._modules[site.module_path]

    def block_module(self, index: int) -> nn.Module:
        """Block ``index`` itself (where an early stop is hooked)."""
        return self.model.get_submodule(f"{self._blocks_path}.{index}")

    # ------------------------------------------------------------------ resolution
    def resolve(self, name: str | int | Site) -> Site:
        """One name -> Site. Raises UnknownSiteError (with close matches) or UnsupportedModelError."""
        if isinstance(name, Site):
            if name.module_path not in self._modules:
                raise UnknownSiteError(f"site {name.name!r} reads module {name.module_path!r}, not in this model")
            return name
        if isinstance(name, bool) or not isinstance(name, (str, int)):
            raise UnknownSiteError(f"a site name must be a string or an int, got {type(name).__name__}")
        if isinstance(name, int):
            return self.mlp_site(name)
        text = name.strip()
        if not text:
            raise UnknownSiteError("empty site name")
        layer = layer_of_site_name(text)
        if layer is not None:
            if not self.has_mlp_sites and text in self._modules:
                return Site(name=text, module_path=text, read="output")
            return self.mlp_site(layer)
        if text in self._modules and text != "":
            # A canonical site's own module path maps to the canonical site, so both spellings share data.
            for layer in range(self.n_layers):
                site = self.mlp_site(layer)
                if site.module_path == text and site.read == "output":
                    return site
            return Site(name=text, module_path=text, read="output")
        choices = self.canonical_names() + [n for n in self._modules if n]
        close = difflib.get_close_matches(text, choices, n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        n_layers = self.n_layers
        shape = f" Canonical sites: blocks.{{0..{n_layers - 1}}}.mlp.hook_post." if n_layers else ""
        raise UnknownSiteError(f"unknown site {text!r}{hint}.{shape}")

    def resolve_many(self, names: Iterable[str | int | Site]) -> list[Site]:
        """Resolve every name first (nothing is registered if one fails); duplicates are dropped, order kept."""
        return resolve_all(self.resolve, names)

    def block_order(self, site: Site) -> int | None:
        """Index of the block a site lives in (also for raw module paths inside blocks), for early stopping."""
        if site.layer is not None:
            return site.layer
        if self._blocks_path is not None and site.module_path.startswith(self._blocks_path + "."):
            head = site.module_path[len(self._blocks_path) + 1:].split(".", 1)[0]
            if head.isdigit():
                return int(head)
        return None
