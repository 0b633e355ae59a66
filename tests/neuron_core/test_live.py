"""Live monitoring: streamed activations equal a capture afterwards; hooks always go; memory stays flat; window
statistics equal an independent computation."""

from __future__ import annotations

import gc
import io
import os
import signal
import threading
import time
import tracemalloc
from collections.abc import Iterator

import pytest
import torch
from rich.console import Console
from transformers import GPT2Config, GPT2LMHeadModel

from neuron_core import ActivationMonitor, ModelInterface, load_model, profile
from neuron_core.batching import encode_texts, make_batches, pad_token_id
from neuron_core.errors import InputError, ProfileMismatchError, UnknownSiteError
from neuron_core.live import LiveMonitor, StatsCallback, StatsSummary, StepActivations, WindowStats

TEXTS = [
    "The cat sat on the mat.",
    "Dogs bark at night when the moon is full.",
    "A quick brown fox jumps over the lazy dog.",
    "Rain falls softly.",
    "Paris is the capital of France and a city of museums.",
    "Numbers: one, two, three, four, five.",
    "She opened the door and walked outside.",
    "Bread",
]
OTHER_TEXTS = [
    "1234 5678 9012 3456 7890 1234 5678",
    "def f(x): return x ** 2 + 3 * x - 1",
    "((((((((((]]]]]]]]]]}}}}}}}",
    "ZZZZ QQQQ XXXX WWWW VVVV",
]
DEAD = list(range(10))  # layer-0 neurons of the tiny model forced off


@pytest.fixture(scope="module")
def smol() -> ModelInterface:
    return ModelInterface(load_model("smollm2-135m", device="cpu"))


@pytest.fixture(scope="module")
def tiny(smol: ModelInterface) -> ModelInterface:
    tok = smol.tokenizer
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.bias[DEAD] = -100.0  # GELU(-100 + small) <= 0: never active
    return ModelInterface(model, tokenizer=tok)


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture
def user_hooks(tiny: ModelInterface) -> Iterator[list[int]]:
    """A hook of the user's own on the root and on an MLP; they must survive every monitor."""
    calls: list[int] = []
    model = tiny.module
    handles = [model.register_forward_pre_hook(lambda *_: calls.append(1)),
               model.transformer.h[1].mlp.act.register_forward_hook(lambda *_: calls.append(2))]
    yield calls
    for handle in handles:
        handle.remove()


def assert_only_user_hooks(interface: ModelInterface, calls: list[int]) -> None:
    assert not [t for t in threading.enumerate() if t.name == "neuron-live-generate"]  # no worker left running
    assert hook_count(interface.module) == 2
    calls.clear()
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        interface.module(input_ids=ids)
    assert calls == [1, 2]


# ------------------------------------------------------------------------------------------------ streaming
def check_against_capture(interface: ModelInterface, live: LiveMonitor, steps: list[StepActivations],
                          prompt_ids: list[int], atol: float) -> None:
    sequence = live.last_sequence
    assert sequence is not None
    assert sequence[0, :len(prompt_ids)].tolist() == prompt_ids
    # the stream's own tokens rebuild the finished sequence: prompt, then one step per generated token
    assert prompt_ids[:-1] + [s.token_id for s in steps] == sequence[0].tolist()
    assert [s.position for s in steps] == list(range(len(prompt_ids) - 1, sequence.shape[1]))
    record = ActivationMonitor(interface).capture(sequence, sites=[s.name for s in live.sites])
    assert record.token_ids.tolist() == sequence[0].tolist()
    for step in steps:
        assert step.token == interface.token_strings([step.token_id])[0]
        for neuron in live.neurons:
            expected = float(record[neuron.site.name][step.position, neuron.index])
            assert step.neurons[neuron.label] == pytest.approx(expected, abs=atol)
        for site in live.sites:
            row = record[site.name][step.position]  # [N]
            values, indices = torch.topk(row, live.top_k)
            got = step.top[site.name]
            assert torch.allclose(torch.tensor(got.values), values, atol=atol)
            assert list(got.indices) == indices.tolist()


