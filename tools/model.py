"""Tools: load a model, list its neuron sites, profile a corpus.

Usage::

    call_tool(ctx, "load_model", {"model": "smollm2-135m"})          # -> ModelInfo
    call_tool(ctx, "list_sites", {})                                  # -> SiteList
    call_tool(ctx, "profile_corpus", {"layers": [6], "max_tokens": 20000})   # -> ProfileSummary (profile/ on disk)
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from tools._base import StrictArgs, ToolContext, register

__all__ = ["LoadModelArgs", "ModelInfo", "ListSitesArgs", "SiteList", "ProfileArgs", "ProfileSummary"]


class LoadModelArgs(StrictArgs):
    model: str = Field(min_length=1, max_length=300, description="alias (smollm2-135m, gpt2), HF id or local path")
    device: str = Field(default="cpu", pattern=r"^(cpu|auto|cuda(:\d+)?|mps)$")


class ModelInfo(BaseModel):
    name: str
    family: str
    n_layers: int
    d_mlp: int | None
    d_model: int | None
    device: str
    dtype: str
    headline: str


@register("load_model", "Load a language model by alias, Hugging Face id or local path and report its facts "
          "(layers, neurons per layer).", LoadModelArgs, ModelInfo)
def load_model(ctx: ToolContext, args: LoadModelArgs) -> ModelInfo:
    from neuron_core import ModelInterface
    from neuron_core import load_model as _load

    interface = ctx.models.get(args.model)
    if interface is None:
        interface = ModelInterface(_load(args.model, device=args.device))
        ctx.models[args.model] = interface
    ctx.interface = interface
    facts: dict[str, Any] = interface.loaded.facts()
    return ModelInfo(name=args.model, family=facts["family"], n_layers=facts["n_layers"], d_mlp=facts["d_mlp"],
                     d_model=facts["d_model"], device=facts["device"], dtype=facts["dtype"],
                     headline=f"{args.model}: {facts['family']}, {facts['n_layers']} layers x {facts['d_mlp']} "
                              "neurons")


class ListSitesArgs(StrictArgs):
    pass


class SiteList(BaseModel):
    model: str
    n_layers: int
    d_mlp: int | None
    sites: list[str]
    headline: str


@register("list_sites", "List the MLP neuron sites (layers) of the loaded model.", ListSitesArgs, SiteList)
def list_sites(ctx: ToolContext, args: ListSitesArgs) -> SiteList:
    interface = ctx.require_model()
    names = interface.layer_names()
    return SiteList(model=interface.name, n_layers=interface.n_layers, d_mlp=interface.loaded.d_mlp, sites=names,
                    headline=f"{len(names)} sites: {names[0]} .. {names[-1]}" if names else "no sites")


class ProfileArgs(StrictArgs):
    layers: list[int] = Field(min_length=1, max_length=8, description="layer indices to profile")
    corpus: str = Field(default="builtin", max_length=500, description="'builtin', a .txt/.jsonl path or a folder")
    max_tokens: int = Field(default=20_000, ge=64, le=5_000_000)
    batch_size: int = Field(default=64, ge=1, le=256)


class ProfileSummary(BaseModel):
    model: str
    sites: list[str]
    corpus: str
    n_tokens: int
    n_docs: int
    n_neurons: dict[str, int]
    seconds: float
    artifact: str = "profile/"
    resumed: bool = False
    n_binary_docs: int = 0  # documents that looked like binary data, skipped
    headline: str


@register("profile_corpus", "Stream a corpus through the model and keep per-neuron statistics and top examples "
          "for the given layers (writes profile/). Resumes a checkpoint in the run folder.", ProfileArgs,
          ProfileSummary)
def profile_corpus(ctx: ToolContext, args: ProfileArgs) -> ProfileSummary:
    from neuron_core import profile

    interface = ctx.require_model()
    sites = [interface.resolve(layer).name for layer in args.layers]
    folder = ctx.run.path_for("profile")
    resumed = (folder / "profile.json").exists()
    start = time.perf_counter()
    prof = profile(interface, sites, args.corpus, max_tokens=args.max_tokens, batch_size=args.batch_size,
                   checkpoint=folder, resume=True, progress=False)
    prof.save(folder)  # with examples.parquet
    ctx.profile = prof
    ctx.detectors.clear()
    ctx.detections.clear()
    seconds = round(time.perf_counter() - start, 2)
    widths = {name: prof[name].n_neurons for name in prof.site_names}
    n_docs = int(prof.meta.get("n_docs", 0))
    n_binary = int(prof.meta.get("n_binary_docs", 0))
    skipped = f"; skipped {n_binary} documents that look like binary data" if n_binary else ""
    return ProfileSummary(model=interface.name, sites=prof.site_names, corpus=str(prof.meta.get("corpus")),
                          n_tokens=prof.n_tokens, n_docs=n_docs, n_neurons=widths, seconds=seconds, resumed=resumed,
                          n_binary_docs=n_binary,
                          headline=f"profiled {prof.n_tokens} tokens in {n_docs} documents at "
                                   f"{', '.join(prof.site_names)} ({seconds}s){skipped}")
