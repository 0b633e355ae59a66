"""docs/RELIABILITY.md names a test for every case; each named test exists (the page cannot drift from the suite)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_the_reliability_page_names_exists():
    text = (ROOT / "docs" / "RELIABILITY.md").read_text()
    names = 0
    for cell in re.findall(r"`(tests/[\w/]+\.py)::(\w+)`((?:, `::\w+`)*)", text):
        path, first, more = cell
        source = (ROOT / path).read_text()
        for name in [first, *re.findall(r"`::(\w+)`", more)]:
            assert f"def {name}(" in source, f"{path}::{name} is named in RELIABILITY.md but does not exist"
            names += 1
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| #")
            and not line.startswith("| case") and "---" not in line]
    assert all("tests/" in row for row in rows), [row[:60] for row in rows if "tests/" not in row]
    assert names >= 45
