"""Understanding a request without an LLM: a parser that turns words into a :class:`Plan`, and its validation.

Usage::

    plan = parse_request("look for polysemantic neurons in layers 3-5 of smollm2-135m using my_corpus.txt")
    plan.model, plan.layers, plan.corpus          # 'smollm2-135m', [3, 4, 5], 'my_corpus.txt'
    plan = validate_plan(plan, n_layers=30, d_mlp=1536)   # PlanError: clear words on what is impossible
    plan = refine_plan(plan, {"layers": [4]})              # what an LLM may change, validated the same way

Understood: ``layer 6``, ``layers 3-5`` / ``3 to 5`` / ``3, 4 and 5``, ``L6``, ``the last layer``, neuron ids
(``6/1234``, ``L6/N1234``, ``neuron 1234 of layer 6``), a model (a known alias anywhere, else ``of|in|model NAME``),
a corpus (``using|on|with|over PATH`` or any ``*.txt``/``*.jsonl`` word or ``hf:NAME``), ``20k tokens``,
``top 100 neurons``, and the intent: ``explain|describe|what does ... neuron`` explains neurons, anything else
investigates layers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from neuron_core.sites import NeuronRef

__all__ = ["Plan", "PlanError", "parse_request", "validate_plan", "refine_plan", "ANALYSES", "MAX_LAYERS",
           "REFINABLE", "NEURON_REF", "NEURON_OF_LAYER"]

Analysis = Literal["neuron_stats", "polysemantic", "logit_effects", "figures", "dashboard"]
ANALYSES: tuple[Analysis, ...] = ("neuron_stats", "polysemantic", "logit_effects", "figures", "dashboard")
MAX_LAYERS = 8
REFINABLE = ("layers", "neurons", "max_tokens", "max_neurons", "top_n", "analyses")
_KNOWN_MODELS = ("smollm2-135m", "smollm2", "gpt2-small", "gpt2", "minilm", "all-minilm-l6-v2")


class PlanError(ValueError):
    """A request that cannot be carried out as asked (said in words a user can act on)."""


class Plan(BaseModel):
    """What an investigation will do. Bounds keep any plan, parsed or LLM-refined, cheap enough to run."""

    request: str = Field(min_length=1, max_length=2000)
    intent: Literal["investigate", "explain"] = "investigate"
    model: str = Field(min_length=1, max_length=300)
    layers: list[int] = Field(min_length=1, max_length=MAX_LAYERS)
    neurons: list[str] = Field(default_factory=list, max_length=20, description="neuron ids to explain, L6/N1234")
    corpus: str = Field(default="builtin", min_length=1, max_length=500)
    max_tokens: int = Field(default=20_000, ge=64, le=5_000_000)
    batch_size: int = Field(default=64, ge=1, le=256)
    max_neurons: int = Field(default=64, ge=1, le=8192)
    top_n: int = Field(default=5, ge=1, le=50)
    analyses: list[Analysis] = Field(default_factory=lambda: list(ANALYSES))
    device: str = "cpu"
    seed: int = 0
    source: str = "parser"
    notes: list[str] = Field(default_factory=list)

    def neuron_pairs(self) -> list[tuple[int, int]]:
        return [NeuronRef.parse(r).pair for r in self.neurons]


# ------------------------------------------------------------------------------------------------------ parser
_RANGE = re.compile(r"\blayers?\s+(-?\d+)\s*(?:-|–|to|through|thru|\.\.)\s*(-?\d+)\b", re.I)
_LIST = re.compile(r"\blayers\s+((?:-?\d+\s*(?:,|and|&|\s)\s*)+-?\d+)\b", re.I)
_ONE = re.compile(r"\blayer\s+(-?\d+)\b", re.I)
_LTOKEN = re.compile(r"(?<![\w/])L(\d+)\b(?!\s*/)")
_LAST = re.compile(r"\b(?:the\s+)?last\s+layer\b", re.I)
NEURON_REF = re.compile(r"\b(?:L)?(\d+)\s*/\s*(?:N)?(\d+)\b", re.I)
"""A neuron as people write it in a sentence: ``L6/N12``, ``6/12`` (groups: layer, index)."""
NEURON_OF_LAYER = re.compile(r"\bneuron\s+#?(\d+)\s+(?:of|in|at)\s+(?:layer\s+|L)(\d+)\b", re.I)
"""``neuron 12 of layer 6`` (groups: index, layer)."""
_LAYER_NEURON = re.compile(r"\blayer\s+(\d+)\s*,?\s+neuron\s+#?(\d+)\b", re.I)
_TOKENS = re.compile(r"\b(\d[\d,_]*(?:\.\d+)?)\s*([kKmM])?\s+tokens\b")
_TOP_NEURONS = re.compile(r"\b(?:top|first|the)\s+(\d+)\s+(?:most\s+active\s+)?neurons\b", re.I)
_CORPUS = re.compile(r"\b(?:using|on|with|over|from)\s+(?:the\s+)?(?:corpus\s+|file\s+|texts?\s+(?:in|from)\s+)?"
                     r"(hf:\S+|\S+\.(?:txt|jsonl|ndjson)|\S+/|builtin|built-in)(?=[\s,;]|$)", re.I)
_FILE = re.compile(r"(?<!\S)(hf:\S+|\S+\.(?:txt|jsonl|ndjson))(?=[\s,;]|$)", re.I)
_MODEL_NAMED = re.compile(r"\bmodel\s+([\w.~/][\w.\-/:~]*\w)", re.I)
_OF_NAME = re.compile(r"\b(?:of|in|for|on)\s+(?:the\s+)?([A-Za-z.~/][\w.\-/:~]*\w|\w+[-/][\w.\-/:]*\w)", re.I)
_EXPLAIN = re.compile(r"\b(explain|describe|what\s+does|what\s+is|interpret)\b", re.I)
_STOP = {"layer", "layers", "neuron", "neurons", "the", "a", "an", "my", "this", "that", "it", "corpus", "model",
         "polysemantic", "tokens", "texts", "text", "data", "builtin", "built-in", "top", "each", "all", "mlp",
         "gpu", "cpu", "words", "english", "detail"}


def _number(text: str, unit: str | None) -> int:
    value = float(text.replace(",", "").replace("_", ""))
    if unit:
        value *= 1_000 if unit.lower() == "k" else 1_000_000
    return int(value)


def _strip_punct(word: str) -> str:
    return word.rstrip(".,;:!?)\"'")


def _find_model(text: str, corpus: str | None) -> str | None:
    lowered = text.lower()
    for alias in _KNOWN_MODELS:
        if re.search(rf"(?<![\w\-]){re.escape(alias)}(?![\w\-])", lowered):
            return alias
    m = _MODEL_NAMED.search(text)
    if m and _strip_punct(m.group(1)).lower() not in _STOP:
        return _strip_punct(m.group(1))
    candidates = [_strip_punct(m.group(1)) for m in _OF_NAME.finditer(text)]
    candidates = [c for c in candidates if c.lower() not in _STOP and not c.isdigit() and c != corpus
                  and not re.fullmatch(r"L?\d+(/N?\d+)?", c, re.I)]
    return candidates[-1] if candidates else None


def parse_request(text: str, *, default_model: str | None = None, max_tokens: int = 20_000,
                  max_neurons: int = 64, top_n: int = 5) -> Plan:
    """Words -> Plan (not yet checked against the model: see :func:`validate_plan`). Raises PlanError."""
    request = " ".join(str(text).split())
    if not request:
        raise PlanError("the request is empty; try: investigate layer 6 of smollm2-135m")
    notes: list[str] = []
    corpus = _find_corpus(request)  # first, so that its path is not read as a model name
    neurons = _find_neurons(request, corpus)
    layers = _find_layers(request, neurons)
    model = _find_model(request, corpus)
    if model is None:
        if default_model is None:
            raise PlanError(f"which model? the request {request!r} names none; say e.g. 'of smollm2-135m'")
        model = default_model
        notes.append(f"the request names no model; using {default_model}")
    tm = _TOKENS.search(request)
    if tm:
        max_tokens = _number(tm.group(1), tm.group(2))
    nm2 = _TOP_NEURONS.search(request)
    if nm2:
        max_neurons = int(nm2.group(1))
    intent: Literal["investigate", "explain"] = "explain" if neurons and (_EXPLAIN.search(request) or not
                                                                         re.search(r"polysemantic", request, re.I)) \
        else "investigate"
    refs = [str(NeuronRef(layer, n)) for layer, n in dict.fromkeys(neurons)]
    try:
        return Plan(request=request, intent=intent, model=model, layers=layers, neurons=refs,
                    corpus=corpus or "builtin", max_tokens=max_tokens, max_neurons=max_neurons, top_n=top_n,
                    notes=notes)
    except ValidationError as exc:
        raise PlanError(_validation_words(exc)) from None


def _find_corpus(request: str) -> str | None:
    m = _CORPUS.search(request) or _FILE.search(request)
    if not m:
        return None
    corpus = _strip_punct(m.group(1))
    return "builtin" if corpus.lower() == "built-in" else corpus


def _find_neurons(request: str, corpus: str | None) -> list[tuple[int, int]]:
    """(layer, neuron) pairs the request names: 'neuron 12 of layer 6', 'layer 6, neuron 12', 'L6/N12'."""
    neurons: list[tuple[int, int]] = []
    for pattern, order in ((NEURON_OF_LAYER, (2, 1)), (_LAYER_NEURON, (1, 2))):
        for nm in pattern.finditer(request):
            neurons.append((int(nm.group(order[0])), int(nm.group(order[1]))))
    for nm in NEURON_REF.finditer(request):
        if corpus and nm.group(0) in corpus:
            continue
        neurons.append((int(nm.group(1)), int(nm.group(2))))
    return neurons


def _find_layers(request: str, neurons: list[tuple[int, int]]) -> list[int]:
    """The layers the request names (ranges, lists, single layers, 'last'), and its neurons' layers."""
    layers: list[int] = []
    for rm in _RANGE.finditer(request):
        lo, hi = int(rm.group(1)), int(rm.group(2))
        if hi < lo:
            raise PlanError(f"layer range {lo}-{hi} runs backwards; write it as {hi}-{lo}")
        if hi - lo + 1 > MAX_LAYERS:
            raise PlanError(f"layers {lo}-{hi} are {hi - lo + 1} layers; one run profiles at most {MAX_LAYERS}")
        layers.extend(range(lo, hi + 1))
    if not layers:
        for lm in _LIST.finditer(request):
            layers.extend(int(x) for x in re.findall(r"-?\d+", lm.group(1)))
    if not layers:
        layers.extend(int(x) for x in _ONE.findall(request))
        layers.extend(int(x) for x in _LTOKEN.findall(request))
    if _LAST.search(request):
        layers.append(-1)
    layers.extend(layer for layer, _ in neurons)
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise PlanError(f"which layer? the request {request!r} names none; say e.g. 'layer 6', 'layers 3-5' or "
                        "'neuron 6/1234'")
    if len(layers) > MAX_LAYERS:
        raise PlanError(f"{len(layers)} layers asked for; one run profiles at most {MAX_LAYERS}")
    return layers