def test_stream_equals_capture_tiny(tiny: ModelInterface) -> None:
    live = LiveMonitor(tiny, neurons=["L1/N5", (0, 77), "L0/N3"], top_k=4)
    assert [n.label for n in live.neurons] == ["L1/N5", "L0/N77", "L0/N3"]
    assert [s.name for s in live.sites] == ["blocks.1.mlp.hook_post", "blocks.0.mlp.hook_post"]
    prompt = "The cat sat on the"
    prompt_ids = tiny.tokenizer(prompt)["input_ids"]
    seen: list[StepActivations] = []
    steps = list(live.stream_generate(prompt, max_new_tokens=8, on_step=seen.append))
    assert len(steps) == 9 and seen == steps
    assert steps[0].is_prompt and steps[0].step == 0 and steps[0].token_id == prompt_ids[-1]
    assert [s.step for s in steps] == list(range(9)) and not any(s.is_prompt for s in steps[1:])
    check_against_capture(tiny, live, steps, prompt_ids, atol=1e-4)


def test_stream_equals_capture_smollm2(smol: ModelInterface) -> None:
    live = LiveMonitor(smol, sites=["L29"], neurons=["L6/N12", "L6/N99"], top_k=5)
    prompt = "The capital of France is"
    prompt_ids = smol.tokenizer(prompt)["input_ids"]
    steps = list(live.stream_generate(prompt, max_new_tokens=3))
    assert len(steps) == 4
    check_against_capture(smol, live, steps, prompt_ids, atol=1e-4)


def test_stream_from_ids_without_prompt_step_and_one_token(tiny: ModelInterface) -> None:
    live = LiveMonitor(tiny, neurons=["L0/N20"], top_k=2)
    ids = torch.tensor([5, 6, 7, 8])
    steps = list(live.stream_generate(ids, max_new_tokens=1, include_prompt=False))
    assert [(s.step, s.position, s.is_prompt) for s in steps] == [(1, 4, False)]
    record = ActivationMonitor(tiny).capture(live.last_sequence, sites=["L0"])
    assert steps[0].neurons["L0/N20"] == pytest.approx(float(record["L0"][4, 20]), abs=1e-4)


def test_stream_without_cache_and_default_sites(tiny: ModelInterface) -> None:
    live = LiveMonitor(tiny, top_k=3)  # every MLP site, no watched neuron
    assert len(live.sites) == 2
    steps = list(live.stream_generate([3, 4, 5], max_new_tokens=4, use_cache=False))
    check_against_capture(tiny, live, steps, [3, 4, 5], atol=1e-4)


def test_bad_input_fails_before_any_hook(tiny: ModelInterface) -> None:
    before = hook_count(tiny.module)
    for refs in (["L2/N1"], ["L0/N256"], ["garbage"], [(0,)]):
        with pytest.raises(UnknownSiteError):
            LiveMonitor(tiny, neurons=refs)  # type: ignore[arg-type]
    live = LiveMonitor(tiny, neurons=["L0/N1"])
    with pytest.raises(InputError):
        live.stream_generate("hi", max_new_tokens=0)
    with pytest.raises(InputError):
        live.stream_generate("hi", num_beams=2)
    with pytest.raises(InputError):
        live.stream_generate(torch.ones(2, 3, dtype=torch.long))
    assert hook_count(tiny.module) == before


def test_hooks_removed_after_normal_end(tiny: ModelInterface, user_hooks: list[int]) -> None:
    live = LiveMonitor(tiny, neurons=["L1/N1"])
    stream = live.stream_generate("hello there", max_new_tokens=3)
    assert hook_count(tiny.module) == 2  # nothing registered until the stream runs
    first = next(stream)
    assert hook_count(tiny.module) > 2 and first.is_prompt
    assert len(list(stream)) == 3
    assert_only_user_hooks(tiny, user_hooks)


