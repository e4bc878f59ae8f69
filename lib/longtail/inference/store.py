"""Trained models on disk: the model folder format, the ``models`` table, and loading for inference.

A model folder ``<warehouse>/_models/<model>/<version>/`` holds ``weights.pt`` (state dict),
``config.json`` (model name, version, sizes, text encoder, hyperparameters), ``item_ids.json``
(the item_id of each item idx the model was trained on) and ``metrics.json`` (validation
figures and per-epoch history), and ``item_hubness.npy`` when the model is served with the
``hubness`` exposure adjustment (the bias per item idx it subtracts), and ``optimizer.pt`` (the
Adam state at the best epoch) when it was trained with ``train.warm_start`` on. ``train`` writes it (:func:`save_model_dir`) and registers it
(:func:`register_model`); ``evaluate``, ``score`` and notebooks load it (:func:`load_model`).
"""
from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from longtail.core.errors import ModelNotFoundError
from longtail.core.files import filesystem, location, read_bytes, remove_tree
from longtail.models import build_model, check_model_name, needs_text
from longtail.models.histories import ENCODE_CHUNK, encode_histories, ragged_from_lists

#: Version of the folder format written by :func:`save_model_dir`.
FORMAT = 1
#: The per-item bias of the ``hubness`` exposure adjustment, float32 ``[n_items + 1]``.
HUBNESS_FILE = "item_hubness.npy"
#: The Adam state at the best epoch by parameter name, saved when ``train.warm_start`` is on:
#: the next warm start of the model resumes from it.
OPTIMIZER_FILE = "optimizer.pt"



@dataclass
class TrainedModel:
    """A saved model loaded for inference (eval mode, CPU).

    Attributes:
        name, version, path: as registered in the ``models`` table.
        module: the :class:`~longtail.models.layers.SequentialRecommender`.
        item_ids: ``item_ids[idx]`` is the item_id of item idx (index 0 is ``""``).
        max_len: longest history the model reads.
        config: the saved config (model name, hyperparameters, sizes).
    """

    name: str
    version: str
    path: str
    module: Any
    item_ids: list[str]
    max_len: int
    config: dict = field(default_factory=dict)

    def user_vectors(self, histories: Any, chunk: int = ENCODE_CHUNK):
        """``[B, D]`` float tensor of user vectors.

        Args:
            histories: item idx sequences, oldest first (a list of lists or arrays), or a
                left-padded ``LongTensor[B, L]``; only the last ``max_len`` items count.
        """
        import torch

        if isinstance(histories, torch.Tensor):
            h = histories.detach().to("cpu").numpy().astype(np.int64)
            values = h[h != 0]  # row-major: each row's items stay in order
            offsets = np.concatenate([[0], np.cumsum((h != 0).sum(axis=1))]).astype(np.int64)
        else:
            values, offsets = ragged_from_lists(histories)
        rows = np.arange(len(offsets) - 1)
        return encode_histories(self.module, values, offsets, rows, self.max_len, chunk)

    def item_vectors(self):
        """``[n_items + 1, D]`` item vectors (row 0 padding)."""
        import torch

        with torch.no_grad():
            return self.module.item_vectors()

    def item_vectors_from_text(self, llm_embeddings):
        """``[N, D]`` vectors for new items from their LLM embeddings (LLM-ESR models only)."""
        import torch

        with torch.no_grad():
            return self.module.item_vectors_from_text(torch.as_tensor(llm_embeddings))


def save_model_dir(model_dir: str, module, config: dict, item_ids_json: bytes, metrics: dict,
                   extra_files: dict[str, bytes] | None = None) -> None:
    """Write a model folder: a temporary folder, then a rename, so that it appears whole or not at all.

    Object stores (S3, GCS, Azure) have no folder rename (pyarrow moves single objects only there):
    each file is moved into the folder (copied and deleted), ``config.json`` last. A save killed
    part-way leaves an incomplete folder that no ``models`` row names (``train`` registers the
    model only once this returns), which ``vacuum`` deletes.

    Args:
        model_dir: the folder to create (local path or URI).
        module: the trained model; its state dict becomes ``weights.pt``.
        config: ``config.json`` (must name ``model``, ``version``, ``n_items``, ``llm_dim``,
            ``max_len`` and ``hyperparameters``); ``format`` is added.
        item_ids_json: ``item_ids.json`` as written by the training run.
        metrics: ``metrics.json``.
        extra_files: more files by name (for example :data:`HUBNESS_FILE`).
    """
    import torch

    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    files = {
        "weights.pt": buf.getvalue(),
        "config.json": json.dumps({"format": FORMAT, **config}, indent=2).encode(),
        "item_ids.json": item_ids_json,
        "metrics.json": json.dumps(metrics, indent=2).encode(),
        **(extra_files or {}),
    }
    fs, final = filesystem(model_dir)
    suffix = f".tmp-{uuid.uuid4().hex[:8]}"
    tmp = f"{final}{suffix}"
    rename = location(model_dir).kind in ("local", "other")  # filesystems that rename folders
    fs.create_dir(tmp, recursive=True)
    try:
        for name, data in files.items():
            with fs.open_output_stream(f"{tmp}/{name}") as out:
                out.write(data)
        if rename:
            fs.move(tmp, final)
        else:
            for name in sorted(files, key=lambda n: n == "config.json"):  # config.json last
                fs.move(f"{tmp}/{name}", f"{final}/{name}")
            remove_tree(f"{model_dir}{suffix}")
    except BaseException:
        remove_tree(f"{model_dir}{suffix}")
        if not rename:
            remove_tree(model_dir)  # the files moved so far (the version is new: nothing else is there)
        raise


