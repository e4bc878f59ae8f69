"""The PCA map from LLM item embeddings to the collaborative view's width, kept once per encoder.

``encode`` fits it (from distributed Gram sums, :func:`from_moments`), writes the projected
vectors to ``item_embeddings_pca`` and saves the map itself to
``<warehouse>/_encoders/pca-<encoder>.npz`` (:func:`save_pca`). ``train`` loads that same map
(:func:`load_pca`) into LLM-ESR models, which use it to place items that have text but no
interactions. Pure numpy and file I/O: no Spark.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from longtail.core.errors import InputError
from longtail.core.files import read_bytes, write_bytes


@dataclass(frozen=True)
class PcaMap:
    """``project(x) = (x - mean) @ components.T``, fitted on one encoder's item embeddings.

    Attributes:
        mean: ``[E]`` float32; components: ``[k, E]`` float32 (rows = principal directions,
            each with its largest-magnitude entry positive).
        explained: share of the embeddings' variance the ``k`` components keep.
        model: the text encoder's name (the ``model`` column of ``item_embeddings``).
        item_embeddings_version: the ``item_embeddings`` version it was fitted on.
    """

    mean: np.ndarray
    components: np.ndarray
    explained: float
    model: str
    item_embeddings_version: int

    @property
    def dim(self) -> int:
        """Width of the projected vectors (``k``)."""
        return int(self.components.shape[0])

    def project(self, x: np.ndarray) -> np.ndarray:
        """``[n, k]`` float32 projections of ``[n, E]`` embeddings."""
        return project_rows(x, self.mean, self.components)


def project_rows(x: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """``(x - mean) @ components.T`` as float32 (the one projection, on executors and drivers)."""
    return ((x - mean) @ components.T).astype(np.float32)


def from_moments(n: int, total: np.ndarray, gram: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Top-``k`` PCA from a row count, the row sum ``[E]`` and the Gram matrix ``[E, E]`` (float64).

    Returns:
        ``(mean [E], components [k, E], explained variance ratio)``, float32 arrays.
    """
    mean = total / n
    cov = (gram - n * np.outer(mean, mean)) / (n - 1)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:k]
    comps = vectors[:, order].T
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(1)])
    comps *= np.where(signs == 0, 1, signs)[:, None]
    all_variance = float(np.clip(values, 0, None).sum())
    explained = float(np.clip(values[order], 0, None).sum() / all_variance) if all_variance > 0 else 0.0
    return mean.astype(np.float32), comps.astype(np.float32), explained


def pca_path(warehouse_root: str, encoder: str) -> str:
    """Where the map of ``encoder`` (a config value or an encoder name) is saved."""
    from longtail.encoders.text import safe_model_name

    return f"{str(warehouse_root).rstrip('/')}/_encoders/pca-{safe_model_name(encoder)}.npz"


def save_pca(warehouse_root: str, pca: PcaMap) -> None:
    """Write the map atomically next to the tables."""
    buf = io.BytesIO()
    np.savez(
        buf, mean=pca.mean, components=pca.components, explained_variance_ratio=np.float64(pca.explained),
        model=np.str_(pca.model), item_embeddings_version=np.int64(pca.item_embeddings_version),
    )
    write_bytes(pca_path(warehouse_root, pca.model), buf.getvalue())


def load_pca(warehouse_root: str, encoder: str) -> PcaMap | None:
    """The saved map of ``encoder``, or None when ``encode`` never saved one."""
    data = read_bytes(pca_path(warehouse_root, encoder), missing_ok=True)
    if data is None:
        return None
    with np.load(io.BytesIO(data)) as npz:
        return PcaMap(
            mean=npz["mean"].astype(np.float32), components=npz["components"].astype(np.float32),
            explained=float(npz["explained_variance_ratio"]), model=str(npz["model"]),
            item_embeddings_version=int(npz["item_embeddings_version"]),
        )


def require_pca(warehouse_root: str, encoder: str, version: int, dim: int) -> PcaMap:
    """The map that matches ``item_embeddings`` at ``version`` and has ``dim`` components.

    Raises:
        InputError: no map, or one fitted on other embeddings or to another width (rerun encode).
    """
    pca = load_pca(warehouse_root, encoder)
    where = pca_path(warehouse_root, encoder)
    if pca is None:
        raise InputError(f"no PCA map of encoder {encoder!r} at {where}; run `longtail encode`")
    if pca.item_embeddings_version != version or pca.model != encoder:
        raise InputError(
            f"the PCA map at {where} was fitted on item_embeddings version {pca.item_embeddings_version}, "
            f"the table is at version {version}; rerun `longtail encode`"
        )
    if pca.dim != dim:
        raise InputError(f"the PCA map at {where} has {pca.dim} components, expected {dim}; rerun `longtail encode`")
    return pca
