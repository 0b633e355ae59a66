"""Run folders under faults: simultaneous creation, locks, corrupt files, leftovers of interrupted writes."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from neuron_core.errors import CorruptRunFolderError, RunFolderBusyError, RunFolderError
from neuron_core.store import RunFolder

NOW = dt.datetime(2026, 12, 7, 3, 0, 0)


def _create(args: tuple[str, object]) -> str:
    parent, barrier_time = args
    while time.time() < barrier_time:  # every process leaves the barrier at the same instant
        pass
    return str(RunFolder.create(parent, slug="same request", now=NOW).root)


def test_simultaneous_creation_never_shares_a_folder(tmp_path):
    start = time.time() + 1.0
    with multiprocessing.get_context("fork").Pool(8) as pool:
        roots = pool.map(_create, [(str(tmp_path), start)] * 16)
    assert len(set(roots)) == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(os.path.basename(r) for r in roots)


def test_out_that_is_a_file_or_not_writable_is_a_typed_error(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        RunFolder.create(afile)
    with pytest.raises(RunFolderError, match="in the way"):
        RunFolder.create(afile / "sub")
    locked = tmp_path / "ro"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root ignores chmod: say the OS refused
    with pytest.raises(RunFolderError, match="permission denied"):
        RunFolder.create(locked)
    assert list(locked.iterdir()) == []


def test_a_locked_folder_refuses_a_second_holder_until_released(tmp_path):
    first = RunFolder(tmp_path / "run").lock()
    with pytest.raises(RunFolderBusyError, match=f"pid {os.getpid()}"):
        RunFolder(tmp_path / "run").lock()  # a second open file: flock refuses it even in one process
    first.unlock()
    RunFolder(tmp_path / "run").lock().unlock()


def test_a_killed_holder_releases_its_lock(tmp_path):
    code = ("import sys, time; from neuron_core.store import RunFolder; held = RunFolder(sys.argv[1]).lock(); "
            "print('locked', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    with pytest.raises(RunFolderBusyError, match=f"pid {child.pid}"):
        RunFolder(tmp_path / "run").lock()
    child.send_signal(signal.SIGKILL)
    child.wait()
    RunFolder(tmp_path / "run").lock().unlock()


@pytest.mark.parametrize("content, problem", [
    ('{"status": "done", "plan": {"mo', "not valid JSON"),
    ("[1, 2, 3]", "expected a JSON object, found list"),
    ("", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
])
def test_a_corrupt_manifest_is_named_and_nothing_is_created(tmp_path, content, problem):
    run = tmp_path / "run"
    run.mkdir()
    path = run / "manifest.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(CorruptRunFolderError, match="manifest.json") as info:
        RunFolder.open(run)
    assert problem in str(info.value)
    assert sorted(p.name for p in run.iterdir()) == ["manifest.json"]  # no subfolders made first


def test_open_needs_a_run_folder(tmp_path):
    with pytest.raises(RunFolderError, match="no such folder"):
        RunFolder.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match="no manifest.json"):
        RunFolder.open(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.json").write_text(json.dumps({"status": "done"}))
    assert RunFolder.open(tmp_path / "empty").read_json("manifest.json", dict) == {"status": "done"}


def test_leftovers_of_interrupted_writes_are_removed_and_nothing_else(tmp_path):
    run = RunFolder(tmp_path / "run")
    leftovers = [run.root / ".profile.k2j4_x9a", run.root / ".profile.old-4242",
                 run.root / "tables" / ".neuron_stats.parquet.ab12cd34.tmp", run.root / ".findings.json.zz99yy88.tmp"]
    leftovers[0].mkdir()
    (leftovers[0] / "stats.safetensors").write_bytes(b"\0" * 1024)
    leftovers[1].mkdir()
    for path in leftovers[2:]:
        path.write_text("half")
    keep = [run.root / "profile" / "stats.safetensors", run.root / ".lock", run.root / ".notes", run.root / "a.b"]
    for path in keep:
        path.write_text("kept")
    removed = run.lock().clean_temporaries()
    assert sorted(removed) == sorted(leftovers)
    assert all(not p.exists() for p in leftovers) and all(p.exists() for p in keep)