def _validation_words(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "plan"
        parts.append(f"{where}: {error['msg']}")
    return "invalid plan: " + "; ".join(parts)


def validate_plan(plan: Plan, *, n_layers: int, d_mlp: int | None, model_name: str | None = None) -> Plan:
    """Check ``plan`` against the model (layers, neuron indices) and the corpus; negative layers count from the end.

    Returns the normalised plan; raises PlanError naming what is impossible and what is possible instead.
    """
    name = model_name or plan.model
    if n_layers <= 0:
        raise PlanError(f"{name} has no MLP layers this workbench can read")
    layers: list[int] = []
    for layer in plan.layers:
        index = layer + n_layers if layer < 0 else layer
        if not 0 <= index < n_layers:
            raise PlanError(f"layer {layer} is out of range: {name} has {n_layers} layers (0-{n_layers - 1})")
        layers.append(index)
    layers = list(dict.fromkeys(layers))
    neurons: list[str] = []
    for layer, neuron in plan.neuron_pairs():
        index = layer + n_layers if layer < 0 else layer
        if not 0 <= index < n_layers:
            raise PlanError(f"neuron {layer}/{neuron}: layer {layer} is out of range: {name} has {n_layers} layers "
                            f"(0-{n_layers - 1})")
        if d_mlp is not None and not 0 <= neuron < d_mlp:
            raise PlanError(f"neuron {layer}/{neuron} is out of range: layer {index} of {name} has {d_mlp} neurons "
                            f"(0-{d_mlp - 1})")
        neurons.append(str(NeuronRef(index, neuron)))
    corpus = plan.corpus
    if corpus not in ("builtin", "default") and not corpus.startswith("hf:"):
        path = Path(corpus).expanduser()
        if not path.exists():
            raise PlanError(f"corpus {corpus!r} not found (give a .txt file with one document per line, a .jsonl "
                            "file, a folder of .txt files, or 'builtin')")
        corpus = str(path.resolve())
    if d_mlp is not None and plan.max_neurons > d_mlp:
        plan = plan.model_copy(update={"max_neurons": d_mlp})
    return plan.model_copy(update={"layers": layers, "neurons": neurons, "corpus": corpus})


def refine_plan(plan: Plan, changes: dict[str, Any]) -> Plan:
    """Apply an LLM's proposed changes (only the fields in :data:`REFINABLE`); raises PlanError when invalid."""
    if not isinstance(changes, dict):
        raise PlanError(f"plan changes must be a JSON object, got {type(changes).__name__}")
    unknown = sorted(set(changes) - set(REFINABLE))
    if unknown:
        raise PlanError(f"these plan fields cannot be changed: {', '.join(unknown)} (changeable: "
                        f"{', '.join(REFINABLE)})")
    if not changes:
        return plan
    data = plan.model_dump()
    data.update(changes)
    data["source"] = "parser+llm"
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        raise PlanError(_validation_words(exc)) from None
