"""The HTML dashboards in a real browser: headless Chromium driven over the DevTools protocol.

Each page must render (plotly draws), log no console error, load nothing but local files, and the scripts hidden in
the corpus must never run (``window.__pwned`` stays undefined) while showing as text. Screenshots are written to
``test-artifacts/viz/``. Chromium is required: ``bash tests/browser_setup.sh`` installs it (the test fails, it does
not skip, when it is missing).

The protocol runs over ``--remote-debugging-pipe`` (file descriptors 3 and 4, NUL-separated JSON): no port, no
websocket library, nothing listening on the network.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from neuron_core import ActivationMonitor, ModelInterface, profile
from neuron_core.analysis.types import Mode, ModeExample, PolysemanticNeuron
from neuron_core.viz import ActivationVisualizer, NeuronLogitEffects

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "viz"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--window-size=1400,1000")
INJECT = "<script>window.__pwned = 1; console.error('pwned')</script>"
IMG = '<img src=x onerror="window.__pwned=2">'
TEXTS = [
    "The cat sat on the mat and looked at the dog.",
    f"Notes: {INJECT} and {IMG} end.",
    "Paris is the capital of France; Berlin is the capital of Germany.",
]
L1 = "blocks.1.mlp.hook_post"


def find_chromium() -> str:
    chosen = os.environ.get("CHROMIUM")
    if chosen:
        if not (shutil.which(chosen) or Path(chosen).is_file()):
            pytest.fail(f"CHROMIUM={chosen!r} does not exist; unset it or run `bash tests/browser_setup.sh`")
        return chosen
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium is not installed, so the dashboards cannot be checked in a browser: run "
                "`bash tests/browser_setup.sh` (or set CHROMIUM=/path/to/chrome)")


class DevTools:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe."""

    def __init__(self, executable: str) -> None:
        self.profile_dir = tempfile.mkdtemp(prefix="viz-chromium-")
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()

        def wire_fds() -> None:  # in the child: the protocol pipes must be fds 3 (commands) and 4 (replies)
            a = fcntl.fcntl(to_child, fcntl.F_DUPFD, 100)
            b = fcntl.fcntl(from_child, fcntl.F_DUPFD, 100)
            os.dup2(a, 3)
            os.dup2(b, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        args = [executable, *FLAGS, f"--user-data-dir={self.profile_dir}", "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(args, preexec_fn=wire_fds, close_fds=False, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session = ""

    def _read(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._in], [], [], left)
            if not ready:
                return None
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"chromium closed the DevTools pipe (exit {self.proc.poll()}): {err[-2000:]}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)  # type: ignore[no-any-return]

    def call(self, method: str, params: dict[str, Any] | None = None, *, session: bool = True,
             timeout: float = 30.0) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(max(deadline - time.monotonic(), 0.0))
            if reply is None:
                raise TimeoutError(f"no reply to {method} within {timeout} s")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def drain(self, seconds: float) -> None:
        """Collect events for a while (late console messages)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            event = self._read(left)
            if event is not None:
                self.events.append(event)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        for seen in self.events:
            if seen.get("method") == method:
                return seen
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            event = self._read(left)
            if event is not None:
                self.events.append(event)
                if event.get("method") == method:
                    return event
        raise TimeoutError(f"no {method} within {timeout} s")

    def start_page(self) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)
        self.session = self.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Runtime.enable", "Log.enable", "Page.enable", "Network.enable"):
            self.call(domain)
        self.call("Emulation.setDeviceMetricsOverride", {"width": 1400, "height": 1000, "deviceScaleFactor": 1,
                                                          "mobile": False})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluating {expression[:80]!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, path: Path, *, plots: int = 0) -> None:
        """Load a page and wait until ``plots`` plotly graphs have drawn."""
        self.events.clear()
        self.call("Page.navigate", {"url": path.resolve().as_uri()})
        self.wait_event("Page.loadEventFired")
        deadline = time.monotonic() + 20
        while plots and time.monotonic() < deadline:
            if self.evaluate("document.querySelectorAll('.js-plotly-plot .main-svg').length") >= plots:
                break
            time.sleep(0.1)
        self.drain(0.5)

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (CSP violations, failed loads) so far."""
        out = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                        for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                out.append("exception: " + str(details.get("exception", {}).get("description", details.get("text"))))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                out.append(f"log ({params['entry'].get('source')}): {params['entry'].get('text')}")
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path) -> Path:
        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close", session=False, timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass  # already gone; the process is ended below either way
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for fd in (self._in, self._out):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    tools = DevTools(find_chromium())
    try:
        tools.start_page()
        yield tools
    finally:
        tools.close()


@pytest.fixture(scope="module")
def tiny(tok):
    from tests.conftest import make_tiny_gpt2

    return ModelInterface(make_tiny_gpt2(tok, n_layer=2, n_inner=1536), tokenizer=tok, name="tiny-gpt2-wide")


@pytest.fixture(scope="module")
def record(tiny):
    return ActivationMonitor(tiny, ["layer 0", "layer 1"]).capture(TEXTS)


def verdicts() -> list[PolysemanticNeuron]:
    modes = [Mode(label="french words", share=0.55, n_examples=10, top_tokens=[" le", "<b>"],
                  examples=[ModeExample(text="Le chat [[ est]] là", token=" est", value=2.0, doc_id=0, position=2)],
                  effect=0.01),
             Mode(label=INJECT, share=0.35, n_examples=6, top_tokens=[INJECT, IMG],
                  examples=[ModeExample(text=f"a [[{INJECT}]] {IMG}", token=INJECT, value=1.0, doc_id=1,
                                        position=3)])]
    return [PolysemanticNeuron(site=L1, neuron=7, score=0.8, p_value=0.01, z_score=3.0, n_modes=2, separation=0.5,
                               modes=modes, summary=f"summary with {IMG}")]


