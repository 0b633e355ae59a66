"""``python -m neuron_core profile``: options are checked by range before any model loads."""

from __future__ import annotations

import pytest

from neuron_core.cli import main


@pytest.mark.parametrize("flags, message", [
    (["--top", "-1"], "--top: Input should be greater than or equal to 1 (got -1)"),
    (["--top", "0"], "--top: Input should be greater than or equal to 1 (got 0)"),
    (["--max-tokens", "0"], "--max-tokens: Input should be greater than or equal to 1 (got 0)"),
    (["--batch-size", "-5"], "--batch-size: Input should be greater than or equal to 1 (got -5)"),
    (["--shards", "0"], "--shards: Input should be greater than or equal to 1 (got 0)"),
])
def test_out_of_range_options_exit_2_before_loading(capsys, monkeypatch, flags, message):
    import neuron_core

    monkeypatch.setattr(neuron_core.ModelInterface, "from_pretrained", lambda *a, **k: pytest.fail("loaded"))
    assert main(["profile", *flags]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_sharded_profile_from_the_command_line(capsys):
    assert main(["profile", "--layer", "3", "--max-tokens", "600", "--shards", "2", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "profiled 600 tokens" in out and "2 shards on local" in out and "L3/N" in out
