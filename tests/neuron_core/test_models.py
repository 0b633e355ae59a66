"""Model loading: aliases, bundled models, the GGUF cache, and clear errors for models that are not available."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from neuron_core import InputError, LoadedModel, ModelNotAvailableError, load_model
from neuron_core import models as models_mod


def test_smollm2_facts(smollm):
    assert smollm.family == "llama"
    assert smollm.n_layers == 30
    assert smollm.d_mlp == 1536
    assert smollm.d_model == 576
    assert smollm.is_causal_lm
    assert smollm.device.type == "cpu"
    assert smollm.dtype == torch.float32
    assert smollm.sites.canonical_names()[6] == "blocks.6.mlp.hook_post"


def test_smollm2_real_weights_predict(smollm):
    tok = smollm.tokenizer
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = smollm.model(**ids).logits
    assert tok.decode(logits[0, -1].argmax()).strip() == "Paris"


def test_minilm_facts(minilm):
    assert minilm.family == "bert"
    assert minilm.n_layers == 6
    assert minilm.d_mlp == 1536
    assert not minilm.is_causal_lm


def test_gguf_cache_reused_and_fast(smollm):
    # The session fixture converted (or reused) the cache; a second load must come from the cache.
    start = time.perf_counter()
    again = load_model("smollm2-135m", device="cpu")
    elapsed = time.perf_counter() - start
    assert again.weights_hash() == smollm.weights_hash()
    assert elapsed < 10, f"cached load took {elapsed:.1f}s"  # the conversion itself takes ~17 s
    cached = list((models_mod.cache_dir() / "gguf").glob("SmolLM2-135M-Instruct*"))
    assert any((c / ".complete").exists() for c in cached)


def _fake_convert(calls):
    def convert(gguf: Path, out: Path, sha: str) -> None:
        calls.append(sha)
        (out / "model.safetensors").write_bytes(b"weights")

    return convert


def test_gguf_cache_atomic_and_invalidated(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURON_WORKBENCH_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "m.gguf"
    src.write_bytes(b"version one")
    calls: list[str] = []
    first, sha1 = models_mod._gguf_cached_folder(src, _fake_convert(calls))
    again, _ = models_mod._gguf_cached_folder(src, _fake_convert(calls))
    assert first == again and len(calls) == 1  # converted once, reused after
    src.write_bytes(b"version two")  # a changed source gets another folder
    second, sha2 = models_mod._gguf_cached_folder(src, _fake_convert(calls))
    assert second != first and sha2 != sha1 and len(calls) == 2

    def broken(gguf: Path, out: Path, sha: str) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    src.write_bytes(b"version three")
    with pytest.raises(KeyboardInterrupt):
        models_mod._gguf_cached_folder(src, broken)
    leftovers = [p for p in (tmp_path / "cache" / "gguf").iterdir() if "version" not in p.name]
    assert all((p / ".complete").exists() for p in leftovers), "a half-written cache folder was left behind"
    # an incomplete folder at the target name (e.g. copied by hand) is never used
    target = tmp_path / "cache" / "gguf" / f"m-{models_mod._file_sha256(src)[:16]}"
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"partial")
    third, _ = models_mod._gguf_cached_folder(src, _fake_convert(calls))
    assert third == target and (third / ".complete").exists() and len(calls) == 3


def test_missing_gpt2_is_a_clear_fast_error(tmp_path):
    # A fresh process with an empty HF cache and no network: must fail within 5 s with advice.
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="0")
    code = ("import time; t=time.time()\n"
            "from neuron_core import load_model, ModelNotAvailableError\n"
            "t=time.time()\n"
            "try:\n    load_model('gpt2')\nexcept ModelNotAvailableError as e:\n"
            "    print('ELAPSED', time.time()-t); print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "ELAPSED" in out.stdout, out.stderr[-2000:]
    elapsed = float(out.stdout.split("ELAPSED")[1].split()[0])
    assert elapsed < 5.0, f"took {elapsed:.1f}s to report a missing model"
    assert "smollm2-135m" in out.stdout and "minilm" in out.stdout  # says what works offline
    assert "download" in out.stdout


def test_missing_gpt2_offline_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="offline|HF_HUB_OFFLINE"):
        load_model("gpt2")


def test_bad_names_and_options(tmp_path):
    with pytest.raises(InputError):
        load_model("")
    with pytest.raises(ModelNotAvailableError, match="no such file"):
        load_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(InputError, match="dtype"):
        load_model("smollm2-135m", dtype="float7")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            load_model("smollm2-135m", device="cuda")


def test_local_folder_roundtrip(tmp_path, tok):
    from tests.conftest import make_tiny_gpt2

    model = make_tiny_gpt2(tok, n_layer=2)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    lm = load_model(str(tmp_path / "tiny"), device="auto")
    assert lm.family == "gpt2" and lm.n_layers == 2 and lm.d_mlp == 256
    x = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.allclose(lm.model(x).logits, model(x).logits, atol=1e-6)


def test_pickle_checkpoints_refused(tmp_path, tok):
    from tests.conftest import make_tiny_gpt2

    model = make_tiny_gpt2(tok, n_layer=1)
    folder = tmp_path / "pkl"
    folder.mkdir()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # a pickle checkpoint, as older repos ship
    tok.save_pretrained(folder)
    with pytest.raises(ModelNotAvailableError, match="pickle|safetensors"):
        load_model(str(tmp_path / "pkl"))


def test_from_module_facts(tiny_gpt2):
    lm = tiny_gpt2.loaded
    assert isinstance(lm, LoadedModel)
    assert (lm.family, lm.n_layers, lm.d_mlp, lm.context_length) == ("gpt2", 3, 256, 128)
    assert len(lm.weights_hash()) == 64
