"""Input that tries to break capture and profiling: the older list of the faults issue, one test per case."""

from __future__ import annotations

import errno
import gc
import os

import psutil
import pytest
import torch

from neuron_core import ActivationMonitor, ModelInterface, TextTooLongError, profile
from neuron_core.errors import RunFolderError
from neuron_core.store import RunFolder, atomic_write_text
from tests.conftest import make_tiny_gpt2


def test_layer_numbering_follows_output_hidden_states(tiny_gpt2):
    """``blocks.L`` is HF's block L: its input is ``hidden_states[L]`` and its output ``hidden_states[L + 1]``
    (checked with plain torch hooks, not neuron_core's), and the site's module lives inside that block."""
    model = tiny_gpt2.module
    ids = tiny_gpt2.tokenizer("The cat sat on the mat.", return_tensors="pt")
    blocks = model.transformer.h
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = [b.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, (a[0], o[0] if isinstance(
        o, tuple) else o))) for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            hidden = model(**ids, output_hidden_states=True).hidden_states
    finally:
        for h in handles:
            h.remove()
    for layer in range(len(blocks)):
        site = tiny_gpt2.resolve(layer)
        assert site.name == f"blocks.{layer}.mlp.hook_post" and site.module_path.startswith(f"transformer.h.{layer}.")
        torch.testing.assert_close(seen[layer][0], hidden[layer])
        if layer < len(blocks) - 1:  # the last hidden state has the final layer norm applied
            torch.testing.assert_close(seen[layer][1], hidden[layer + 1])
    assert tiny_gpt2.resolve(-1).name == f"blocks.{len(blocks) - 1}.mlp.hook_post"


@pytest.mark.parametrize("text", ["a NUL \x00 in the middle", "emoji \U0001F600\U0001F680, a flag \U0001F1EB\U0001F1F7",
                                  "\x00", "\U0001F600"])
def test_nul_and_emoji_text_is_captured_as_text(tiny_gpt2, text):
    record = ActivationMonitor(tiny_gpt2, [0]).capture(text)
    n = len(tiny_gpt2.tokenizer(text)["input_ids"])
    assert len(record) == n and torch.isfinite(record[0]).all()


def test_a_one_megabyte_line_is_profiled_in_windows(tiny_gpt2, tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("the river runs past the mill " * 36_000 + "\nshort second document\n")  # ~1 MB line
    assert path.stat().st_size > 1_000_000
    truncated = profile(tiny_gpt2, [0], str(path), max_tokens=4_000, progress=False)  # the default: truncate
    assert truncated.n_tokens == 128 + 3 and truncated.meta["n_truncated_docs"] == 1
    windowed = profile(tiny_gpt2, [0], str(path), max_tokens=4_000, overflow="window", progress=False)
    assert windowed.n_tokens == 4_000 and windowed.meta["n_docs"] == 1


def _exact(tok, n: int) -> str:
    text = "word" + " word" * (n - 1)
    assert len(tok(text)["input_ids"]) == n
    return text


@pytest.mark.parametrize("n, fits", [(128, True), (129, False), (1280, False)])
def test_text_at_one_over_and_ten_times_the_context(tiny_gpt2, n, fits):
    monitor = ActivationMonitor(tiny_gpt2, [1])
    text = _exact(tiny_gpt2.tokenizer, n)
    if fits:
        assert len(monitor.capture(text)) == 128
    else:
        with pytest.raises(TextTooLongError, match="128"):
            monitor.capture(text)
        assert len(monitor.capture(text, overflow="truncate")) == 128
        windowed = monitor.capture(text, overflow="window")
        assert len(windowed) == n and windowed.positions.tolist() == list(range(n))
    # windows see the same tokens as one pass where the text fits: the first 128 positions agree exactly
    single = monitor.capture(text, overflow="truncate")
    torch.testing.assert_close(monitor.capture(text, overflow="window")[1][:128], single[1], atol=1e-5, rtol=0)


def test_mixed_length_batches_give_the_statistics_of_single_texts(tiny_gpt2):
    """Captures of padded batches equal single texts (left and right padding, pad id 0: ``test_capture``); here the
    profile's statistics: one batch of mixed lengths against one text per batch."""
    texts = ["A short one.", "A much longer sentence that goes on for quite a few more tokens than the first.", "Mid",
             "Numbers 1 2 3 4 5 6 7 8 9 10 11 12"]
    together = profile(tiny_gpt2, [0, 2], texts, batch_size=4, progress=False)
    alone = profile(tiny_gpt2, [0, 2], texts, batch_size=1, progress=False)
    assert together.n_tokens == alone.n_tokens
    for site in together.site_names:  # float32 forwards of other shapes round differently: 1e-6, not bits
        for stat in ("mean", "std", "max", "min"):
            torch.testing.assert_close(getattr(together[site], stat), getattr(alone[site], stat), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_give_float64_statistics_of_their_values(tok, dtype):
    model = make_tiny_gpt2(tok).to(dtype)
    interface = ModelInterface(model, tokenizer=tok, name=f"tiny-{dtype}")
    texts = ["The sun rose over the quiet town.", "Numbers: 3, 14, 159.", "def f(x): return x * 2"]
    record = ActivationMonitor(interface, [1]).capture(texts)
    assert record[1].dtype == dtype or record[1].dtype == torch.float32
    prof = profile(interface, [1], texts, progress=False)
    values = record[1].double()
    assert prof[1].mean.dtype == torch.float64
    torch.testing.assert_close(prof[1].mean, values.mean(0), atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(prof[1].max, values.amax(0), atol=0, rtol=0)


def test_a_thousand_captures_keep_memory_flat(tiny_gpt2):
    monitor = ActivationMonitor(tiny_gpt2, [0, 1, 2])
    hooks = sum(len(m._forward_hooks) for m in tiny_gpt2.module.modules())  # transformers may keep its own
    process = psutil.Process()
    for _ in range(100):  # warm-up: allocator pools, tokenizer caches
        monitor.capture("memory should not grow with repeated captures")
    gc.collect()
    before = process.memory_info().rss
    for i in range(1_000):
        monitor.capture(f"memory should not grow with repeated captures {i % 7}")
    gc.collect()
    grown = process.memory_info().rss - before
    assert grown < 20 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB over 1,000 captures"
    assert sum(len(m._forward_hooks) for m in tiny_gpt2.module.modules()) == hooks


def test_output_paths_through_symlinks_are_refused(tmp_path):
    run = RunFolder(tmp_path / "run")
    outside = tmp_path / "outside"
    outside.mkdir()
    (run.root / "figures" / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RunFolderError, match="outside the run folder"):
        run.write_text("figures/link/evil.txt", "x")
    (run.root / "tables" / "file.json").symlink_to(outside / "target.json")
    with pytest.raises(RunFolderError, match="outside the run folder"):
        run.write_json("tables/file.json", {"a": 1})
    with pytest.raises(RunFolderError):
        run.write_text("../../escape.txt", "x")
    assert list(outside.iterdir()) == []


def test_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "findings.json"
    atomic_write_text(target, '{"kept": true}')

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(target, '{"new": "half written"}')
    assert target.read_text() == '{"kept": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["findings.json"]
