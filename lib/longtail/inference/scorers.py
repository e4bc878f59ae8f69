"""Scorers: everything ``evaluate`` and ``score`` rank with, behind one dot-product interface.

A :class:`Scorer` gives user vectors for histories and item vectors for the catalogue (both
in the catalogue's item index, row 0 padding); a score is their dot product. Implementations:
a trained model (:class:`ModelScorer`), the baselines (:mod:`longtail.inference.baselines`) and
a weighted blend of several (:class:`HybridScorer`). :class:`ScorerFactory` builds them by name.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
import torch
from pyspark.sql import DataFrame

from longtail.core import schemas
from longtail.core.config import EvaluateConfig, HybridConfig
from longtail.core.errors import InputError, ModelNotFoundError
from longtail.core.files import read_npy
from longtail.inference.baselines import (
    BASELINES,
    ContentScorer,
    PopularityScorer,
    als_version,
    fit_als,
    history_pairs,
    item_counts,
)
from longtail.inference.catalogue import Catalogue
from longtail.inference.items import ItemIndex
from longtail.models.histories import compact_left
from longtail.ranking.topk import (
    catalogue_moments,
    log_popularity,
    zscore_blend_items,
    zscore_blend_users,
)

ModelLoader = Callable[..., Any]


@runtime_checkable
class Scorer(Protocol):
    """What evaluation and scoring need from a model; all arrays are in catalogue idx space.

    ``user_vectors`` gets whole histories (``LongTensor[B, L]`` left-padded with 0, most
    recent last) and truncates them itself when it has a maximum length.
    """

    name: str
    version: str

    def user_vectors(self, histories: torch.Tensor) -> torch.Tensor:  # [B, D]
        ...

    def item_vectors(self) -> torch.Tensor:  # [N, D], row 0 padding
        ...

    def scorable(self) -> np.ndarray:  # [N] bool: items this scorer can rank
        ...



class ModelScorer:
    """A trained model (:class:`~longtail.inference.store.TrainedModel`) seen in catalogue idx space.

    Maps catalogue idxs to the model's idxs by item id (items unknown to the model drop out
    of the history, which is re-compacted), pads or truncates to the model's ``max_len``, and
    builds item vectors for the catalogue; items with text but no model row get theirs from
    ``module.item_vectors_from_text`` when the model has a semantic view (LLM-ESR).
    """

    def __init__(self, trained: Any, catalogue: Catalogue, text_items: bool = True) -> None:
        self.trained = trained
        self.name = str(trained.name)
        self.version = str(trained.version)
        self.max_len = int(trained.max_len)
        self._lut = torch.from_numpy(catalogue.index.lookup(ItemIndex(trained.item_ids)))
        self._catalogue: Catalogue | None = catalogue
        self._text_items = text_items
        self._items: torch.Tensor | None = None
        self._scorable: np.ndarray | None = None
        #: Why items with text only were not placed, when they were not.
        self.text_items_skipped: str | None = None

    @property
    def lut(self) -> torch.Tensor:
        """Catalogue idx -> the model's item idx (0 where the model has no such item)."""
        return self._lut

    def user_vectors(self, histories: torch.Tensor) -> torch.Tensor:
        mapped = compact_left(self._lut[histories])
        width = mapped.shape[1]
        if width >= self.max_len:
            mapped = mapped[:, width - self.max_len:]
        else:
            mapped = torch.cat([torch.zeros((mapped.shape[0], self.max_len - width), dtype=torch.long), mapped], dim=1)
        with torch.inference_mode():
            return self.trained.user_vectors(mapped).to(torch.float32)

    def item_vectors(self) -> torch.Tensor:
        if self._items is None:
            self._build_items()
        assert self._items is not None
        return self._items

    def scorable(self) -> np.ndarray:
        if self._scorable is None:
            self._build_items()
        assert self._scorable is not None
        return self._scorable

    def _build_items(self) -> None:
        cat = self._catalogue
        assert cat is not None
        with torch.inference_mode():
            model_items = self.trained.item_vectors().to(torch.float32)
        lut = self._lut.numpy()
        items = torch.zeros((cat.size, model_items.shape[1]), dtype=torch.float32)
        in_model = lut > 0
        items[torch.from_numpy(in_model)] = model_items[self._lut[torch.from_numpy(in_model)]]
        scorable = in_model.copy()
        module = getattr(self.trained, "module", None)
        from_text = getattr(module, "item_vectors_from_text", None)
        # Plain backbones have the method but no semantic view (supports_text False); text
        # embedded by another encoder than the model's (other width) cannot be placed either.
        llm_dim = (getattr(self.trained, "config", None) or {}).get("llm_dim")
        if llm_dim is not None and cat.has_embedding.any() and int(llm_dim) != cat.embeddings.shape[1]:
            self.text_items_skipped = (
                f"{schemas.ITEM_EMBEDDINGS} are {cat.embeddings.shape[1]}-d, the model reads {llm_dim}-d: new items not placed"
            )
        elif self._text_items and callable(from_text) and getattr(module, "supports_text", True):
            need = np.nonzero(~in_model & cat.has_embedding)[0]
            need = need[need > 0]
            with torch.inference_mode():
                for start in range(0, len(need), 4096):
                    rows = need[start : start + 4096]
                    vectors = from_text(torch.from_numpy(cat.embeddings[rows]))
                    items[torch.from_numpy(rows)] = vectors.to(torch.float32)
            scorable[need] = True
        self._items, self._scorable = items, scorable
        self._catalogue = None  # not needed for user vectors: keep it out of what executors receive


