"""Sharded profiles: the plan, equality with the unsharded profile, and Ray tasks that die and resume."""

from __future__ import annotations

import pytest
import torch

from neuron_core import profile
from neuron_core.distributed import check_executor, run_tasks
from neuron_core.errors import EmptyInputError, FrameworkNotAvailableError, InputError
from neuron_core.shards import plan_shards

SETS = ("top", "bottom", "sample", "tokens")


def test_plan_cuts_contiguous_ranges_of_about_equal_tokens():
    tokens = [10, 0, 30, 5, 25, 20, 10]
    specs = plan_shards(tokens, 3)
    assert [(s.doc_start, s.doc_stop) for s in specs] == [(0, 3), (3, 5), (5, 7)]
    assert sum(s.n_tokens for s in specs) == 100 and all(s.max_tokens is None for s in specs)
    # cumulative tokens 10, 10, 40, 45, 70, ...: a budget of 50 ends inside document 4 (5 of its 25 counted)
    budget = plan_shards(tokens, 2, max_tokens=50)
    assert budget[-1].doc_stop == 5 and sum(s.n_tokens for s in budget) == 50
    assert budget[-1].max_tokens == budget[-1].n_tokens and budget[0].max_tokens is None
    cut = plan_shards(tokens, 2, max_tokens=42)  # inside document 3 (2 of its 5 counted)
    assert cut[-1].doc_stop == 4 and sum(s.n_tokens for s in cut) == 42
    assert len(plan_shards([5, 5], 8)) == 2  # never an empty shard
    with pytest.raises(InputError):
        plan_shards(tokens, 0)
    with pytest.raises(EmptyInputError):
        plan_shards([0, 0], 2)


def _equal_to_the_bit(a, b) -> None:
    assert a.n_tokens == b.n_tokens and a.meta["n_docs"] == b.meta["n_docs"]
    assert a.meta["next_doc"] == b.meta["next_doc"] and a.meta["n_skipped_docs"] == b.meta["n_skipped_docs"]
    for site in a.site_names:
        sa, sb = a[site].stats, b[site].stats
        for name in ("count", "hist", "n_active", "n_nonfinite", "min", "max"):
            assert torch.equal(getattr(sa, name), getattr(sb, name)), (site, name)
        torch.testing.assert_close(sa.mean, sb.mean, atol=1e-15, rtol=1e-12)  # Chan's merge: float64 rounding
        torch.testing.assert_close(sa.m2, sb.m2, atol=1e-12, rtol=1e-12)
        for kind in SETS:
            ea, eb = getattr(sa, kind), getattr(sb, kind)
            for field in ("doc", "pos", "values", "ctx", "keys"):
                assert torch.equal(getattr(ea, field), getattr(eb, field)), (site, kind, field)


@pytest.fixture(scope="module")
def texts(builtin_texts):
    return builtin_texts[:240] + ["", "   "] + builtin_texts[240:300]  # empty documents are counted, in place


def test_sharded_profile_equals_the_unsharded_one_to_the_bit(tiny_gpt2, texts):
    whole = profile(tiny_gpt2, [0, 2], texts, batch_size=1, progress=False)
    _equal_to_the_bit(whole, profile(tiny_gpt2, [0, 2], texts, batch_size=1, shards=4, progress=False))
    budget = profile(tiny_gpt2, [0, 2], texts, batch_size=1, max_tokens=3_333, progress=False)
    sharded = profile(tiny_gpt2, [0, 2], texts, batch_size=1, max_tokens=3_333, shards=3, progress=False)
    _equal_to_the_bit(budget, sharded)
    assert sharded.meta["shards"] == 3 and sharded.meta["max_tokens"] == 3_333 and sharded.meta["complete"]


def test_with_larger_batches_the_statistics_agree_to_float32_rounding(tiny_gpt2, texts):
    whole = profile(tiny_gpt2, [1], texts, batch_size=16, progress=False)
    sharded = profile(tiny_gpt2, [1], texts, batch_size=16, shards=3, progress=False)
    assert whole.n_tokens == sharded.n_tokens
    for stat in ("mean", "std", "max", "min"):
        torch.testing.assert_close(getattr(whole[1], stat), getattr(sharded[1], stat), atol=1e-6, rtol=0)


def test_executor_errors_come_before_any_work(tiny_gpt2, monkeypatch):
    with pytest.raises(InputError, match="executor must be one of local, ray"):
        profile(tiny_gpt2, [0], ["some text"], executor="dask")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="address is for executor='ray'"):
        check_executor("local", "ray://head:10001")
    with pytest.raises(InputError, match="shards must be >= 1"):
        profile(tiny_gpt2, [0], ["some text"], shards=0)
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(FrameworkNotAvailableError, match=r"pip install -e '\.\[ray\]'"):
        profile(tiny_gpt2, [0], ["some text"], executor="ray")


# -- Ray: the session's local instance (tests/conftest.py: 2 CPUs, no dashboard, stopped and checked at the end)


