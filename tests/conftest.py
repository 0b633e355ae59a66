"""Shared fixtures: the bundled models (real weights, offline) and tiny random models for fast tests."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def smollm():
    """SmolLM2-135M-Instruct, real weights (bundled)."""
    from neuron_core import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def tok(smollm):
    """A real BPE tokenizer (GPT-2's own is not available offline)."""
    return smollm.tokenizer


@pytest.fixture(scope="session")
def minilm():
    from neuron_core import load_model

    return load_model("minilm", device="cpu")


def make_tiny_gpt2(tok, n_layer: int = 3, seed: int = 0, **kw):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_embd=64, n_head=4, n_positions=128, vocab_size=len(tok),
                        bos_token_id=0, eos_token_id=0, **kw)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="session")
def tiny_gpt2(tok):
    """A 3-layer random-weight GPT-2 (d_model 64, 256 neurons per MLP) wrapped with a real tokenizer."""
    from neuron_core import ModelInterface

    return ModelInterface(make_tiny_gpt2(tok), tokenizer=tok, name="tiny-gpt2")


@pytest.fixture(scope="session")
def builtin_texts():
    from neuron_core.corpus import builtin_corpus

    return builtin_corpus().texts()


@pytest.fixture(scope="session")
def ray_instance():
    """A local Ray instance for the session's Ray tests (2 CPUs, no dashboard); stopped at the end, and no Ray
    process may be left behind."""
    import subprocess
    import time

    ray = pytest.importorskip("ray", reason="Ray is the optional extra .[ray]: make test installs it")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
    for _ in range(60):  # the processes take a moment to go
        left = subprocess.run(["pgrep", "-f", "raylet|gcs_server|ray::"], capture_output=True, text=True).stdout
        if not left.strip():
            break
        time.sleep(0.5)
    assert not left.strip(), f"Ray processes left behind: {left}"