class HybridScorer:
    """Weighted blend of per-user z-scored scores of several scorers (see :func:`longtail.ranking.topk.zscore_blend_users`).

    Each part's scores are standardised per user over the catalogue (mean and spread from
    the catalogue's item moments, not over the user's unseen items only: one matrix
    product, and the difference is a handful of items), then weighted and summed. The
    items the blend may rank are those of the first part (the model).
    """

    def __init__(self, parts: list[tuple[float, Scorer]], name: str, version: str) -> None:
        self.parts = [(float(w), s) for w, s in parts if w != 0.0]
        if not self.parts:
            raise InputError("score.hybrid: every weight is 0")
        self.name, self.version = name, version
        self._primary = parts[0][1]
        self._moments: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._items: torch.Tensor | None = None

    def scorable(self) -> np.ndarray:
        return self._primary.scorable()

    def item_vectors(self) -> torch.Tensor:
        if self._items is None:
            allowed = torch.from_numpy(self.scorable().copy())
            matrices = [s.item_vectors() for _, s in self.parts]
            self._moments = [catalogue_moments(m, allowed) for m in matrices]
            self._items = zscore_blend_items(matrices)
        return self._items

    def user_vectors(self, histories: torch.Tensor) -> torch.Tensor:
        if self._moments is None:
            self.item_vectors()
        assert self._moments is not None
        parts = [
            (w, s.user_vectors(histories), mean, cov) for (w, s), (mean, cov) in zip(self.parts, self._moments)
        ]
        return zscore_blend_users(parts)


class ExposureAdjusted:
    """A scorer with its logits lowered by a per-item bias: ``score - penalty * bias``.

    ``kind`` names the bias: ``popularity`` (``ln(1 + training count)``, a logit adjustment) or
    ``hubness`` (:func:`~longtail.ranking.topk.item_hubness`, saved with the model). Still one
    dot product: the user side gets a column ``penalty``, the item side ``-bias``.
    """

    def __init__(self, inner: Scorer, penalty: float, bias: np.ndarray, name: str, version: str,
                 kind: str = "popularity") -> None:
        self.inner, self.penalty, self.name, self.version, self.kind = inner, float(penalty), name, version, kind
        self._bias = torch.as_tensor(bias, dtype=torch.float32)

    def scorable(self) -> np.ndarray:
        return self.inner.scorable()

    def item_vectors(self) -> torch.Tensor:
        items = self.inner.item_vectors().to(torch.float32)
        return torch.cat([items, -self._bias[:, None]], dim=1)

    def user_vectors(self, histories: torch.Tensor) -> torch.Tensor:
        users = self.inner.user_vectors(histories).to(torch.float32)
        return torch.cat([users, torch.full((users.shape[0], 1), self.penalty)], dim=1)


