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

Options: model, layers, corpus, max_tokens, max_neurons, top_n, llm, device, seed, embedder (checked by the same
rules as ``workflows.run``'s flags). The campaign's folder is ``<out>/<name>/``, locked while a campaign runs in it;
each experiment (a request with its options) gets its own run folder inside ``<key>/``, where ``key`` hashes the
experiment; an entry repeated word for word runs once. Models load once for the whole campaign. ``campaign.json``
(and ``campaign.md``) list each entry's status, reason and report, after every experiment.

Started again (after Ctrl-C, a kill, a crash), a campaign skips the experiments that are done, resumes the one that
was cut off and runs the rest. Exit status: 0 when every run is done; 130 when interrupted (Ctrl-C: run the same
command again to go on); 2 for a bad campaign file or a folder another campaign is using; else the first failing
run's status (1 failed, 2 rejected, 3 stopped).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import itertools
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from neuron_core.distributed import Executor, check_executor, run_tasks
from workflows.investigation import RequestOptions

__all__ = ["Campaign", "CampaignItem", "load_campaign", "run_campaign", "main"]


class CampaignItem(RequestOptions):
    """One experiment of a campaign: a request and its options, with the ranges every entry point checks."""

    @property
    def key(self) -> str:
        """The experiment's identity: a hash of its request and options. Two entries with one key are one
        experiment (it runs once); a campaign started again finds an experiment's run folder by it."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


class Sweep(BaseModel):
    """Experiments written once: every request runs for each layer x model x seed given (a missing axis keeps the
    request's own). ``layers`` takes ``"0-29"``, ``"3,5,7"`` or a list."""

    model_config = ConfigDict(extra="forbid")

    layers: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1)
    models: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    seeds: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1)

    @field_validator("layers", mode="before")
    @classmethod
    def _layer_ranges(cls, value: Any) -> Any:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            from workflows.run import parse_layers

            try:
                return parse_layers(str(value))
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise ValueError(f"not a layer range: {value!r} ({exc})") from None
        return value

    def expand(self, entry: dict[str, Any]) -> list[dict[str, Any]]:
        """One entry per combination; ``{layer}``, ``{model}`` and ``{seed}`` in the request are filled in."""
        out = []
        layers: list[int | None] = [*self.layers] if self.layers else [None]
        models: list[str | None] = [*self.models] if self.models else [None]
        seeds: list[int | None] = [*self.seeds] if self.seeds else [None]
        for layer, model, seed in itertools.product(layers, models, seeds):
            item = dict(entry)
            fill = {"layer": layer, "model": model or item.get("model") or "", "seed": seed}
            for key, value in (("layers", None if layer is None else [layer]), ("model", model), ("seed", seed)):
                if value is not None:
                    item[key] = value
            if isinstance(item.get("request"), str):
                item["request"] = re.sub(r"\{(layer|model|seed)\}", functools.partial(_fill, fill), item["request"])
            out.append(item)
        return out


def _fill(values: dict[str, Any], match: re.Match[str]) -> str:
    return str(values[match.group(1)])


