"""Ctrl-C, for real: a SIGINT sent to the entry points' processes (run, campaign, chat) at several points.

Each child starts with SIGINT at its default action (a CI job may start with it ignored, and Python only installs its
KeyboardInterrupt handler when it is not). The bundled SmolLM2 runs offline; small sizes keep each run short."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--llm", "scripted", "--max-tokens", "3000", "--max-neurons", "24", "--embedder", "hidden"]


def _start(args: list[str], **kwargs) -> subprocess.Popen[str]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            **kwargs)


def _events(trace: Path) -> list[dict]:
    if not trace.exists():
        return []
    return [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]


def _wait_for_state(folder: Path, state: str, child: subprocess.Popen[str], timeout: float = 120,
                    other_than: Path | None = None) -> Path:
    """The run folder under ``folder`` (not ``other_than``) whose trace has entered ``state``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert child.poll() is None, child.communicate()
        try:  # the run swaps folders in atomically: one may vanish while the search walks it
            traces = list(folder.rglob("trace.jsonl"))
        except FileNotFoundError:
            continue
        for trace in traces:
            entered = any(e["kind"] == "transition" and e["to"] == state for e in _events(trace))
            if entered and trace.parent != other_than:
                return trace.parent
        time.sleep(0.05)
    raise AssertionError(f"no run reached {state}")


def _interrupt(child: subprocess.Popen[str]) -> tuple[int, str, str]:
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    return child.returncode, out, err


@pytest.mark.parametrize("state", ["CAPTURE", "ANALYZE"])
def test_ctrl_c_during_a_run_exits_130_and_the_run_resumes(tmp_path, state):
    child = _start(["workflows.run", "investigate layer 6 of smollm2-135m", *SMALL, "--out", str(tmp_path)])
    run_dir = _wait_for_state(tmp_path, state, child)
    time.sleep(0.5)  # inside the state's tool
    code, out, err = _interrupt(child)
    assert code == 130, err
    assert "terminate called" not in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted: interrupted (Ctrl-C); resume with: python -m "
                                                   f"workflows.run --resume {run_dir}")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "stopped" and manifest["exit_code"] == 130
    assert "interrupted" in manifest["reason"] and "--resume" in manifest["reason"]
    events = _events(run_dir / "trace.jsonl")
    assert events[-1]["kind"] == "run_end" and any(e["kind"] == "interrupt" and e["worker_stopped"] for e in events)
    leftover = run_dir / ".profile.k3j9x0qa"  # as a SIGKILL during a save would leave it
    leftover.mkdir()
    resumed = subprocess.run([sys.executable, "-m", "workflows.run", "--resume", str(run_dir), "--llm", "scripted",
                              "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "done"
    assert not leftover.exists() and (run_dir / "report.md").exists()


@pytest.mark.parametrize("cut", ["first experiment, ANALYZE", "second experiment, CAPTURE"])
def test_ctrl_c_during_a_campaign_exits_130_and_the_campaign_goes_on_later(tmp_path, cut):
    spec = tmp_path / "c.yaml"
    spec.write_text("name: sweep\ndefaults: {llm: scripted, max_tokens: 3000, max_neurons: 24, embedder: hidden}\n"
                    "sweep: {layers: [3, 6], models: [smollm2-135m]}\n")
    out = tmp_path / "out"
    child = _start(["workflows.campaign", str(spec), "--out", str(out)])
    if cut.startswith("first"):
        cut_run = _wait_for_state(out, "ANALYZE", child)
        before = []
    else:
        end = time.monotonic() + 180
        while not any(r.get("status") == "done" for r in _summary(out).get("results", [])):
            assert child.poll() is None and time.monotonic() < end, child.communicate()
            time.sleep(0.1)
        first = Path(_summary(out)["results"][0]["run_dir"])
        cut_run = _wait_for_state(out / "sweep", "CAPTURE", child, other_than=first)
        before = ["done"]
    time.sleep(0.5)
    code, _, err = _interrupt(child)
    assert code == 130, err
    assert "terminate called" not in err and "run the same command again" in err
    summary = _summary(out)
    assert not summary["complete"]
    assert [r["status"] for r in summary["results"]] == [*before, "stopped"] + ["not run"] * (1 - len(before))
    done_traces = {r["run_dir"]: Path(r["run_dir"], "trace.jsonl").read_bytes()
                   for r in summary["results"] if r["status"] == "done"}
    again = subprocess.run([sys.executable, "-m", "workflows.campaign", str(spec), "--out", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    final = _summary(out)
    assert final["complete"] and [r["status"] for r in final["results"]] == ["done", "done"]
    for run_dir, trace in done_traces.items():
        assert Path(run_dir, "trace.jsonl").read_bytes() == trace  # finished: not run again
    resumed = next(r for r in final["results"] if r["run_dir"] == str(cut_run))
    assert resumed["resumed"]


def _summary(out: Path) -> dict:
    path = out / "sweep" / "campaign.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_ctrl_c_during_a_chat_investigation_keeps_the_session(tmp_path):
    child = _start(["workflows.chat", "--llm", "scripted", "--out", str(tmp_path)], stdin=subprocess.PIPE)
    assert child.stdin is not None
    child.stdin.write("investigate layer 6 of smollm2-135m\n")
    child.stdin.flush()
    _wait_for_state(tmp_path, "CAPTURE", child)
    time.sleep(0.5)
    child.send_signal(signal.SIGINT)
    child.stdin.write("/report\n/quit\n")
    child.stdin.flush()
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert "stopped: stopped: interrupted (Ctrl-C)" in out and "terminate called" not in err