def served_adjustment(setting: str | float, model_config: dict | None) -> tuple[str, float]:
    """``(kind, penalty)`` of the exposure adjustment a trained model is served with: a
    ``popularity`` penalty of ``setting`` when it is a number, else the adjustment chosen at
    training (``exposure_adjustment`` in its ``config.json``; older models: ``popularity_penalty``,
    0 when absent)."""
    if setting != "model":
        return "popularity", float(setting)
    config = model_config or {}
    chosen = config.get("exposure_adjustment")
    if isinstance(chosen, dict):
        return str(chosen.get("kind", "popularity")), float(chosen.get("penalty", 0.0) or 0.0)
    return "popularity", float(config.get("popularity_penalty", 0.0) or 0.0)


def catalogue_hubness(trained: Any, lut: torch.Tensor) -> np.ndarray:
    """The model's saved hubness per catalogue idx (``lut``: catalogue idx -> model idx, 0 when
    unknown). Items the model has no row for (new, text-only) get the median, a neutral value.

    Raises:
        ModelNotFoundError: the model folder has no hubness file.
    """
    from longtail.inference.store import HUBNESS_FILE  # noqa: PLC0415 - store imports torch models

    path = f"{trained.path}/{HUBNESS_FILE}"
    try:
        hub = read_npy(path).astype(np.float32)
    except (FileNotFoundError, OSError) as exc:
        raise ModelNotFoundError(f"model {trained.name} {trained.version}: cannot read {path} ({exc})") from None
    model_idx = lut.numpy()
    known = (model_idx > 0) & (model_idx < hub.shape[0])
    fill = float(np.median(hub[1:])) if hub.shape[0] > 1 else 0.0
    out = np.where(known, hub[np.where(known, model_idx, 0)], fill).astype(np.float32)
    out[0] = 0.0
    return out


def hybrid_on(hybrid: HybridConfig | None) -> bool:
    """Whether a hybrid config changes anything (a blend part besides the model, or MMR)."""
    return hybrid is not None and (
        hybrid.als_weight != 0.0 or hybrid.content_weight != 0.0 or hybrid.mmr_lambda is not None
    )


def hybrid_label(hybrid: HybridConfig) -> str:
    """Short description of a hybrid config, used in the variant's version string."""
    mmr = "off" if hybrid.mmr_lambda is None else f"{hybrid.mmr_lambda:g}x{hybrid.mmr_candidates}"
    return f"model{hybrid.model_weight:g}-als{hybrid.als_weight:g}-content{hybrid.content_weight:g}-mmr{mmr}"


