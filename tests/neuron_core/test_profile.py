"""Streaming profiles over a model: equal to a full capture, mergeable, resumable, bounded in memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from neuron_core import (
    ActivationMonitor,
    CorpusError,
    EmptyInputError,
    InputError,
    NeuronProfile,
    ProfileMismatchError,
    profile,
)
from neuron_core.corpus import Corpus

KW = dict(top_k=6, bottom_k=3, n_samples=5, batch_size=16)


@pytest.fixture(scope="module")
def docs(builtin_texts):
    return builtin_texts[:320]


@pytest.fixture(scope="module")
def full(tiny_gpt2, docs):
    return profile(tiny_gpt2, None, docs, **KW)


def test_profile_equals_full_capture(tiny_gpt2, docs):
    # One document per batch on both sides: the same forward shapes, so the same activations to the bit (the
    # profile batches documents by length, and a batch's shape can change the last bit of an activation).
    full = profile(tiny_gpt2, None, docs, **{**KW, "batch_size": 1})
    record = ActivationMonitor(tiny_gpt2).capture(docs, batch_size=1)
    assert full.n_tokens == len(record) > 3000
    for site in full.site_names:
        x = record[site].double()
        sp = full[site]
        torch.testing.assert_close(sp.mean, x.mean(0), rtol=0, atol=1e-9)
        torch.testing.assert_close(sp.var, x.var(0, unbiased=False), rtol=0, atol=1e-9)
        torch.testing.assert_close(sp.max, x.max(0).values, rtol=0, atol=0)
        torch.testing.assert_close(sp.frac_active, (x > 0).double().mean(0), rtol=0, atol=0)
        top = torch.topk(record[site], 6, dim=0)
        torch.testing.assert_close(sp.stats.top.values, top.values.T, rtol=0, atol=0)
        # examples point at the right tokens: doc/position/token agree with the record
        for neuron in (0, 17, 255):
            # (ties between identical prefixes are legitimate, so look each example up by its doc and position)
            for ex, expected in zip(sp.top_examples(neuron), top.values[:, neuron].tolist()):
                i = int(((record.doc_ids == ex.doc_id) & (record.positions == ex.position)).nonzero())
                assert record[site][i, neuron].item() == ex.value == expected
                assert record.tokens[i] == ex.token == ex.context[ex.index] and ex.token in ex.text()
                assert "".join(ex.context[: ex.index + 1]) == "".join(record.tokens[max(0, i - ex.index): i + 1])
            for ex in sp.quantile_examples(neuron, n=4):
                i = int(((record.doc_ids == ex.doc_id) & (record.positions == ex.position)).nonzero())
                assert abs(record[site][i, neuron].item() - ex.value) < 1e-6 and ex.value > 0


def test_merge_equals_joint(tiny_gpt2, docs, full):
    # Shards split at a batching window (16 batches of 16 documents): the same batches, so equal to the bit.
    a = profile(tiny_gpt2, None, docs[:256], **KW)
    b = profile(tiny_gpt2, None, docs[256:], doc_offset=256, **KW)
    merged = a.merge(b)
    assert merged.n_tokens == full.n_tokens
    for site in full.site_names:
        m, f = merged[site].stats, full[site].stats
        torch.testing.assert_close(m.mean, f.mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(m.var, f.var, rtol=0, atol=1e-12)
        assert torch.equal(m.hist, f.hist) and torch.equal(m.top.values, f.top.values)
        assert torch.equal(m.sample.doc, f.sample.doc) and torch.equal(m.sample.pos, f.sample.pos)
    # Split anywhere else, the shards' batches differ: activations agree to float rounding, the kept tokens and
    # the counts (sample, activity) exactly.
    c = profile(tiny_gpt2, None, docs[:160], **KW).merge(profile(tiny_gpt2, None, docs[160:], doc_offset=160, **KW))
    for site in full.site_names:
        m, f = c[site].stats, full[site].stats
        torch.testing.assert_close(m.mean, f.mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(m.top.values, f.top.values, rtol=0, atol=1e-5)
        assert torch.equal(m.top.doc, f.top.doc) and torch.equal(m.top.pos, f.top.pos)
        assert torch.equal(m.sample.doc, f.sample.doc) and torch.equal(m.n_active, f.n_active)
    with pytest.raises(ProfileMismatchError, match="overlap"):
        a.merge(a)


def test_resume_equals_uninterrupted(tiny_gpt2, docs, full, tmp_path):
    class Interrupting:
        """The same documents, but Ctrl-C after 300 of them (the first batching window ends at 256)."""

        def __iter__(self):
            for i, text in enumerate(docs):
                if i == 300:
                    raise KeyboardInterrupt
                yield text

    interrupted = Corpus(name="list[320]", _iter_factory=lambda: iter(Interrupting()))
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        profile(tiny_gpt2, None, interrupted, checkpoint=ckpt, checkpoint_every=3, **KW)
    saved = json.loads((ckpt / "profile.json").read_text())["meta"]
    assert saved["next_doc"] == 256 and saved["n_docs"] == 256 and not saved["complete"]
    resumed = profile(tiny_gpt2, None, docs, checkpoint=ckpt, resume=True, **KW)
    assert resumed.meta["complete"] and resumed.n_tokens == full.n_tokens
    for site in full.site_names:
        r, f = resumed[site].stats, full[site].stats
        torch.testing.assert_close(r.mean, f.mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(r.var, f.var, rtol=0, atol=1e-12)
        assert torch.equal(r.hist, f.hist) and torch.equal(r.top.values, f.top.values)
        assert torch.equal(r.top.ctx, f.top.ctx) and torch.equal(r.sample.doc, f.sample.doc)
    with pytest.raises(ProfileMismatchError, match="corpus"):
        profile(tiny_gpt2, None, docs[::-1], checkpoint=ckpt, resume=True, **KW)
    with pytest.raises(ProfileMismatchError, match="settings"):
        profile(tiny_gpt2, None, docs, checkpoint=ckpt, resume=True, **{**KW, "top_k": 7})


def test_save_load_roundtrip(full, tmp_path):
    full.save(tmp_path / "p")
    loaded = NeuronProfile.load(tmp_path / "p")
    assert loaded.meta == json.loads(json.dumps(full.meta))
    for site in full.site_names:
        for key, value in full[site].stats.state_dict().items():
            assert torch.equal(value, loaded[site].stats.state_dict()[key]), key
        assert loaded[site].top_examples(3) == full[site].top_examples(3)
    import pandas as pd

    frame = pd.read_parquet(tmp_path / "p" / "examples.parquet")
    assert set(frame["kind"]) == {"top", "bottom", "sample"} and "[[" in frame["context"].iloc[0]
    with pytest.raises(InputError):
        NeuronProfile.load(tmp_path / "missing")


def test_max_tokens_exact_and_early_stop(tiny_gpt2, docs):
    calls = []
    handle = tiny_gpt2.module.transformer.h[2].register_forward_hook(lambda m, a, o: calls.append(1))
    try:
        prof = profile(tiny_gpt2, ["layer 1"], docs, max_tokens=1000, **KW)
    finally:
        handle.remove()
    assert prof.n_tokens == 1000 and int(prof["layer 1"].count[0]) == 1000
    assert calls == [], "block 2 ran although only layer 1 was profiled"
    assert prof.site_names == ["blocks.1.mlp.hook_post"]
    # the budget is spent in corpus order: the first 1,000 tokens, whatever order the batches ran in
    first = profile(tiny_gpt2, ["layer 1"], docs, max_tokens=1000, **{**KW, "batch_size": 1})
    record = ActivationMonitor(tiny_gpt2, ["layer 1"]).capture(docs[:80], batch_size=1)
    x = record["blocks.1.mlp.hook_post"][:1000].double()
    torch.testing.assert_close(first["layer 1"].max, x.max(0).values, rtol=0, atol=0)
    torch.testing.assert_close(first["layer 1"].mean, x.mean(0), rtol=0, atol=1e-9)
    last_doc = int(record.doc_ids[999])
    assert first.meta["next_doc"] - 1 == last_doc and int(prof["layer 1"].stats.top.doc.max()) <= last_doc


def test_batches_sorted_by_length_pad_little(tiny_gpt2, docs):
    """Documents are batched by length within windows: the model runs on few padded positions (corpus order,
    batches of 16: about 1.6 positions per token on the built-in corpus)."""
    shapes = []
    block = tiny_gpt2.module.transformer.h[0]
    handle = block.register_forward_pre_hook(lambda m, args: shapes.append(args[0].shape[:2]))
    try:
        prof = profile(tiny_gpt2, ["layer 0"], docs, **KW)
    finally:
        handle.remove()
    positions = sum(b * t for b, t in shapes)
    lengths = [len(tiny_gpt2.tokenizer(d)["input_ids"]) for d in docs]
    in_order = sum(max(lengths[i:i + 16]) * len(lengths[i:i + 16]) for i in range(0, len(docs), 16))
    assert prof.n_tokens == sum(lengths)
    assert positions <= 1.15 * prof.n_tokens < in_order


def test_bad_inputs_fail_before_work(tiny_gpt2, tmp_path):
    with pytest.raises(InputError):
        profile(tiny_gpt2, None, ["a"], batch_size=0)
    with pytest.raises(InputError):
        profile(tiny_gpt2, None, ["a"], max_tokens=0)
    with pytest.raises(CorpusError):
        profile(tiny_gpt2, None, str(tmp_path / "nope.txt"))
    with pytest.raises(EmptyInputError):
        profile(tiny_gpt2, None, [])
    (tmp_path / "blank.txt").write_text("\n\n  \n")
    with pytest.raises(EmptyInputError):
        profile(tiny_gpt2, None, str(tmp_path / "blank.txt"))
    with pytest.raises(InputError):
        profile(tiny_gpt2, None, ["a"], resume=True)
    with pytest.raises(InputError):
        profile(tiny_gpt2, None, ["a"], overflow="squash")  # type: ignore[arg-type]


def test_corpus_formats(tiny_gpt2, tmp_path):
    texts = ["first line of text", "second line, longer than the first", "third"]
    (tmp_path / "c.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)))
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, t in enumerate(texts):
        (folder / f"{i}.txt").write_text(t)
    reference = profile(tiny_gpt2, ["mlp.0"], texts, **KW)
    for spec in (tmp_path / "c.txt", str(tmp_path / "c.jsonl"), folder):
        prof = profile(tiny_gpt2, ["mlp.0"], spec, **KW)
        assert prof.n_tokens == reference.n_tokens
        torch.testing.assert_close(prof["mlp.0"].mean, reference["mlp.0"].mean, rtol=0, atol=1e-6)
    (tmp_path / "bad.jsonl").write_text('{"txt": "x"}\n')
    with pytest.raises(CorpusError, match="text"):
        profile(tiny_gpt2, ["mlp.0"], str(tmp_path / "bad.jsonl"))


def test_windowed_long_documents(tiny_gpt2):
    long_doc = " ".join(f"word{i}" for i in range(300))
    prof = profile(tiny_gpt2, ["mlp.0"], [long_doc, "short"], overflow="window", **KW)
    n_long = len(tiny_gpt2.tokenizer(long_doc)["input_ids"])
    assert prof.n_tokens == n_long + len(tiny_gpt2.tokenizer("short")["input_ids"])
    assert prof.meta["n_truncated_docs"] == 1
    assert int(prof["mlp.0"].stats.top.pos.max()) > 128  # positions continue across windows
    # the long document's segments run in different batches (sorted by length): still one document each
    assert prof.meta["n_docs"] == 2 and prof.meta["next_doc"] == 2
    cut = profile(tiny_gpt2, ["mlp.0"], [long_doc, "short"], overflow="window", max_tokens=200, **KW)
    assert cut.n_tokens == 200 and cut.meta["n_docs"] == 1 and cut.meta["next_doc"] == 1
    assert int(cut["mlp.0"].stats.top.pos.max()) < 200  # the first 200 tokens of the long document


def _peak_rss_child(n_docs: int) -> int:
    code = textwrap.dedent(f"""
        import resource, torch
        from neuron_core import ModelInterface, profile, load_model
        from neuron_core.corpus import builtin_corpus
        from transformers import GPT2Config, GPT2LMHeadModel
        tok = load_model("smollm2-135m").tokenizer
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=len(tok)))
        docs = builtin_corpus().texts()
        corpus = [docs[i % len(docs)] for i in range({n_docs})]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        prof = profile(ModelInterface(model, tokenizer=tok), None, corpus, batch_size=32, top_k=16)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("RSS", after - before, prof.n_tokens)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert "RSS" in out.stdout, out.stderr[-2000:]
    grow, _ = out.stdout.split("RSS")[1].split()[:2]
    return int(grow)


