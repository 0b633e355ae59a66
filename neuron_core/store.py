"""Run folders and atomic writes.

Usage::

    run = RunFolder.create("runs", slug="layer 6 of gpt2")     # runs/20261127-031500-layer-6-of-gpt2/
    run.write_json("manifest.json", {...})                      # temp file + rename: never half-written
    run.path_for("tables/neuron_stats.parquet")                 # refuses paths that escape the folder

Layout (DESIGN.md): manifest.json, profile/, tables/, figures/, findings.json, trace.jsonl, report.md/.html.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from neuron_core.errors import RunFolderError

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_dir", "RunFolder",
           "environment_versions", "slugify"]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=_json_default, allow_nan=True) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a folder in a temporary sibling and swap it in on success; on failure the old folder stays intact."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def slugify(text: str, max_len: int = 48) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "run"


def environment_versions() -> dict[str, str]:
    """Versions of Python and the libraries results depend on."""
    from importlib import metadata

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("neuron-workbench", "torch", "transformers", "numpy", "scikit-learn", "pandas", "pyarrow"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


class RunFolder:
    """One investigation's folder. Every write goes through it, is atomic, and stays inside it."""

    SUBDIRS = ("profile", "tables", "figures")

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in self.SUBDIRS:
            (self.root / sub).mkdir(exist_ok=True)

    @classmethod
    def create(cls, parent: str | os.PathLike[str] = "runs", slug: str = "run",
               now: _dt.datetime | None = None) -> RunFolder:
        stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
        base = Path(parent) / f"{stamp}-{slugify(slug)}"
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        return cls(path)

    def path_for(self, relative: str | os.PathLike[str]) -> Path:
        """Absolute path of ``relative`` inside the folder; anything that escapes it is refused."""
        candidate = (self.root / relative).resolve()
        if not candidate.is_relative_to(self.root):
            raise RunFolderError(f"refusing to write outside the run folder: {relative!s}")
        return candidate

    def write_bytes(self, relative: str, data: bytes) -> Path:
        return atomic_write_bytes(self.path_for(relative), data)

    def write_text(self, relative: str, text: str) -> Path:
        return atomic_write_text(self.path_for(relative), text)

    def write_json(self, relative: str, data: Any) -> Path:
        return atomic_write_json(self.path_for(relative), data)

    def read_json(self, relative: str) -> Any:
        return json.loads(self.path_for(relative).read_text(encoding="utf-8"))

    def append_jsonl(self, relative: str, record: dict[str, Any]) -> None:
        """Append one line (a single write of a whole line, so a crash never leaves half a record)."""
        path = self.path_for(relative)
        line = json.dumps(record, default=_json_default) + "\n"
        with path.open("a", encoding="utf-8") as handle:
            handle.write(line)

    def write_parquet(self, relative: str, frame: Any) -> Path:
        """Write a pandas DataFrame as Parquet, atomically."""
        import io

        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return self.write_bytes(relative, buffer.getvalue())

    def write_manifest(self, **fields: Any) -> Path:
        manifest = {"created": _dt.datetime.now().isoformat(timespec="seconds"), "versions": environment_versions()}
        path = self.path_for("manifest.json")
        if path.exists():
            manifest.update(json.loads(path.read_text(encoding="utf-8")))
        manifest.update(fields)
        return self.write_json("manifest.json", manifest)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"
