"""Built-in data, corpus/probe loading, and the run folder's guarantees."""

from __future__ import annotations

import json

import pytest

from neuron_core import CorpusError, RunFolderError, load_corpus, load_probes
from neuron_core.corpus import builtin_corpus, parse_probe_line
from neuron_core.store import RunFolder, atomic_dir, atomic_write_text


def test_builtin_corpus_size_and_variety():
    corpus = builtin_corpus()
    assert len(corpus) >= 3000
    assert len(set(corpus.labels or [])) >= 25
    # round-robin: any prefix of 100 documents already covers every topic
    assert len(set((corpus.labels or [])[:100])) >= 25
    assert len(set(corpus.texts())) == len(corpus)  # no duplicate lines
    assert load_corpus("builtin").name.startswith("builtin-v")


def test_probes_shape():
    probes = load_probes()
    assert len(probes) >= 30
    for concept, p in probes.items():
        assert len(p.all) >= 40, concept
        assert p.held_out and p.fit, concept
        for ex in p.all:
            assert ex.span_text.strip() and "[[" not in ex.text and ex.text[ex.start:ex.end] == ex.span_text
    ex = parse_probe_line("animals", "The [[fox]] ran.")
    assert (ex.text, ex.span_text) == ("The fox ran.", "fox")
    with pytest.raises(CorpusError):
        parse_probe_line("animals", "no span here")
    with pytest.raises(CorpusError):
        load_probes(concepts=["no_such_concept"])


def test_user_probes_folder(tmp_path):
    (tmp_path / "fruit.txt").write_text("I ate an [[apple]] today.\nA ripe [[pear]] fell.\n")
    probes = load_probes(tmp_path)
    assert [e.span_text for e in probes["fruit"].all] == ["apple", "pear"]


def test_run_folder_atomic_and_confined(tmp_path):
    run = RunFolder.create(tmp_path, slug="Investigate layer 6 of GPT-2!")
    assert run.root.name.endswith("investigate-layer-6-of-gpt-2")
    assert all((run.root / sub).is_dir() for sub in ("profile", "tables", "figures"))
    run.write_json("findings.json", {"a": 1})
    assert run.read_json("findings.json") == {"a": 1}
    with pytest.raises(RunFolderError):
        run.write_text("../escape.txt", "x")
    with pytest.raises(RunFolderError):
        run.write_text("/etc/passwd", "x")
    run.write_manifest(model="m", seed=0)
    manifest = run.read_json("manifest.json")
    assert manifest["model"] == "m" and "torch" in manifest["versions"]
    run.append_jsonl("trace.jsonl", {"state": "INIT"})
    run.append_jsonl("trace.jsonl", {"state": "PLAN"})
    lines = (run.root / "trace.jsonl").read_text().splitlines()
    assert [json.loads(x)["state"] for x in lines] == ["INIT", "PLAN"]
    assert not list(run.root.rglob("*.tmp"))


def test_atomic_writes_keep_old_data_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    folder = tmp_path / "d"
    with atomic_dir(folder) as tmp:
        (tmp / "x").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(folder) as tmp:
            (tmp / "x").write_text("half")
            raise RuntimeError
    assert (folder / "x").read_text() == "v1" and target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