def test_peak_memory_flat_with_10x_tokens():
    small = _peak_rss_child(400)  # ~8k tokens
    large = _peak_rss_child(4000)  # ~80k tokens
    # ru_maxrss is in KiB on Linux; allow a small constant (allocator noise), not growth with tokens
    assert large - small < 40 * 1024, f"peak RSS grew by {(large - small) / 1024:.1f} MiB with 10x tokens"


def test_table(full):
    table = full.table()
    assert len(table) == 3 * 256 and {"site", "neuron", "mean", "frac_active"} <= set(table.columns)
    assert np.isfinite(table["mean"]).all()


def test_length_sorted_batches_respect_rows_and_tokens():
    from neuron_core.batching import Segment, length_sorted_batches

    g = np.random.default_rng(4)
    window = [Segment(doc_id=i, start=0, ids=tuple(range(int(n)))) for i, n in enumerate(g.integers(1, 90, 200))]
    window.append(Segment(doc_id=200, start=0, ids=tuple(range(300))))  # longer than the token cap: runs alone
    seen = []
    for batch, rows in length_sorted_batches(window, batch_size=16, pad_id=0, max_tokens=256):
        b, t = batch.input_ids.shape
        assert b == len(rows) <= 16 and (b * t <= 256 or b == 1)
        assert t == max(len(window[i].ids) for i in rows)
        assert batch.doc_ids.tolist() == [window[i].doc_id for i in rows]
        seen += rows
    assert sorted(seen) == list(range(len(window)))
    assert [len(window[i].ids) for i in seen] == sorted(len(s.ids) for s in window)  # shortest first
    with pytest.raises(InputError):
        next(length_sorted_batches(window, batch_size=16, pad_id=0, max_tokens=0))