class Campaign(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "campaign"
    defaults: dict[str, Any] = Field(default_factory=dict)
    sweep: Sweep | None = None
    requests: list[CampaignItem] = Field(min_length=1)


def load_campaign(path: str | Path) -> Campaign:
    """Read and validate a campaign file; ValueError says what is wrong with it."""
    import yaml

    source = Path(path)
    if not source.exists():
        raise ValueError(f"campaign file {str(source)!r} not found")
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"{source}: not valid YAML ({' '.join(str(exc).split())})") from None
    if isinstance(data, list):
        data = {"requests": data}
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a list of requests or a mapping with 'requests'")
    data = {"name": source.stem, **data}
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ValueError(f"{source}: defaults: expected a mapping of options, e.g. {{max_tokens: 20000}}")
    sweep = data.get("sweep")
    if sweep is not None and "requests" not in data:
        data["requests"] = ["investigate layer {layer} of {model}"]
    if not isinstance(data.get("requests"), list):
        raise ValueError(f"{source}: requests: expected a list of requests")
    data["requests"] = [{**defaults, **({"request": e} if isinstance(e, str) else e)} if isinstance(e, (str, dict))
                        else e for e in data["requests"]]
    where = "sweep."
    try:
        if sweep is not None:
            plan = Sweep.model_validate(sweep)
            data["requests"] = [x for e in data["requests"] for x in (plan.expand(e) if isinstance(e, dict) else [e])]
        where = ""
        return Campaign.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{source}: {where}{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


class ItemResult(BaseModel):
    request: str
    key: str
    status: str
    exit_code: int
    reason: str
    run_dir: str | None
    report: str | None
    resumed: bool = False
    duplicate_of: int | None = None  # 1-based index of the entry whose experiment this is


def _latest_run(parent: Path) -> Path | None:
    """The newest run folder of an experiment (folders with a manifest), or None."""
    runs = sorted(p for p in parent.glob("*/manifest.json")) if parent.is_dir() else []
    return runs[-1].parent if runs else None


def _stored_result(item: CampaignItem, run_dir: Path, manifest: dict[str, Any]) -> ItemResult | None:
    """A finished experiment's result, read back from its run folder's manifest (None unless it is done)."""
    if manifest.get("status") != "done":
        return None
    return ItemResult(request=item.request, key=item.key, status="done", exit_code=0,
                      reason=str(manifest.get("reason") or ""), run_dir=str(run_dir),
                      report=manifest.get("report"))


async def _run_item(item: CampaignItem, root: Path, settings: Any, shared: dict[str, Any]) -> ItemResult:
    """One experiment in ``root/<key>/``: skipped when a run there is done, resumed when one is unfinished (and got
    as far as a plan), else started."""
    from neuron_core.store import read_json_file
    from workflows.investigation import Investigation, RunOptions

    parent = root / item.key
    previous = _latest_run(parent)
    manifest = read_json_file(previous / "manifest.json", dict) if previous is not None else {}
    done = _stored_result(item, previous, manifest) if previous is not None else None
    if done is not None:
        return done
    resume = bool(manifest.get("plan"))
    options = RunOptions(**item.model_dump(), out=str(parent), resume=str(previous) if resume else None)
    result = await Investigation(options, settings, models=shared).run()
    return ItemResult(request=item.request, key=item.key, status=result.status, exit_code=result.exit_code,
                      reason=result.reason, run_dir=result.run_dir, report=result.report, resumed=resume)


async def run_campaign(campaign: Campaign, out: str | Path, settings: Any = None, *, echo: Any = None,
                       models: dict[str, Any] | None = None, executor: Executor = "local",
                       address: str | None = None) -> tuple[Path, list[ItemResult]]:
    """Run every experiment of a campaign into ``<out>/<name>/``; returns the folder and one result per entry.

    The folder is locked while the campaign runs (a second process on it gets RunFolderBusyError). Started again, a
    campaign skips the experiments that are done, resumes the unfinished ones and runs the rest: its summary is the
    one an uninterrupted run writes. ``executor="local"`` runs them in order here (models load once); Ctrl-C stops
    the current experiment cleanly (exit code 130 in its result; the entries after it are not run). ``"ray"`` runs
    each experiment as a Ray task (on the cluster at ``address``; a worker loads each model once)."""
    from agents.settings import WorkbenchSettings
    from neuron_core.store import RunFolder, slugify

    check_executor(executor, address)
    settings = settings or WorkbenchSettings()
    folder = RunFolder(Path(out) / slugify(campaign.name)).lock()
    try:
        folder.clean_temporaries()
        if executor == "local":
            results = await _run_here(campaign, folder, settings, models if models is not None else {}, echo)
        else:
            results = _run_on_ray(campaign, folder, settings, address, echo)
        _write_summary(folder, campaign, results, final=True)
        return folder.root, results
    finally:
        folder.unlock()


def _entry(results: list[ItemResult], first_of: dict[str, int], item: CampaignItem) -> ItemResult | None:
    """An entry whose experiment an earlier entry already ran: its result, marked as the same."""
    if item.key not in first_of:
        return None
    return results[first_of[item.key] - 1].model_copy(update={"duplicate_of": first_of[item.key]})


async def _run_here(campaign: Campaign, folder: Any, settings: Any, shared: dict[str, Any], echo: Any
                    ) -> list[ItemResult]:
    from workflows.investigation import EXIT_INTERRUPTED

    results: list[ItemResult] = []
    first_of: dict[str, int] = {}
    for i, item in enumerate(campaign.requests, 1):
        if echo is not None:
            echo(f"[{i}/{len(campaign.requests)}] {item.request}")
        result = _entry(results, first_of, item)
        if result is None:
            first_of[item.key] = i
            result = await _run_item(item, folder.root, settings, shared)
        results.append(result)
        if echo is not None:
            how = f" (same as #{result.duplicate_of})" if result.duplicate_of else (
                " (resumed)" if result.resumed else "")
            echo(f"    {result.status}{how}: {result.report or result.reason}")
        _write_summary(folder, campaign, results)
        if result.exit_code == EXIT_INTERRUPTED:
            break
    return results


@dataclass
class _ExperimentTask:
    item: CampaignItem
    root: str
    settings: Any


_WORKER_MODELS: dict[str, Any] = {}  # a Ray worker's loaded models, kept for its next experiment


def _run_experiment(task: _ExperimentTask) -> ItemResult:
    """One experiment in a Ray worker (module level, so Ray can import it)."""
    return asyncio.run(_run_item(task.item, Path(task.root), task.settings, _WORKER_MODELS))


def _run_on_ray(campaign: Campaign, folder: Any, settings: Any, address: str | None, echo: Any) -> list[ItemResult]:
    unique: dict[str, CampaignItem] = {}
    for item in campaign.requests:
        unique.setdefault(item.key, item)
    if echo is not None:
        echo(f"{len(unique)} experiments as Ray tasks{' on ' + address if address else ''}")
    done = run_tasks(_run_experiment, [_ExperimentTask(item, str(folder.root), settings) for item in unique.values()],
                     executor="ray", address=address, max_retries=1,
                     on_wait=(lambda n: echo(f"    {n}/{len(unique)} done")) if echo is not None else None)
    by_key = dict(zip(unique, done, strict=True))
    results: list[ItemResult] = []
    first_of: dict[str, int] = {}
    for i, item in enumerate(campaign.requests, 1):
        result = _entry(results, first_of, item)
        if result is None:
            first_of[item.key] = i
            result = by_key[item.key]
        results.append(result)
    return results


def _write_summary(folder: Any, campaign: Campaign, results: list[ItemResult], final: bool = False) -> None:
    """``campaign.json`` and ``campaign.md``: every entry, the ones not run yet marked so; at the end (``final``)
    also the table of every experiment's key numbers and the HTML index (:mod:`workflows.campaign_report`)."""
    if final:
        from workflows.campaign_report import summary_rows, write_summary_files

        write_summary_files(folder, campaign.name, summary_rows(results))
    rows = [r.model_dump() for r in results] + [
        {"request": item.request, "key": item.key, "status": "not run"} for item in campaign.requests[len(results):]]
    complete = len(results) == len(campaign.requests) and not (results and results[-1].exit_code == 130)
    folder.write_json("campaign.json", {"name": campaign.name, "complete": complete, "results": rows})
    lines = [f"# Campaign: {campaign.name}", "", "| # | request | status | report |", "|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        report = r.get("report")
        link = f"[report]({Path(report).relative_to(folder.root)})" if report else str(r.get("reason") or "")
        status = r["status"] + (f" (same as #{r['duplicate_of']})" if r.get("duplicate_of") else "")
        lines.append(f"| {i} | {r['request'].replace('|', '/')} | {status} | {link.replace('|', '/')} |")
    folder.write_text("campaign.md", "\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workflows.campaign", description=__doc__.split("\n\n")[0])
    p.add_argument("file", help="campaign YAML file")
    p.add_argument("--out", default=None, help="parent folder (default NW_RUNS_DIR, runs)")
    p.add_argument("--llm", default=None, help="LLM backend for every request that does not name one")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="run the experiments in order here (local) or as Ray tasks (pip install -e '.[ray]')")
    p.add_argument("--address", default=None, help="a Ray cluster to use (e.g. auto, or ray://HEAD:10001)")
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
    from neuron_core.errors import FrameworkNotAvailableError, InputError, RunFolderError
    from workflows.investigation import EXIT_INTERRUPTED

    settings = WorkbenchSettings()
    try:
        folder, results = asyncio.run(run_campaign(campaign, args.out or settings.runs_dir, settings,
                                                   echo=lambda line: print(line, flush=True),
                                                   executor=args.executor, address=args.address))
    except (RunFolderError, FrameworkNotAvailableError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C while the first was being handled
        from agents.worker import interrupt_worker

        interrupt_worker(timeout=10)
        print("interrupted; run the same command again to go on", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"campaign: {folder / 'index.html'} (table: {folder / 'summary.csv'})")
    if results and results[-1].exit_code == EXIT_INTERRUPTED:
        print(f"interrupted after {len(results) - 1} of {len(campaign.requests)} experiments; run the same command "
              "again to go on (finished experiments are not run again)", file=sys.stderr)
        return EXIT_INTERRUPTED
    failing = [r for r in results if r.exit_code != 0]
    if failing:
        print(f"error: {len(failing)} of {len(results)} runs did not finish; first: {failing[0].reason}",
              file=sys.stderr)
        return failing[0].exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