def test_hooks_removed_after_callback_exception(tiny: ModelInterface, user_hooks: list[int]) -> None:
    live = LiveMonitor(tiny, neurons=["L1/N1"])

    def boom(step: StepActivations) -> None:
        if step.step == 2:
            raise RuntimeError("callback failed")

    seen = []
    with pytest.raises(RuntimeError, match="callback failed"):
        for step in live.stream_generate("hello there", max_new_tokens=50, on_step=boom):
            seen.append(step.step)
    assert seen == [0, 1]
    assert_only_user_hooks(tiny, user_hooks)


def test_hooks_removed_after_early_close(tiny: ModelInterface, user_hooks: list[int]) -> None:
    live = LiveMonitor(tiny, neurons=["L1/N1"])
    for step in live.stream_generate("hello there", max_new_tokens=200):
        if step.step == 3:
            break  # the loop drops the generator: it is closed, the worker stops, the hooks go
    gc.collect()
    assert_only_user_hooks(tiny, user_hooks)
    stream = live.stream_generate("hello there", max_new_tokens=200)
    next(stream)
    stream.close()
    assert_only_user_hooks(tiny, user_hooks)
    assert live.last_sequence is None  # neither generation finished


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raising KeyboardInterrupt in this process for the test: a CI job may start with SIGINT ignored, and
    Python then never installs its handler."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_raises")
def test_hooks_removed_after_keyboard_interrupt(tiny: ModelInterface, user_hooks: list[int]) -> None:
    live = LiveMonitor(tiny, neurons=["L1/N1"])

    def ctrl_c(step: StepActivations) -> None:
        if step.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered to the main thread

    steps = []
    with pytest.raises(KeyboardInterrupt):
        for step in live.stream_generate("hello there", max_new_tokens=500, on_step=ctrl_c):
            steps.append(step)
    assert 2 <= len(steps) < 500
    assert_only_user_hooks(tiny, user_hooks)


@pytest.mark.usefixtures("ctrl_c_raises")
def test_ctrl_c_while_waiting_for_the_model(tiny: ModelInterface, user_hooks: list[int]) -> None:
    live = LiveMonitor(tiny, neurons=["L1/N1"])
    slow = tiny.module.register_forward_hook(lambda *_: time.sleep(0.05))  # the consumer mostly waits on the model
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    steps = []
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            for step in live.stream_generate("hello there", max_new_tokens=400):
                steps.append(step)
    finally:
        timer.cancel()
        slow.remove()
    assert 1 <= len(steps) < 400
    assert_only_user_hooks(tiny, user_hooks)


def test_error_in_generate_surfaces_and_hooks_go(tiny: ModelInterface, user_hooks: list[int]) -> None:
    live = LiveMonitor(tiny, neurons=["L1/N1"])
    with pytest.raises(ValueError):
        list(live.stream_generate("hello there", max_new_tokens=5, bad_words_ids="not a list"))
    assert_only_user_hooks(tiny, user_hooks)


def test_memory_constant_over_many_tokens(tiny: ModelInterface) -> None:
    live = LiveMonitor(tiny, neurons=["L1/N1", "L0/N2"], top_k=5)
    assert live.history is None  # nothing per step is kept unless asked
    marks: dict[int, int] = {}
    tracemalloc.start()
    try:
        for step in live.stream_generate("Once upon a time", max_new_tokens=200):
            if step.step in (40, 200):
                gc.collect()
                marks[step.step] = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    growth = marks[200] - marks[40]
    assert growth < 64_000, f"Python heap grew by {growth} bytes over 160 tokens"

    ring = LiveMonitor(tiny, neurons=["L1/N1"], history=5)
    steps = list(ring.stream_generate("Once upon a time", max_new_tokens=20))
    assert ring.history is not None and list(ring.history) == steps[-5:]