def test_document_windows_keep_documents_whole():
    from neuron_core.batching import Segment, document_windows

    segments = []
    for doc, n_parts in enumerate([1, 3, 1, 5, 2, 1, 1, 4]):
        segments += [Segment(doc, 10 * j, (1, 2), final=j == n_parts - 1) for j in range(n_parts)]
    windows = list(document_windows(segments, size=4))
    assert [s for w in windows for s in w] == segments  # every segment once, in order
    for w in windows:
        assert w[-1].final  # ends at a document's last segment
        assert not {s.doc_id for s in w} & {s.doc_id for other in windows if other is not w for s in other}
    assert all(len(w) >= 4 for w in windows[:-1])
    with pytest.raises(InputError):
        next(document_windows(segments, size=0))


def test_batch_tokens_cap_changes_batches_not_statistics(tiny_gpt2, docs, full):
    shapes = []
    handle = tiny_gpt2.module.transformer.h[0].register_forward_pre_hook(
        lambda m, args: shapes.append(tuple(args[0].shape[:2])))
    try:
        capped = profile(tiny_gpt2, None, docs, **{**KW, "batch_size": 64}, batch_tokens=200)
    finally:
        handle.remove()
    assert all(b * t <= 200 or b == 1 for b, t in shapes) and max(b for b, _ in shapes) > 16
    assert capped.meta["batch_tokens"] == 200 and capped.n_tokens == full.n_tokens
    for site in full.site_names:
        c, f = capped[site].stats, full[site].stats
        torch.testing.assert_close(c.mean, f.mean, rtol=0, atol=1e-6)
        assert torch.equal(c.top.doc, f.top.doc) and torch.equal(c.sample.doc, f.sample.doc)
    with pytest.raises(InputError):
        profile(tiny_gpt2, None, ["a"], batch_tokens=0)


