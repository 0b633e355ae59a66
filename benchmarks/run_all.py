"""Run every benchmark in its own subprocess and write benchmarks/RESULTS.md (what `make bench` does).

    python benchmarks/run_all.py [--only compare,memory] [--quick] [--out benchmarks/RESULTS.md]

RESULTS.md is generated: the machine, the versions, the date, and for each table the command that produced it and
its output. Hand-written analysis lives in benchmarks/NOTES.md and is copied in as the "Notes" section; GPU results
come from benchmarks/results-gpu.md (written by benchmarks/gpu.sh on a GPU machine) when it exists. With --only, the
other steps' sections are kept from the existing RESULTS.md (``--only none`` re-renders the GPU and Notes sections).
Run it with the benchmark environment's Python (`.venv-bench/bin/python`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


@dataclass
class Step:
    key: str
    title: str
    args: list[str]
    quick_args: list[str]
    about: str


STEPS = [
    Step("capture", "Capture overhead",
         ["benchmarks/capture_overhead.py", "--rounds", "2", "--batches", "10"],
         ["benchmarks/capture_overhead.py", "--rounds", "1", "--batches", "2"],
         "Our streaming profiles against the plain Hugging Face forward (GPT-2-small-sized model, random weights)."),
    Step("compare", "Same statistics, three libraries: GPT-2-small-sized model, random weights",
         ["benchmarks/compare_libraries.py", "--rounds", "3", "--batches", "8"],
         ["benchmarks/compare_libraries.py", "--rounds", "1", "--batches", "2", "--batch-size", "4", "--seq", "64"],
         "Ours against TransformerLens (TransformerBridge) and nnsight computing the same per-neuron statistics "
         "(mean, variance, min, max, top-32 values) over every MLP site, on the same batches."),
    Step("compare-smollm2", "Same statistics, three libraries: SmolLM2-135M, real weights",
         ["benchmarks/compare_libraries.py", "--model", "smollm2", "--rounds", "2", "--batches", "4"],
         ["benchmarks/compare_libraries.py", "--model", "smollm2", "--rounds", "1", "--batches", "1",
          "--batch-size", "4", "--seq", "64"],
         "The same comparison on a gated-MLP (Llama-family) model with real weights: the neurons are the input of "
         "mlp.down_proj, act(gate) * up."),
    Step("corpus-batching", "Profiling the built-in corpus: batches by length",
         ["benchmarks/corpus_batching.py", "--docs", "800", "--rounds", "2"],
         ["benchmarks/corpus_batching.py", "--docs", "64", "--rounds", "1", "--batch-sizes", "16"],
         "The library comparisons use equal-length rows (no padding); real corpora have documents of very "
         "different lengths. `profile` batches documents by length within windows of 16 batches; the baseline is "
         "the same call with batches in corpus order."),
    Step("memory", "Memory scaling",
         ["benchmarks/memory_scaling.py", "--tokens", "10000,100000,1000000"],
         ["benchmarks/memory_scaling.py", "--tokens", "2000,6000"],
         "Peak memory of a streaming profile should not grow with the corpus."),
    Step("detection", "Polysemantic detection over one full layer",
         ["benchmarks/detection_timing.py"],
         ["benchmarks/detection_timing.py", "--max-tokens", "2000"],
         "SmolLM2-135M-Instruct, one layer (1,536 neurons), the built-in corpus, the default embedder (the subject "
         "model's reading plus MiniLM's window view) split by stage, and MiniLM alone as the baseline in the same "
         "process."),
    Step("labelled-neurons", "The detector against blind labels of real neurons",
         ["benchmarks/labelled_neurons/evaluate.py"],
         ["benchmarks/labelled_neurons/evaluate.py"],
         "250 SmolLM2 neurons drawn at random (200 from layers 3, 9, 15, 21; 50 held out from layer 6), each "
         "labelled MONO, POLY or UNCLEAR by three blind annotators from benchmarks/labelled_neurons/RUBRIC.md and "
         "the sheets alone; the detector with its defaults on the same profile (the default investigation's: "
         "20,000 tokens of the built-in corpus)."),
    Step("detection-seeds", "Does the verdict move with the seed?",
         ["benchmarks/detection_seeds.py"],
         ["benchmarks/detection_seeds.py", "--max-tokens", "3000", "--seeds", "0,1"],
         "One full SmolLM2 layer, the detector's defaults, seeds 0-4: how much the detected set changes between "
         "two seeds (goal: at most 5 %)."),
    Step("detection-planted", "Planted neurons among a whole real layer",
         ["benchmarks/detection_planted.py"],
         ["benchmarks/detection_planted.py", "--docs", "100", "--n-null", "20"],
         "The test suite's 8 OR and 12 single-concept neurons planted into SmolLM2's layer 6, and the detector run "
         "over all 1,536 neurons of the layer: where the planted ones rank among the real ones, and what is "
         "detected."),
    Step("distributed", "Ray against the local executor",
         ["benchmarks/distributed.py"],
         ["benchmarks/distributed.py", "--max-tokens", "3000", "--neurons", "32"],
         "A local Ray instance with 2 CPUs on this machine: the sharded profile and the detector's null on Ray "
         "tasks against the local executor in the same process, and what one shard costs."),
]


def _run(step: Step, quick: bool, timeout: float) -> tuple[str, float, str | None]:
    """(stdout, seconds, error or None)."""
    cmd = [sys.executable, *(step.quick_args if quick else step.args)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    print(f"== {step.key}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return out, time.perf_counter() - start, f"timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    print(done.stdout, flush=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        print(tail, file=sys.stderr)
        return done.stdout, seconds, f"exit code {done.returncode}:\n\n```\n{tail}\n```"
    return done.stdout, seconds, None


def _tree_state() -> str:
    """The commit the benchmarks ran at, and whether tracked files differed from it (the numbers then belong to
    that working tree, not to the commit alone)."""
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "commit unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"commit {commit}" + (" + uncommitted changes" if dirty else "")


def _machine_section() -> str:
    from _common import machine_info

    info = machine_info()
    v = info["versions"]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    lines = [
        f"- CPU: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM; GPU: {info['gpu'] or 'none'}",
        f"- {info['platform']}; load average when the run started: {load}",
        f"- Python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, transformer-lens "
        f"{v['transformer-lens']}, nnsight {v['nnsight']}, numpy {v['numpy']}, "
        f"neuron-workbench {v['neuron-workbench']}",
        f"- torch threads: {info['torch_threads']} (every variant of a script runs with the same setting)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated steps: " + ", ".join(s.key for s in STEPS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the whole pipeline")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per step")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - {s.key for s in STEPS} - {"none"}
    if unknown:
        raise SystemExit(f"unknown steps {sorted(unknown)}; choose from {[s.key for s in STEPS]}")

    started = _dt.datetime.now()
    machine = _machine_section()
    tree = _tree_state()
    previous = Path(args.out).read_text() if Path(args.out).exists() else ""
    kept_machine = re.search(r"<!-- machine -->\n(.*?)\n<!-- /machine -->", previous, re.S)
    if only and kept_machine:  # the kept sections were measured there
        machine = kept_machine.group(1)
    sections = []
    total = time.perf_counter()
    for step in STEPS:
        if only and step.key not in only:
            kept = re.search(rf"<!-- step:{re.escape(step.key)} -->\n.*?<!-- /step -->", previous, re.S)
            if kept:
                sections.append(kept.group(0))
            continue
        out, seconds, error = _run(step, args.quick, args.timeout)
        cmd = "python " + " ".join(step.quick_args if args.quick else step.args)
        body = [f"<!-- step:{step.key} -->", f"## {step.title}", "", step.about, "",
                f"Command: `{cmd}` ({seconds:.0f} s, {_dt.datetime.now():%Y-%m-%d}, {tree})", "", out.strip()]
        if error:
            body += ["", f"**This step failed**: {error}"]
        body.append("<!-- /step -->")
        sections.append("\n".join(body))
    total_s = time.perf_counter() - total

    gpu = HERE / "results-gpu.md"
    if gpu.exists():
        gpu_text = gpu.read_text().strip()
        if gpu_text.startswith("# "):  # demote its title under ours
            gpu_text = gpu_text.split("\n", 1)[1].strip() if "\n" in gpu_text else ""
        gpu_text = re.sub(r"^(#+) ", r"#\1 ", gpu_text, flags=re.M)  # its sections go under "## GPU"
        gpu_section = ("## GPU\n\nFrom `benchmarks/results-gpu.md`, written by `benchmarks/gpu.sh` on a GPU "
                       "machine:\n\n" + gpu_text)
    else:
        gpu_section = ("## GPU\n\nNot run yet: `benchmarks/gpu.sh` writes `results-gpu.md` on a GPU machine; copy it "
                       "to `benchmarks/results-gpu.md` and run `.venv-bench/bin/python benchmarks/run_all.py --only "
                       "none` to include it here (the other sections are kept).")
    notes = HERE / "NOTES.md"
    notes_text = notes.read_text().strip() if notes.exists() else ""
    if notes_text.startswith("# "):
        notes_text = notes_text.split("\n", 1)[1].strip() if "\n" in notes_text else ""
    notes_text = re.sub(r"^(#+) ", r"#\1 ", notes_text, flags=re.M)  # its sections go under "## Notes"
    scope = "a quick smoke run (`--quick`: tiny sizes, not for quoting)" if args.quick else "`make bench`"
    if only:
        ran = sorted(only - {"none"})
        generated = (f"Rewritten by `benchmarks/run_all.py --only {args.only}` on {started:%Y-%m-%d %H:%M}: "
                     + (f"{', '.join(ran)} ran now, " if ran else "no benchmark ran now, ")
                     + "the other sections are kept from earlier runs (each gives its command and date).")
    else:
        generated = (f"Generated by {scope} (`benchmarks/run_all.py`) on {started:%Y-%m-%d %H:%M}, in "
                     f"{total_s / 60:.0f} minutes.")
    doc = [
        "# Benchmark results",
        "",
        generated + " This file is rewritten by each run: put analysis in `benchmarks/NOTES.md`, which is copied in "
        "below.",
        "",
        "## Machine",
        "",
        "<!-- machine -->",
        machine,
        "<!-- /machine -->",
        "",
        *[s + "\n" for s in sections],
        gpu_section,
        "",
        "## Notes",
        "",
        "From `benchmarks/NOTES.md` (hand-written; the numbers in it are from the runs it names, not necessarily "
        "the tables above).",
        "",
        notes_text,
        "",
    ]
    Path(args.out).write_text("\n".join(doc))
    print(f"wrote {args.out} ({total_s / 60:.1f} min)")


if __name__ == "__main__":
    main()