def effects() -> list[NeuronLogitEffects]:
    return [NeuronLogitEffects(site=L1, neuron=7, promoted=[(INJECT, 1.0), (" Paris", 0.5)],
                               suppressed=[(IMG, -1.0)])]


def injection_neuron(record) -> int:
    """A neuron whose strongest token is the "script" right after "<" in the injected text."""
    rows = np.flatnonzero(record.doc_ids.numpy() == 1)
    row = next(int(r) for r in rows if record.tokens[r].strip() == "script")
    acts = record[L1].numpy()  # [n_tokens, 1536]
    peaks = acts.argmax(0)
    owners = np.flatnonzero(peaks == row)
    return int(owners[0]) if owners.size else int(acts[row].argmax())


def test_the_harness_sees_injected_scripts(browser, tmp_path):
    """Negative control: a page that does run the injection is caught (so a pass below means something)."""
    page = tmp_path / "bad.html"
    page.write_text(f"<!doctype html><html><body>{INJECT}{IMG}</body></html>", encoding="utf-8")
    browser.open(page)
    assert browser.evaluate("window.__pwned") in (1, 2)
    assert any("pwned" in p for p in browser.problems())


def test_record_dashboard_in_chromium(browser, record, tmp_path):
    k = injection_neuron(record)
    folder = tmp_path / "dash"
    index = ActivationVisualizer(record).save_dashboard(folder, neurons=[(L1, 7), (L1, k), "L0/N3"],
                                                        detections=verdicts(), logit_effects=effects())

    browser.open(index, plots=2)  # the layer heatmap and the tokens × neurons heatmap
    browser.screenshot(ARTIFACTS / "overview.png")
    assert browser.problems() == []
    assert browser.evaluate("typeof window.__pwned") == "undefined"
    assert all(u.startswith(("file://", "data:", "blob:", "about:")) for u in browser.requests()), browser.requests()
    assert browser.evaluate("document.querySelectorAll('#heatmap image, #token-heatmap image').length") >= 2
    text = browser.evaluate("document.body.innerText")
    assert INJECT in text and "summary with <img src=x" in text  # shown as text, not run
    assert browser.evaluate("document.querySelectorAll('img').length") == 0

    # the table filters and sorts with the page's own script
    shown = browser.evaluate("""(() => {
        const f = document.getElementById('filter'); f.value = 'L1/N7'; f.dispatchEvent(new Event('input'));
        return Array.from(document.querySelectorAll('#neurons tbody tr')).filter(r => !r.hidden)
            .map(r => r.cells[0].textContent.trim()); })()""")
    assert "L1/N7" in shown and all("l1/n7" in s.lower() for s in shown)
    maxes = browser.evaluate("""(() => {
        const f = document.getElementById('filter'); f.value = ''; f.dispatchEvent(new Event('input'));
        document.querySelector('#neurons th[data-key="7"]').click();
        return Array.from(document.querySelectorAll('#neurons tbody tr'))
            .map(r => parseFloat(r.cells[7].getAttribute('data-v'))); })()""")
    assert len(maxes) > 100 and maxes == sorted(maxes, reverse=True)
    assert browser.problems() == []

    browser.open(folder / f"neuron_L1_N{k}.html", plots=1)
    browser.screenshot(ARTIFACTS / "neuron_record.png")
    assert browser.problems() == []
    assert browser.evaluate("typeof window.__pwned") == "undefined"
    assert "<script>window" in browser.evaluate("document.getElementById('top').innerText")
    tips = browser.evaluate("Array.from(document.querySelectorAll('#top .tok.strong')).map(t => t.title)")
    assert tips and all(": " in t and "doc " in t for t in tips)  # values on hover

    browser.open(folder / "neuron_L1_N7.html", plots=1)
    assert browser.problems() == []
    assert browser.evaluate("typeof window.__pwned") == "undefined"
    modes = browser.evaluate("document.getElementById('modes').innerText")
    assert INJECT in modes and "french words" in modes
    assert IMG in browser.evaluate("document.getElementById('logits').innerText")


def test_profile_dashboard_in_chromium(browser, tiny, tmp_path):
    corpus = TEXTS * 8 + [f"Line {i}: the value is {i * 7}." for i in range(20)]
    prof = profile(tiny, ["layer 0", "layer 1"], corpus, max_tokens=1200, top_k=8, bottom_k=4, n_samples=8,
                   progress=False)
    index = ActivationVisualizer(prof).save_dashboard(tmp_path / "dash", detections=verdicts(),
                                                      logit_effects=effects(), max_pages=4)
    browser.open(index, plots=1)
    assert browser.problems() == []
    assert browser.evaluate("typeof window.__pwned") == "undefined"
    browser.open(tmp_path / "dash" / "neuron_L1_N7.html", plots=1)
    browser.screenshot(ARTIFACTS / "neuron_profile.png")
    assert browser.problems() == []
    assert browser.evaluate("typeof window.__pwned") == "undefined"
    assert browser.evaluate("document.querySelectorAll('#top .ex').length") > 0
    assert all(u.startswith(("file://", "data:", "blob:", "about:")) for u in browser.requests())