# ------------------------------------------------------------------------------------------- window statistics
def batches_of(interface: ModelInterface, texts: list[str], batch_size: int, padding_side: str = "right") -> list:
    segments = encode_texts(interface.tokenizer, texts, context_length=interface.context_length)
    return list(make_batches(segments, batch_size=batch_size, pad_id=pad_token_id(interface.tokenizer),
                             padding_side=padding_side))  # type: ignore[arg-type]


def real_activations(interface: ModelInterface, batch, site: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """[n_real_tokens, N] for one batch, by capture.py's own trace (padding removed by the attention mask)."""
    monitor = ActivationMonitor(interface, [site])
    with monitor.trace() as record, torch.no_grad():
        interface.module(**batch.model_kwargs(interface.module))
    return record[site].double()


def test_summaries_every_n_equal_independent_computation(tiny: ModelInterface, user_hooks: list[int]) -> None:
    batches = batches_of(tiny, TEXTS[:5] + TEXTS[:5], batch_size=2)  # 5 batches: windows of 2, 2 and 1
    got: list[StatsSummary] = []
    with StatsCallback(tiny, ["L0", "L1"], every=2, fn=got.append) as cb, torch.no_grad():
        for batch in batches:
            tiny.module(**batch.model_kwargs(tiny.module))
    assert [(s.step, s.n_calls, s.partial) for s in got] == [(2, 2, False), (4, 2, False), (5, 1, True)]
    assert cb.last is got[-1]
    for site in ("blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"):
        acts = [real_activations(tiny, b, site) for b in batches]
        ever = torch.zeros(acts[0].shape[1], dtype=torch.bool)
        for summary, window in zip(got, (acts[0:2], acts[2:4], acts[4:5]), strict=True):
            x = torch.cat(window)  # [n, N]
            ever |= (x > 0).any(0)
            s = summary[site]
            assert s.n_tokens == x.shape[0]
            assert s.mean == pytest.approx(float(x.mean()), abs=1e-9)
            assert s.max == pytest.approx(float(x.max()), abs=1e-9)
            assert s.sparsity == pytest.approx(float((x <= 0).double().mean()), abs=1e-12)
            assert s.frac_active == pytest.approx(1 - s.sparsity)
            assert s.n_dead == int(((x > 0).sum(0) == 0).sum())
            assert s.n_dead_so_far == int((~ever).sum())
            assert s.drift is None
    assert got[0]["blocks.0.mlp.hook_post"].n_dead >= len(DEAD)  # the forced-off neurons are counted
    assert_only_user_hooks(tiny, user_hooks)


def test_attention_mask_respected(tiny: ModelInterface) -> None:
    site = "blocks.1.mlp.hook_post"
    for side in ("right", "left"):
        (batch,) = batches_of(tiny, [TEXTS[1], TEXTS[7]], batch_size=2, padding_side=side)
        assert int(batch.attention_mask.sum()) < batch.attention_mask.numel()  # there is padding
        expected = real_activations(tiny, batch, site)
        got: list[StatsSummary] = []
        with StatsCallback(tiny, [site], every=1, fn=got.append), torch.no_grad():
            tiny.module(**batch.model_kwargs(tiny.module))  # mask as a keyword
            # ... and positionally (GPT-2's forward is (input_ids, cache, attention_mask, ...))
            tiny.module(batch.input_ids, None, batch.attention_mask, position_ids=batch.position_ids)
        for summary in got:
            assert summary[site].n_tokens == expected.shape[0] == int(batch.attention_mask.sum())
            assert summary[site].mean == pytest.approx(float(expected.mean()), abs=1e-9)
    got = []
    with StatsCallback(tiny, [site], every=1, fn=got.append), torch.no_grad():
        tiny.module(input_ids=batch.input_ids)  # no mask: every position counts
    assert got[0][site].n_tokens == batch.input_ids.numel()


def test_drift_against_reference_profile(tiny: ModelInterface) -> None:
    sites = ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]
    reference = profile(tiny, sites, TEXTS, batch_size=4, progress=False)
    got: list[StatsSummary] = []
    same = batches_of(tiny, TEXTS, batch_size=4)
    with StatsCallback(tiny, sites, every=len(same), reference=reference, fn=got.append), torch.no_grad():
        for batch in same:
            tiny.module(**batch.model_kwargs(tiny.module))
    for site in sites:
        assert got[0][site].n_tokens == reference.n_tokens
        assert got[0][site].drift == pytest.approx(0.0, abs=1e-6)

    shifted = batches_of(tiny, OTHER_TEXTS, batch_size=4)
    got.clear()
    with StatsCallback(tiny, sites, every=len(shifted), reference=reference, fn=got.append,
                       n_top_drift=3), torch.no_grad():
        for batch in shifted:
            tiny.module(**batch.model_kwargs(tiny.module))
    for site in sites:
        x = torch.cat([real_activations(tiny, b, site) for b in shifted])  # [n, N]
        ref = reference[site]
        z = (x.mean(0) - ref.mean).abs() / ref.std.clamp(min=1e-6)  # [N]
        s = got[0][site]
        assert s.drift is not None and s.drift > 0.1
        assert s.drift == pytest.approx(float(z.mean()), rel=1e-6)
        assert [d.neuron for d in s.top_drifting] == torch.topk(z, 3).indices.tolist()
        assert s.top_drifting[0].z == pytest.approx(float(z.max()), rel=1e-6)


