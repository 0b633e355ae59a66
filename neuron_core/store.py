"""Run folders and atomic writes.

Usage::

    run = RunFolder.create("runs", slug="layer 6 of gpt2")     # runs/20261127-031500-layer-6-of-gpt2/
    run.write_json("manifest.json", {...})                      # temp file + rename: never half-written
    run.path_for("tables/neuron_stats.parquet")                 # refuses paths that escape the folder

Layout (docs/ARCHITECTURE.md, "Run folder"): manifest.json, profile/, tables/, figures/, findings.json, trace.jsonl,
report.md/.html.
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

from neuron_core.errors import CorruptRunFolderError, RunFolderBusyError, RunFolderError

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_dir", "RunFolder",
           "environment_versions", "slugify", "read_json_file"]


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


def read_json_file(path: Path, expect: type | None = None) -> Any:
    """``path`` parsed as JSON; :class:`CorruptRunFolderError` says which file and what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptRunFolderError(f"{path}: missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptRunFolderError(f"{path}: not valid JSON ({exc}); it may be truncated. Nothing was changed")\
            from None
    if expect is not None and not isinstance(data, expect):
        raise CorruptRunFolderError(f"{path}: expected a JSON {'object' if expect is dict else expect.__name__}, "
                                    f"found {type(data).__name__}. Nothing was changed")
    return data


def _usable_parent(parent: Path) -> None:
    """A parent folder for run folders: created if missing; a file, or a folder we cannot write to, is refused."""
    if parent.exists() and not parent.is_dir():
        raise RunFolderError(f"--out {str(parent)!r} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunFolderError(f"--out {str(parent)!r}: a file is in the way") from None
    except PermissionError:
        raise RunFolderError(f"cannot create {str(parent)!r}: permission denied; choose another --out") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunFolderError(f"cannot write to {str(parent)!r}: permission denied; choose another --out")


def _flock(handle: Any) -> None:
    """An exclusive, non-blocking lock on an open file (BlockingIOError when another process holds it)."""
    import fcntl

    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


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
    """One investigation's folder. Every write goes through it, is atomic, and stays inside it.

    ``RunFolder.create`` makes a new folder under a unique name (``mkdir`` that fails when the name is taken, then
    the next name: two processes never share one); ``RunFolder.open`` reopens an existing one for a resume, after
    checking that its manifest reads; ``lock()`` claims it for this process (released on exit, even on a kill).
    """

    SUBDIRS = ("profile", "tables", "figures")
    LOCK = ".lock"
    _TEMPORARY = re.compile(r"^\.(?!lock$).+\.(?:old-\d+|[a-z0-9_]{8}(?:\.tmp)?)$")  # atomic writes' leftovers

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self._lock_handle: Any = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for sub in self.SUBDIRS:
                (self.root / sub).mkdir(exist_ok=True)
        except FileExistsError:
            raise RunFolderError(f"cannot use {str(self.root)!r} as a run folder: a file is in the way") from None
        except PermissionError:
            raise RunFolderError(f"cannot write to {str(self.root)!r}: permission denied; choose another --out"
                                 ) from None

    @classmethod
    def create(cls, parent: str | os.PathLike[str] = "runs", slug: str = "run",
               now: _dt.datetime | None = None) -> RunFolder:
        """A new folder ``<parent>/<stamp>-<slug>`` (``-2``, ``-3``, ... when the name is taken, even by a process
        that took it a moment ago)."""
        stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
        base = Path(parent) / f"{stamp}-{slugify(slug)}"
        _usable_parent(Path(parent))
        for n in range(1, 10_000):
            path = base if n == 1 else base.with_name(f"{base.name}-{n}")
            try:
                path.mkdir()  # atomic: exactly one process creates a given name
            except FileExistsError:
                continue
            except PermissionError:
                raise RunFolderError(f"cannot create a run folder in {str(parent)!r}: permission denied; "
                                     "choose another --out") from None
            return cls(path)
        raise RunFolderError(f"no free run folder name under {str(parent)!r} for {base.name!r}")

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> RunFolder:
        """An existing run folder, to resume: it must hold a ``manifest.json`` that reads as a JSON object. Checked
        before anything is created or written there."""
        path = Path(root)
        if not path.is_dir():
            raise RunFolderError(f"cannot resume {str(root)!r}: no such folder")
        if not (path / "manifest.json").is_file():
            raise RunFolderError(f"cannot resume {str(root)!r}: no manifest.json there (not a run folder)")
        read_json_file(path / "manifest.json", dict)
        return cls(path)

    def lock(self) -> RunFolder:
        """Claim the folder for this process; :class:`RunFolderBusyError` if another process holds it. The lock is
        an OS file lock: it goes when the process ends, however it ends."""
        if self._lock_handle is not None:
            return self
        handle = open(self.root / self.LOCK, "a+", encoding="utf-8")  # noqa: SIM115 - held open while locked
        try:
            _flock(handle)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunFolderBusyError(f"{str(self.root)!r} is in use by another process (pid {holder}); wait for it "
                                     "to finish, or use another folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_handle = handle
        return self

    def unlock(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()  # closing the file releases the lock
            self._lock_handle = None

    def clean_temporaries(self) -> list[Path]:
        """Remove what interrupted atomic writes left behind (temporary files and folders, ``.profile.*``); call it
        while holding the lock, so no live writer's temporary goes. Returns what was removed."""
        removed = []
        for path in sorted(self.root.rglob(".*")):
            if self._TEMPORARY.match(path.name) and path.exists():
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                removed.append(path)
        return removed

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

    def read_json(self, relative: str, expect: type | None = None) -> Any:
        """A JSON file of the folder; :class:`CorruptRunFolderError` (naming the file and the problem) when it does
        not read as JSON, or is not an ``expect`` (dict, list)."""
        return read_json_file(self.path_for(relative), expect)

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
            manifest.update(read_json_file(path, dict))
        manifest.update(fields)
        return self.write_json("manifest.json", manifest)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"