@pytest.fixture(scope="module")
def fresh_tiny(tok):
    """A tiny model no other test has run: one that transformers ran with output_hidden_states keeps hooks that
    cannot be pickled (see test_an_unpicklable_in_memory_model_is_a_typed_error)."""
    from neuron_core import ModelInterface
    from tests.conftest import make_tiny_gpt2

    return ModelInterface(make_tiny_gpt2(tok), tokenizer=tok, name="tiny-gpt2")


def test_an_unpicklable_in_memory_model_is_a_typed_error(tok, texts):
    import contextvars

    from neuron_core import ModelInterface
    from tests.conftest import make_tiny_gpt2

    model = make_tiny_gpt2(tok)
    model.recorder = contextvars.ContextVar("recorder")  # as transformers' output recorders hold
    interface = ModelInterface(model, tokenizer=tok, name="holds-a-context-variable")
    with pytest.raises(InputError, match="cannot be sent to Ray workers .* save it"):
        profile(interface, [0], texts, shards=2, executor="ray")


def test_ray_tasks_run_in_order(ray_instance):
    import json

    seen = []
    assert run_tasks(json.dumps, [3, [1], "x"], executor="ray", on_wait=seen.append) == ["3", "[1]", '"x"']
    assert seen[-1] == 3


def test_ray_sharded_profile_equals_the_local_one_and_a_dead_worker_resumes(fresh_tiny, texts, ray_instance,
                                                                             tmp_path):
    tiny_gpt2 = fresh_tiny
    from neuron_core.shards import profile_sharded
    from tests.neuron_core.ray_faults import profile_shard_dying_once

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray task (one CPU each): another thread count may round a matmul otherwise
    try:
        local = profile(tiny_gpt2, [0, 2], texts, batch_size=1, progress=False)
    finally:
        torch.set_num_threads(threads)
    _equal_to_the_bit(local, profile(tiny_gpt2, [0, 2], texts, batch_size=1, shards=3, executor="ray",
                                     progress=False))
    from neuron_core.corpus import load_corpus

    survived = profile_sharded(tiny_gpt2, local.site_names, load_corpus(texts),
                               shards=3, executor="ray", checkpoint=tmp_path / "ckpt",
                               options={"batch_size": 1, "checkpoint_every": 2},
                               shard_task=profile_shard_dying_once)
    died_at = int((tmp_path / "ckpt" / "died-1").read_text())
    assert 0 < died_at < survived.n_tokens  # shard 1 died after a checkpoint ...
    _equal_to_the_bit(local, survived)  # ... and its retry went on from it to the same profile


@pytest.fixture(scope="module")
def detection_case(fresh_tiny, builtin_texts):
    tiny_gpt2 = fresh_tiny
    from neuron_core.analysis import DetectorConfig, PolysemanticDetector

    prof = profile(tiny_gpt2, [1, 2], builtin_texts[:400], progress=False)
    cfg = DetectorConfig(max_neurons=16, n_null=60, n_null_max=240, ablation=False, probe_modes=False)
    one = PolysemanticDetector(prof, embedder="hidden", interface=tiny_gpt2, config=cfg)
    one.run()
    assert max(one.null_draws.values()) > 60  # the refinement ran somewhere
    return prof, cfg, one


def _same_results(a_run, b_run) -> None:
    """The same neurons with the same verdicts, p-values and modes; scores to the embedding's rounding (contexts are
    embedded in batches whose shapes depend on their company, so the last bits may move)."""
    a_by = {(r.site, r.neuron): r for r in a_run}
    b_by = {(r.site, r.neuron): r for r in b_run}
    assert a_by.keys() == b_by.keys()
    for key, a in a_by.items():
        b = b_by[key]
        assert (a.p_value, a.verdict, a.n_modes) == (b.p_value, b.verdict, b.n_modes), key
        assert a.score == pytest.approx(b.score, abs=1e-4) and a.z_score == pytest.approx(b.z_score, abs=1e-2)
        assert [m.label for m in a.modes] == [m.label for m in b.modes]


def test_neurons_split_in_parts_give_the_results_of_one_run(fresh_tiny, detection_case):
    from neuron_core.analysis import PolysemanticDetector

    tiny_gpt2 = fresh_tiny
    prof, cfg, one = detection_case
    parts = PolysemanticDetector(prof, embedder="hidden", interface=tiny_gpt2, config=cfg, shards=3)
    _same_results(one.results, parts.run())
    assert parts.null_draws == one.null_draws
    with pytest.raises(InputError, match="shards must be a whole number >= 1"):
        PolysemanticDetector(prof, shards=0)


def test_ray_detection_gives_the_results_of_the_local_one(fresh_tiny, detection_case, ray_instance):
    from neuron_core.analysis import PolysemanticDetector

    tiny_gpt2 = fresh_tiny
    prof, cfg, one = detection_case
    nulls_on_ray = PolysemanticDetector(prof, embedder="hidden", interface=tiny_gpt2, config=cfg, executor="ray")
    _same_results(one.results, nulls_on_ray.run())
    assert nulls_on_ray.null_draws == one.null_draws
    actors = PolysemanticDetector(prof, embedder="hidden", interface=tiny_gpt2, config=cfg, executor="ray",
                                  shards=2)  # the neurons in two Ray actors, the null sizes as Ray tasks
    _same_results(one.results, actors.run())