def test_reference_must_cover_sites_and_width(tiny: ModelInterface) -> None:
    reference = profile(tiny, ["L0"], TEXTS[:2], batch_size=2, progress=False)
    with pytest.raises(ProfileMismatchError):
        StatsCallback(tiny, ["L1"], reference=reference)
    window = WindowStats()
    window.add(torch.randn(4, 8))
    with pytest.raises(ProfileMismatchError):
        window.summary("x", (torch.zeros(9), torch.ones(9)))


def test_rich_table_without_fn_and_hooks_go_on_error(tiny: ModelInterface, user_hooks: list[int]) -> None:
    out = io.StringIO()
    (batch,) = batches_of(tiny, TEXTS[:2], batch_size=2)
    with StatsCallback(tiny, ["L1"], every=1, console=Console(file=out, width=160)), torch.no_grad():
        tiny.module(**batch.model_kwargs(tiny.module))
    text = out.getvalue()
    assert "blocks.1.mlp.hook_post" in text and "sparsity" in text and "after 1 forward calls" in text

    def fail(_summary: StatsSummary) -> None:
        raise RuntimeError("summary consumer failed")

    with pytest.raises(RuntimeError, match="consumer failed"), StatsCallback(tiny, ["L1"], every=1, fn=fail):
        with torch.no_grad():
            tiny.module(**batch.model_kwargs(tiny.module))
    assert_only_user_hooks(tiny, user_hooks)


def test_training_with_gradient_checkpointing_counts_forward_only(tiny: ModelInterface) -> None:
    model = tiny.module
    (batch,) = batches_of(tiny, TEXTS[:3], batch_size=3)
    got: list[StatsSummary] = []
    model.gradient_checkpointing_enable()
    model.train()
    try:
        with StatsCallback(tiny, ["L0", "L1"], every=1, fn=got.append):
            out = model(**batch.model_kwargs(model), labels=batch.input_ids)
            out.loss.backward()  # recomputes the blocks: those activations must not count again
    finally:
        model.gradient_checkpointing_disable()
        model.eval()
        model.zero_grad(set_to_none=True)
    assert len(got) == 1 and got[0]["blocks.0.mlp.hook_post"].n_tokens == batch.n_tokens
