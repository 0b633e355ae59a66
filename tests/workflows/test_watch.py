"""The live terminal view: plain lines off a terminal, rich in a pseudo-terminal, Ctrl-C, one-line errors."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from neuron_core import ModelInterface, load_model
from neuron_core.live import LiveMonitor
from workflows.watch import main

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "The cat sat on the"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 saved like any local model (safetensors + tokenizer)."""
    tok = load_model("smollm2-135m", device="cpu").tokenizer
    torch.manual_seed(1)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    assert (folder / "model.safetensors").exists()
    return folder


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "workflows.watch", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def test_plain_lines_with_flags_and_summary(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # What the neurons will do, from the library directly: the view must show exactly this.
    live = LiveMonitor(ModelInterface(load_model(str(tiny_dir), device="cpu")), neurons=["L1/N5", "L0/N7"],
                       top_k=3)
    steps = list(live.stream_generate(PROMPT, max_new_tokens=6))
    values = sorted(s.neurons["L1/N5"] for s in steps)
    threshold = (values[2] + values[3]) / 2  # some steps above, some below
    over = [s for s in steps if s.neurons["L1/N5"] >= threshold]
    assert 0 < len(over) < len(steps)

    code = main(["--model", str(tiny_dir), "--neurons", "L1/N5, L0/N7", PROMPT, "--max-new-tokens", "6",
                 "--threshold", repr(threshold), "--top", "3", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    rows = [line for line in lines if line.lstrip().startswith(("prompt", "step "))]
    assert len(rows) == len(steps) == 7
    for row, step in zip(rows, steps, strict=True):
        assert repr(step.token) in row
        assert f"L1/N5={step.neurons['L1/N5']:+.3f}" in row and f"L0/N7={step.neurons['L0/N7']:+.3f}" in row
        assert ("L1/N5=" + f"{step.neurons['L1/N5']:+.3f} !" in row) == (step in over)
        top = sorted([(f"L{1 if 'blocks.1' in site else 0}/N{i}", v) for site, t in step.top.items()
                      for i, v in zip(t.indices, t.values, strict=True)], key=lambda p: -p[1])[:3]
        assert row.endswith("| top: " + " ".join(f"{name}={v:+.2f}" for name, v in top))
    assert rows[0].lstrip().startswith("prompt")
    summary = lines[lines.index("summary: 6 tokens generated"):]
    assert f"FLAG crossed {threshold:g} at {len(over)} token(s)" in summary[1]
    assert summary[1].startswith("  L1/N5: max")
    text = "".join(s.token for s in steps[1:])
    assert summary[-1] == f"text: {text!r}"


def test_bad_neuron_ref_exits_with_one_line() -> None:
    result = run_cli("--model", "smollm2-135m", "--neurons", "L6/N12,L6/X99", "hello")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: cannot read neuron reference 'L6/X99'")
    assert "Traceback" not in result.stderr


def test_other_bad_arguments(tiny_dir: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cases = [
        (["--model", str(tiny_dir), "--neurons", "L1/N256", "hi"], "neuron 256 is out of range for layer 1"),
        (["--model", str(tiny_dir), "--neurons", "L7/N1", "hi"], "layer 7 is out of range"),
        (["--model", str(tiny_dir / "missing"), "hi"], "no such model file or folder"),
        (["--model", "no-such-model-anywhere", "hi"], "model 'no-such-model-anywhere' is not available"),
        (["--model", str(tiny_dir), "--max-new-tokens", "0", "hi"], "--max-new-tokens must be >= 1"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == ""
        err = captured.err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err


def read_until(fd: int, proc: subprocess.Popen[bytes], done, timeout: float) -> bytes:  # type: ignore[no-untyped-def]
    """Read the pty until done(buffer) or the child ends; raises on timeout."""
    buf = b""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                return buf
            if not chunk:
                return buf
            buf += chunk
            if done(buf):
                return buf
        elif proc.poll() is not None:
            return buf
    raise AssertionError(f"timed out; output so far: {buf[-2000:]!r}")


def test_live_view_in_a_terminal_and_ctrl_c(tiny_dir: Path) -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    cmd = [sys.executable, "-m", "workflows.watch", "--model", str(tiny_dir), "--neurons", "L1/N5,L0/N7", PROMPT,
           "--max-new-tokens", "500", "--delay", "0.1", "--device", "cpu"]
    # SIGINT at its default action in the child: a CI job may start with it ignored, which the child would inherit
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(slave)
    try:
        before = read_until(master, proc, lambda b: b"step 3" in b, timeout=90)
        assert b"step 3" in before, before[-2000:]
        assert b"\x1b[" in before  # a live, styled view: rich drew it for a terminal
        assert b"L1/N5" in before and b"generated" in before
        proc.send_signal(signal.SIGINT)
        after = read_until(master, proc, lambda b: False, timeout=60)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert code == 130
    text = (before + after).decode(errors="replace")
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    message = [line for line in text.splitlines() if "interrupted" in line]
    assert len(message) == 1 and "hooks removed" in message[0]
    assert "step 499" not in text  # it stopped early
