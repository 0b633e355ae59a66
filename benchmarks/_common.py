"""Helpers shared by the benchmark scripts (benchmarks/ is outside the package; nothing here is public API).

- ``load_tokenizer``: SmolLM2's tokenizer (from the bundled GGUF), or a saved tokenizer folder where the bundled
  weights are not installed (the GPU machine: ``benchmarks/gpu_wheels.sh`` saves it next to the wheels).
- ``corpus_rows``: the built-in corpus tokenised, concatenated (cycled when needed) and cut into equal rows, so
  every library gets the same pre-tokenised batches with no padding.
- ``PeakMemory``: peak memory of a block of code above its start (CPU: RSS sampled by a thread; CUDA: the caching
  allocator's peak).
- ``StreamingStats``: the per-neuron statistics a TransformerLens or nnsight user computes from each batch's
  cached activations (one implementation for both, so the comparison is fair).
- ``machine_info`` / ``markdown_table``.
"""

from __future__ import annotations

import math
import os
import platform
import threading
from collections.abc import Sequence
from typing import Any

import torch

TOKENIZER_ENV = "NW_BENCH_TOKENIZER"


def load_tokenizer(path: str | None = None) -> Any:
    """SmolLM2-135M's tokenizer: from ``path`` / $NW_BENCH_TOKENIZER if given, else from the bundled GGUF."""
    path = path or os.environ.get(TOKENIZER_ENV)
    if path:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    from neuron_core import load_model

    # GPT-2's own tokenizer is not available offline; SmolLM2's ids (< 49,152) fit GPT-2's vocabulary (50,257).
    return load_model("smollm2-135m", device="cpu").tokenizer


def corpus_rows(tok: Any, n_rows: int, seq: int) -> list[list[int]]:
    """``n_rows`` rows of ``seq`` token ids: the built-in corpus, one line per document, concatenated (cycled)."""
    from neuron_core.corpus import builtin_corpus

    need = n_rows * seq
    ids: list[int] = []
    texts = list(builtin_corpus().texts())
    while len(ids) < need:
        for text in texts:
            ids.extend(tok(text + "\n")["input_ids"])
            if len(ids) >= need:
                break
    return [ids[i * seq:(i + 1) * seq] for i in range(n_rows)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device) -> None:
    """Free what can be freed before a memory measurement (garbage, glibc's free lists, CUDA's cache)."""
    import ctypes
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """``with PeakMemory(device) as m: ...``; then ``m.peak_bytes`` is the peak above the start.

    CPU: the process's RSS, sampled every ``interval`` seconds by a background thread (plus once at each end).
    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the allocation at the start.
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.002) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.start_bytes = 0
        self.peak_bytes = 0
        self.peak_abs_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> int:
        return int(self._proc.memory_info().rss)

    def _sample(self) -> None:
        peak = self.start_bytes
        while not self._stop.wait(self.interval):
            peak = max(peak, self._rss())
        self.peak_abs_bytes = max(peak, self._rss())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            import psutil

            self._proc = psutil.Process()
            self.start_bytes = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak_abs_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
        self.peak_bytes = max(0, self.peak_abs_bytes - self.start_bytes)


class StreamingStats:
    """Per-neuron count, mean and population variance (float64, Chan merge), min, max and the top-k values.

    What a TransformerLens or nnsight user writes: take each batch's cached activations ``[batch, pos, neurons]``,
    keep the non-padding tokens, update the running statistics; the top-k by concatenating the running top-k with the
    batch and taking the top-k again. Runs on the activations' device.
    """

    def __init__(self, k: int = 32) -> None:
        self.k = k
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None
        self.min: torch.Tensor | None = None
        self.max: torch.Tensor | None = None
        self.top: torch.Tensor | None = None  # [k, neurons], descending

    def add(self, acts: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """acts [batch, pos, neurons] (or [tokens, neurons]); mask [batch, pos] of real tokens."""
        x = acts[mask] if mask is not None else acts.reshape(-1, acts.shape[-1])
        n = int(x.shape[0])
        if n == 0:
            return
        var, mean = torch.var_mean(x.double(), dim=0, correction=0)
        if self.mean is None or self.m2 is None or self.min is None or self.max is None:
            self.mean, self.m2 = mean, var * n
            self.min, self.max = x.amin(0), x.amax(0)
        else:
            total = self.count + n
            delta = mean - self.mean
            self.mean = self.mean + delta * (n / total)
            self.m2 = self.m2 + var * n + delta.square() * (self.count * n / total)
            self.min = torch.minimum(self.min, x.amin(0))
            self.max = torch.maximum(self.max, x.amax(0))
        self.count += n
        candidates = x if self.top is None else torch.cat([self.top, x], dim=0)
        self.top = torch.topk(candidates, min(self.k, candidates.shape[0]), dim=0).values

    def result(self) -> dict[str, torch.Tensor]:
        """mean, var, min, max [neurons] and top [neurons, k], on the CPU."""
        assert self.mean is not None and self.m2 is not None and self.top is not None
        assert self.min is not None and self.max is not None
        return {"mean": self.mean.cpu(), "var": (self.m2 / self.count).cpu(), "min": self.min.double().cpu(),
                "max": self.max.double().cpu(), "top": self.top.T.double().cpu()}


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, GPU (if any), Python and library versions."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = None
    try:
        import psutil

        ram = psutil.virtual_memory().total
    except ImportError:
        pass
    versions: dict[str, str] = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "transformer-lens", "nnsight", "numpy", "neuron-workbench"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": None if ram is None else round(ram / 2**30, 1),
            "gpu": gpu, "torch_threads": torch.get_num_threads(), "versions": versions,
            "platform": platform.platform()}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one letter per column, ``l`` or ``r`` (default: first l, rest r)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mib(n_bytes: float | None) -> str:
    if n_bytes is None or (isinstance(n_bytes, float) and math.isnan(n_bytes)):
        return "n/a"
    return f"{n_bytes / 2**20:,.0f}"