def load_model_dir(path: str) -> TrainedModel:
    """Load the model saved in ``path`` (eval mode, CPU).

    Raises:
        FileNotFoundError: naming the file, when the folder is incomplete.
    """
    import torch

    from longtail.models import TextTables

    config = json.loads(read_bytes(f"{path}/config.json"))
    item_ids = json.loads(read_bytes(f"{path}/item_ids.json"))
    hp = config["hyperparameters"]
    name, n_items = config["model"], int(config["n_items"])
    text = TextTables.zeros(n_items, int(config["llm_dim"]), int(hp["hidden"])) if needs_text(name) else None
    module = build_model(name, n_items, hp, text)
    state = torch.load(io.BytesIO(read_bytes(f"{path}/weights.pt")), map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    module.eval()
    return TrainedModel(
        name=name, version=config["version"], path=path, module=module, item_ids=item_ids,
        max_len=int(config["max_len"]), config=config,
    )


def load_model(wh, name: str, version: str | None = None) -> TrainedModel:
    """Load a registered model: ``version``, or the latest one in the ``models`` table.

    Raises:
        ModelNotFoundError: unknown model name, no trained version of it, or no such version.
    """
    from pyspark.sql import functions as F

    from longtail.core.schemas import MODELS

    check_model_name(name)
    hint = f"run `longtail train --model {name}`"
    if not wh.exists(MODELS):
        raise ModelNotFoundError(f"model {name!r}: no trained model yet (no table {MODELS}); {hint}")
    rows = wh.read(MODELS).filter(F.col("model") == name).select("model_version", "path", "trained_at").collect()
    if not rows:
        raise ModelNotFoundError(f"model {name!r}: no trained version in table {MODELS}; {hint}")
    if version is None:
        row = _latest(rows)
    else:
        matches = [r for r in rows if r["model_version"] == version]
        if not matches:
            known = sorted((r["model_version"] for r in rows), reverse=True)[:5]
            raise ModelNotFoundError(
                f"model {name!r}: no version {version!r} in table {MODELS} (latest: {', '.join(known)})"
            )
        row = matches[-1]
    return load_model_dir(row["path"])


def _latest(rows):
    # Versions start with their UTC training time, so the largest is the newest.
    return max(rows, key=lambda r: (r["model_version"], r["trained_at"]))


def latest_version(wh, name: str, version: str | None = None) -> tuple[str, str] | None:
    """``(model_version, path)`` of the newest registered version of ``name`` (or of ``version``
    when given); None when there is none (no such version)."""
    from pyspark.sql import functions as F

    from longtail.core.schemas import MODELS

    if not wh.exists(MODELS):
        return None
    rows = wh.read(MODELS).filter(F.col("model") == name).select("model_version", "path", "trained_at").collect()
    if version is not None:
        rows = [r for r in rows if r["model_version"] == version]
    if not rows:
        return None
    row = _latest(rows)
    return row["model_version"], row["path"]


def register_model(wh, model_name: str, version: str, path: str, metrics: dict) -> None:
    """Append one row for the saved model to the ``models`` table.

    Args:
        wh: the warehouse; model_name, version, path: the saved model folder;
        metrics: the saved ``metrics.json`` (best epoch, validation figures, timing, seed).
    """
    from longtail.core.schemas import MODELS

    row = (
        model_name,
        version,
        path,
        dt.datetime.now(dt.timezone.utc),
        int(metrics["best_epoch"]),
        float(metrics["valid_ndcg10"]),
        float(metrics["valid_hr10"]),
        float(metrics["seconds_per_epoch"]),
        int(metrics["processes"]),
        int(metrics["seed"]),
    )
    with wh.job():
        wh.append_rows(MODELS, [row])