class ScorerFactory:
    """Builds (and memoises) the scorers of one job: trained models, baselines, hybrids.

    Args:
        wh: warehouse; catalogue: the items to rank.
        history: which part of ``user_sequences`` baselines learn from: ``train`` for
            evaluation (what the trained models' parameters saw), ``all`` for serving.
        als_cfg: ALS settings (``evaluate`` section).
        model_loader: ``load_model(wh, name, version)``; default :func:`longtail.inference.store.load_model`.
        popularity_penalty: ``score.popularity_penalty``: ``model`` (the exposure adjustment saved
            with each trained model, none when it has none) or a number (a popularity penalty);
            trained models' logits are adjusted by it (:class:`ExposureAdjusted`), baselines never.
    """

    def __init__(
        self,
        wh,
        catalogue: Catalogue,
        history: str,
        als_cfg: EvaluateConfig,
        model_loader: ModelLoader | None = None,
        popularity_penalty: str | float = "model",
    ) -> None:
        self.wh, self.catalogue, self.history, self.als_cfg = wh, catalogue, history, als_cfg
        self.popularity_penalty = popularity_penalty
        self._loader = model_loader
        self._memo: dict[tuple[str, str | None], Scorer] = {}

    def scorer(self, name: str, version: str | None = None) -> Scorer:
        """The scorer of a trained model or baseline. Raises ModelNotFoundError for unknown ones."""
        key = (name, version)
        if key not in self._memo:
            self._memo[key] = self._build(name, version)
        return self._memo[key]

    def hybrid(self, name: str, version: str | None, hybrid: HybridConfig) -> HybridScorer:
        """The model blended with ALS and content similarity as ``hybrid`` weighs them."""
        if hybrid.model_weight <= 0.0:
            raise InputError(f"score.hybrid.model_weight: {hybrid.model_weight} would drop the model; set it above 0")
        model = self.scorer(name, version)
        parts: list[tuple[float, Scorer]] = [(hybrid.model_weight, model)]
        if hybrid.als_weight:
            parts.append((hybrid.als_weight, self.scorer("als")))
        if hybrid.content_weight:
            parts.append((hybrid.content_weight, self.scorer("content")))
        return HybridScorer(parts, name=f"{name}+hybrid", version=f"{model.version}+{hybrid_label(hybrid)}")

    def _build(self, name: str, version: str | None) -> Scorer:
        cat = self.catalogue
        if name in BASELINES:
            scorer = self._baseline(name)
            if version is not None and version != scorer.version:
                raise ModelNotFoundError(
                    f"model {name}: version {version!r} does not exist (the baseline's version is {scorer.version!r})"
                )
            return scorer
        loader = self._loader
        if loader is None:
            from longtail.inference.store import load_model as loader  # noqa: PLC0415 - torch models load lazily
        trained = loader(self.wh, name, version)
        scorer = ModelScorer(trained, cat)
        kind, penalty = served_adjustment(self.popularity_penalty, getattr(trained, "config", None))
        if not penalty:
            return scorer
        # Popularity: training counts (item_stats), those the penalty was chosen with at training.
        bias = catalogue_hubness(trained, scorer.lut) if kind == "hubness" else log_popularity(cat.popularity)
        return ExposureAdjusted(scorer, penalty, bias, name=scorer.name, version=scorer.version, kind=kind)

    def _baseline(self, name: str) -> Scorer:
        cat = self.catalogue
        if name == "content":
            if not cat.has_embedding.any():
                raise InputError(f"table {schemas.ITEM_EMBEDDINGS}: no embeddings; the content baseline needs `longtail encode`")
            return ContentScorer(cat.embeddings, cat.has_embedding, version=cat.embedding_model or "1")
        seqs = read_user_sequences(self.wh)
        if name == "popularity":
            counts = item_counts(seqs, self.history, cat.size)
            return PopularityScorer(counts, cat.known, version=f"counts-{self.history}")
        cfg = self.als_cfg
        scorer = fit_als(
            history_pairs(seqs, self.history), cat.size, cat.known,
            rank=cfg.als_rank, max_iter=cfg.als_max_iter, reg=cfg.als_reg, seed=cfg.seed,
        )
        assert scorer.version == als_version(cfg.als_rank, cfg.als_max_iter, cfg.als_reg, cfg.seed)
        return scorer


def read_user_sequences(wh) -> DataFrame:
    """``user_sequences``, checked against the contract."""
    seqs = wh.read(schemas.USER_SEQUENCES)
    schemas.require_columns(seqs, schemas.USER_SEQUENCES_SCHEMA, schemas.USER_SEQUENCES)
    return seqs


