"""Campaigns: a YAML list of requests, run one after another into one output folder.

Usage::

    python -m workflows.campaign campaign.yaml [--out runs] [--llm scripted]

``campaign.yaml`` is either a list of requests::

    - investigate layer 6 of smollm2-135m
    - explain neuron 6/1233 of smollm2-135m

or a mapping with defaults applied to every request (a request may override them)::

    name: layers-of-smollm2
    defaults: {max_tokens: 20000, max_neurons: 64, llm: scripted}
    requests:
      - investigate layer 3 of smollm2-135m
      - {request: investigate layer 6 of smollm2-135m, max_neurons: 32}

Options: model, layers, corpus, max_tokens, max_neurons, top_n, llm, device, seed, embedder. Each request gets its own
run folder inside ``<out>/<name>-<timestamp>/``; models load once for the whole campaign. ``campaign.json`` (and
``campaign.md``) list each request's status, reason and report. Exit status: 0 when every run is done, else the
first failing run's status (1 failed, 2 rejected, 3 stopped).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["Campaign", "CampaignItem", "load_campaign", "run_campaign", "main"]


class CampaignItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request: str = Field(min_length=1)
    model: str | None = None
    layers: list[int] | None = None
    corpus: str | None = None
    max_tokens: int | None = Field(default=None, ge=64)
    max_neurons: int | None = Field(default=None, ge=1)
    top_n: int | None = Field(default=None, ge=1)
    llm: str | None = None
    device: str | None = None
    seed: int = 0
    embedder: str | None = None


class Campaign(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "campaign"
    defaults: dict[str, Any] = Field(default_factory=dict)
    requests: list[CampaignItem] = Field(min_length=1)


def load_campaign(path: str | Path) -> Campaign:
    """Read and validate a campaign file; ValueError says what is wrong with it."""
    import yaml

    source = Path(path)
    if not source.exists():
        raise ValueError(f"campaign file {str(source)!r} not found")
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not valid YAML ({exc})") from None
    if isinstance(data, list):
        data = {"requests": data}
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a list of requests or a mapping with 'requests'")
    data.setdefault("name", source.stem)
    defaults = dict(data.get("defaults") or {})
    items = []
    for entry in data.get("requests") or []:
        item = {"request": entry} if isinstance(entry, str) else dict(entry) if isinstance(entry, dict) else entry
        items.append({**defaults, **item} if isinstance(item, dict) else item)
    data["requests"] = items
    try:
        return Campaign.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{source}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


class ItemResult(BaseModel):
    request: str
    status: str
    exit_code: int
    reason: str
    run_dir: str | None
    report: str | None


async def run_campaign(campaign: Campaign, out: str | Path, settings: Any = None, *, echo: Any = None,
                       models: dict[str, Any] | None = None) -> tuple[Path, list[ItemResult]]:
    """Run every request in order into one folder; returns the folder and one result per request."""
    from agents.settings import WorkbenchSettings
    from neuron_core.store import RunFolder, slugify
    from workflows.investigation import Investigation, RunOptions

    settings = settings or WorkbenchSettings()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = RunFolder(Path(out) / f"{slugify(campaign.name)}-{stamp}")
    shared: dict[str, Any] = models if models is not None else {}
    results: list[ItemResult] = []
    for i, item in enumerate(campaign.requests, 1):
        if echo is not None:
            echo(f"[{i}/{len(campaign.requests)}] {item.request}")
        options = RunOptions(**item.model_dump(), out=str(folder.root))
        result = await Investigation(options, settings, models=shared).run()
        results.append(ItemResult(request=item.request, status=result.status, exit_code=result.exit_code,
                                  reason=result.reason, run_dir=result.run_dir, report=result.report))
        if echo is not None:
            echo(f"    {result.status}: {result.report or result.reason}")
        folder.write_json("campaign.json", {"name": campaign.name, "results": [r.model_dump() for r in results]})
    lines = [f"# Campaign: {campaign.name}", "", "| # | request | status | report |", "|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        link = f"[report]({Path(r.report).relative_to(folder.root)})" if r.report else r.reason.replace("|", "/")
        lines.append(f"| {i} | {r.request.replace('|', '/')} | {r.status} | {link} |")
    folder.write_text("campaign.md", "\n".join(lines) + "\n")
    return folder.root, results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workflows.campaign", description=__doc__.split("\n\n")[0])
    p.add_argument("file", help="campaign YAML file")
    p.add_argument("--out", default=None, help="parent folder (default NW_RUNS_DIR, runs)")
    p.add_argument("--llm", default=None, help="LLM backend for every request that does not name one")
    args = p.parse_args(argv)
    from agents.settings import WorkbenchSettings

    try:
        campaign = load_campaign(args.file)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.llm:
        campaign = campaign.model_copy(update={"requests": [
            item.model_copy(update={"llm": item.llm or args.llm}) for item in campaign.requests]})
    settings = WorkbenchSettings()
    folder, results = asyncio.run(run_campaign(campaign, args.out or settings.runs_dir, settings,
                                               echo=lambda line: print(line, flush=True)))
    print(f"campaign: {folder / 'campaign.md'}")
    failing = [r for r in results if r.exit_code != 0]
    if failing:
        print(f"error: {len(failing)} of {len(results)} runs did not finish; first: {failing[0].reason}",
              file=sys.stderr)
        return failing[0].exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