def test_binary_documents_are_counted_warned_and_skipped_or_kept(tiny_gpt2, tmp_path):
    from neuron_core.corpus import load_corpus, looks_binary
    from neuron_core.profile import BinaryDocumentsWarning

    texts = ["plain text about the weather", "a NUL \x00 inside and an emoji \U0001F600 are still text",
             "another ordinary line"]
    garbage = [bytes(range(0, 32)) * 4, b"\xff\xfe\xfa\x80\x81" * 20 + b"ok"]
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"\n".join([texts[0].encode(), garbage[0].replace(b"\n", b" ").replace(b"\r", b" "),
                                 texts[1].encode(), garbage[1], texts[2].encode()]) + b"\n")
    assert not any(looks_binary(t) for t in texts)
    with pytest.warns(BinaryDocumentsWarning, match=r"2 documents .* look like binary data.*: skipped"):
        skipped = profile(tiny_gpt2, [0], load_corpus(path), max_tokens=10_000, progress=False)
    assert skipped.meta["n_binary_docs"] == 2 and skipped.meta["n_docs"] == 3
    plain = profile(tiny_gpt2, [0], texts, max_tokens=10_000, progress=False)
    assert torch.equal(skipped[0].stats.mean, plain[0].stats.mean)  # the same statistics as the text alone
    with pytest.warns(BinaryDocumentsWarning, match="kept"):
        kept = profile(tiny_gpt2, [0], load_corpus(path, garbage="keep"), max_tokens=10_000, progress=False)
    assert kept.meta["n_docs"] == 5 and kept.n_tokens > skipped.n_tokens
    only = tmp_path / "only.bin.txt"
    only.write_bytes(garbage[1])
    with pytest.raises(EmptyInputError, match="1 document looked like binary data and was skipped"):
        load_corpus(only)
