"""``longtail score``: the nightly top-K table, and the scoring machinery ``evaluate`` shares.

Shape of the job:

1. The driver builds the *catalogue* (``item_stats`` items, plus items that have text in
   ``item_embeddings``/``items`` but no interactions yet) and a :class:`~longtail.inference.baselines.Scorer`
   for the model (a trained model through ``load_model``, a baseline, or a hybrid blend),
   computes the item matrix once, and ships one :class:`ScoringBundle` to the executors as a
   broadcast (cloudpickled, so fakes and models defined anywhere travel).
2. ``mapInPandas`` over ``user_sequences``: each Python worker unpickles the bundle once
   (cache in this importable module) and, per batch of ``user_batch`` users, builds the user
   vectors from the whole history (nothing held out at serving time), scores the catalogue
   in ``item_chunk`` slices with one matrix product each, masks the user's items and keeps
   the exact top K (merge per chunk). Memory per task: ``user_batch x item_chunk`` scores.
3. Users with no usable history (in ``users`` or ``interactions`` but not in
   ``user_sequences``) get popularity within the categories of the items they touched, else
   global popularity, flagged ``fallback = true``.
4. One atomic write replaces the ``run_date`` partition of ``recommendations``; then one row
   in ``recommendation_runs`` (a rerun of the date replaces it).

``score`` is the model's dot product (with ``score.hybrid``: the blend of per-user z-scores);
with the MMR re-rank on, ``rank`` follows the re-rank and ``score`` stays the relevance, so
it need not fall with the rank.

K larger than some user's unseen catalogue fails the run before anything is written
(:class:`~longtail.core.errors.InputError`, found by the same aggregation that computes the run's
figures): the contract promises exactly K rows per user, and padding with seen items would
break its other promise, so a short partition is never written.

Serving-time baselines learn from the whole histories (``item_idxs``): popularity counts
and ALS item factors; ``evaluate`` uses the training part instead.
"""
from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longtail.core import schemas
from longtail.inference.baselines import (
    BASELINES,
    ContentScorer,
    PopularityScorer,
    Scorer,
    als_version,
    fit_als,
    history_pairs,
    item_counts,
)
from longtail.core.config import EvaluateConfig, HybridConfig, ScoreConfig
from longtail.core.errors import InputError, ModelNotFoundError
from longtail.ranking.metrics import list_diversities
from longtail.core.tables import Warehouse
from longtail.ranking.topk import (
    catalogue_moments,
    chunked_topk,
    compact_left,
    mmr_rerank,
    pad_histories,
    zscore_blend_items,
    zscore_blend_users,
)

ModelLoader = Callable[..., Any]

#: Users per MMR re-rank step (memory: MMR_ROWS x candidates x embedding dimension floats).
MMR_ROWS = 256


# --------------------------------------------------------------------------- catalogue


@dataclass
class Catalogue:
    """The items that can be ranked, indexed by item idx (row 0 padding).

    Known items keep their ``item_stats`` idx; new items (text, no interactions) follow from
    ``n_known`` on, in item id order. New items count as tail (they have no interactions).
    """

    item_ids: list[str]
    known: np.ndarray  # [N] bool, in item_stats
    tail: np.ndarray  # [N] bool
    popularity: np.ndarray  # [N] int64, item_stats.popularity (training part)
    embeddings: np.ndarray  # [N, E] float32, raw semantic embeddings (zero rows where none)
    has_embedding: np.ndarray  # [N] bool
    n_known: int  # known idxs are < n_known
    embedding_model: str | None = None

    @property
    def size(self) -> int:
        return len(self.item_ids)

    def unit_embeddings(self) -> np.ndarray | None:
        """L2-normalised semantic embeddings, or None when no item has one."""
        if not self.has_embedding.any():
            return None
        norms = np.linalg.norm(self.embeddings, axis=1, keepdims=True)
        return (self.embeddings / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def load_catalogue(wh: Warehouse, include_new_items: bool = True, embedding_model: str | None = None) -> Catalogue:
    """Read ``item_stats`` (required), ``item_embeddings`` and ``items`` (optional) into a catalogue.

    Catalogue-sized arrays live on the driver (items x embedding dimension); users never do.

    Args:
        include_new_items: append items with an embedding but no ``item_stats`` row.
        embedding_model: keep embeddings of this encoder; None: the encoder with most items.

    Raises:
        TableNotFoundError: no ``item_stats``. SchemaError: a table lacks a contract column.
    """
    stats = wh.read(schemas.ITEM_STATS)
    schemas.require_columns(stats, schemas.ITEM_STATS_SCHEMA, schemas.ITEM_STATS)
    stats_pd = stats.select("item_id", "item_idx", "popularity", "segment").toPandas()
    n_known = int(stats_pd["item_idx"].max()) + 1 if len(stats_pd) else 1
    emb_pd = None
    if wh.exists(schemas.ITEM_EMBEDDINGS):
        emb = wh.read(schemas.ITEM_EMBEDDINGS)
        schemas.require_columns(emb, schemas.ITEM_EMBEDDINGS_SCHEMA, schemas.ITEM_EMBEDDINGS)
        emb_pd = emb.select("item_id", "embedding", "model").toPandas()
        if len(emb_pd):
            if embedding_model is None:
                counts = emb_pd.groupby("model").size()
                embedding_model = sorted(counts[counts == counts.max()].index)[0]
            emb_pd = emb_pd[emb_pd["model"] == embedding_model].drop_duplicates("item_id")
    known_ids = set(stats_pd["item_id"])
    new_ids: list[str] = []
    if include_new_items and emb_pd is not None and len(emb_pd):
        candidates = set(emb_pd["item_id"]) - known_ids
        if candidates and wh.exists(schemas.ITEMS):
            listed = {r["item_id"] for r in wh.read(schemas.ITEMS).select("item_id").collect()}
            candidates &= listed
        new_ids = sorted(candidates)
    size = n_known + len(new_ids)
    item_ids = [""] * size
    known = np.zeros(size, dtype=bool)
    tail = np.zeros(size, dtype=bool)
    popularity = np.zeros(size, dtype=np.int64)
    idx = stats_pd["item_idx"].to_numpy(dtype=np.int64)
    for i, item_id in zip(idx, stats_pd["item_id"]):
        item_ids[i] = item_id
    known[idx] = True
    known[0] = False
    tail[idx] = (stats_pd["segment"] == schemas.TAIL).to_numpy()
    popularity[idx] = stats_pd["popularity"].fillna(0).to_numpy(dtype=np.int64)
    for j, item_id in enumerate(new_ids):
        item_ids[n_known + j] = item_id
        tail[n_known + j] = True
    dim = 1
    has_embedding = np.zeros(size, dtype=bool)
    embeddings = np.zeros((size, dim), dtype=np.float32)
    if emb_pd is not None and len(emb_pd):
        position = {item_id: i for i, item_id in enumerate(item_ids) if item_id}
        rows = [(position[i], e) for i, e in zip(emb_pd["item_id"], emb_pd["embedding"]) if i in position and e is not None]
        if rows:
            dim = len(rows[0][1])
            embeddings = np.zeros((size, dim), dtype=np.float32)
            for i, e in rows:
                if len(e) != dim:
                    raise InputError(
                        f"table {schemas.ITEM_EMBEDDINGS}: item {item_ids[i]!r} has a {len(e)}-d embedding, others {dim}-d"
                    )
                embeddings[i] = np.asarray(e, dtype=np.float32)
                has_embedding[i] = True
    return Catalogue(item_ids, known, tail, popularity, embeddings, has_embedding, n_known, embedding_model)


# --------------------------------------------------------------------------- scorers


class ModelScorer:
    """A trained model (``longtail.stages.train.TrainedModel``) seen in catalogue idx space.

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
        position = {item_id: i for i, item_id in enumerate(trained.item_ids) if i > 0 and item_id}
        lut = np.array([position.get(item_id, 0) if item_id else 0 for item_id in catalogue.item_ids], dtype=np.int64)
        self._lut = torch.from_numpy(lut)
        self._catalogue: Catalogue | None = catalogue
        self._text_items = text_items
        self._items: torch.Tensor | None = None
        self._scorable: np.ndarray | None = None
        #: Why items with text only were not placed, when they were not.
        self.text_items_skipped: str | None = None

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
        model_loader: ``load_model(wh, name, version)``; default ``longtail.stages.train.load_model``.
    """

    def __init__(
        self,
        wh: Warehouse,
        catalogue: Catalogue,
        history: str,
        als_cfg: EvaluateConfig,
        model_loader: ModelLoader | None = None,
    ) -> None:
        self.wh, self.catalogue, self.history, self.als_cfg = wh, catalogue, history, als_cfg
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
            from longtail.stages.train import load_model as loader  # noqa: PLC0415 - heavy, only for trained models
        trained = loader(self.wh, name, version)
        return ModelScorer(trained, cat)

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


def read_user_sequences(wh: Warehouse) -> DataFrame:
    """``user_sequences``, checked against the contract."""
    seqs = wh.read(schemas.USER_SEQUENCES)
    schemas.require_columns(seqs, schemas.USER_SEQUENCES_SCHEMA, schemas.USER_SEQUENCES)
    return seqs


# --------------------------------------------------------------------------- bundles on executors


@dataclass
class ScoringBundle:
    """Everything a task needs to score users: shipped once, unpickled once per worker."""

    scorer: Any  # user side: .user_vectors(histories)
    items: np.ndarray  # [N, D] float32
    excluded: np.ndarray  # item idxs never ranked (not scorable)
    unit_embeddings: np.ndarray | None  # [N, E] for MMR and diversity
    tail: np.ndarray  # [N] bool
    item_ids: list[str]
    mmr_lambda: float | None = None
    mmr_candidates: int = 100
    label: str = ""
    # Filled on the executor from the arrays above.
    _torch: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def tensors(self) -> dict[str, torch.Tensor]:
        if not self._torch:
            self._torch = {
                "items": torch.from_numpy(np.ascontiguousarray(self.items)),
                "excluded": torch.from_numpy(self.excluded.astype(np.int64)),
            }
            if self.unit_embeddings is not None:
                self._torch["unit"] = torch.from_numpy(np.ascontiguousarray(self.unit_embeddings))
        return self._torch

    def top_k(
        self, histories: torch.Tensor, k: int, item_chunk: int, seen: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` items per user, excluding ``seen`` (default: the histories); MMR when configured."""
        t = self.tensors()
        seen = histories if seen is None else seen
        users = self.scorer.user_vectors(histories).to(torch.float32)
        if self.mmr_lambda is None or "unit" not in t:
            return chunked_topk(users, t["items"], k, seen=seen, excluded=t["excluded"], item_chunk=item_chunk)
        c = max(self.mmr_candidates, k)
        scores, items = chunked_topk(users, t["items"], c, seen=seen, excluded=t["excluded"], item_chunk=item_chunk)
        picked, picked_scores = self.rerank(items, scores, k)
        return picked_scores, picked

    def rerank(self, candidates: torch.Tensor, scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """MMR re-rank of per-user candidates (see :func:`longtail.ranking.topk.mmr_rerank`): ``(items, scores)``."""
        assert self.mmr_lambda is not None
        unit = self.tensors()["unit"]
        # The re-rank gathers [users, candidates, embedding] floats: bound it to MMR_ROWS users.
        picks = [
            mmr_rerank(candidates[s : s + MMR_ROWS], scores[s : s + MMR_ROWS], unit, k, self.mmr_lambda)
            for s in range(0, candidates.shape[0], MMR_ROWS)
        ]
        return torch.cat([p[0] for p in picks]), torch.cat([p[1] for p in picks])


def make_bundle(
    scorer: Scorer,
    catalogue: Catalogue,
    hybrid: HybridConfig | None = None,
    restrict_to_known: bool = False,
    label: str = "",
) -> ScoringBundle:
    """Compute the item matrix on the driver and pack what the executors need."""
    items = scorer.item_vectors().to(torch.float32).contiguous().numpy()
    allowed = np.asarray(scorer.scorable(), dtype=bool).copy()
    allowed[0] = False
    if restrict_to_known:
        allowed &= catalogue.known
    mmr = hybrid.mmr_lambda if hybrid is not None else None
    unit = catalogue.unit_embeddings()
    if mmr is not None and unit is None:
        raise InputError("score.hybrid.mmr_lambda: the MMR re-rank needs item_embeddings (run `longtail encode`)")
    if mmr is not None and not 0.0 <= mmr <= 1.0:
        raise InputError(f"score.hybrid.mmr_lambda: {mmr} is not in [0, 1]")
    return ScoringBundle(
        scorer=scorer,
        items=items,
        excluded=np.nonzero(~allowed)[0].astype(np.int64),
        unit_embeddings=unit,
        tail=catalogue.tail.copy(),
        item_ids=list(catalogue.item_ids),
        mmr_lambda=mmr,
        mmr_candidates=hybrid.mmr_candidates if hybrid is not None else 100,
        label=label or scorer.name,
    )


def broadcast_bundles(wh: Warehouse, bundles: list[ScoringBundle]) -> tuple[str, Any]:
    """Cloudpickle the bundles into one broadcast; returns ``(token, broadcast)`` for tasks."""
    from pyspark import cloudpickle

    payload = cloudpickle.dumps(bundles)
    return uuid.uuid4().hex, wh.spark.sparkContext.broadcast(payload)


#: Bundles unpickled in this Python worker, by (token, device): loaded once per worker.
_BUNDLES: dict[tuple[str, str], list[ScoringBundle]] = {}


def worker_bundles(token: str, broadcast: Any) -> list[ScoringBundle]:
    """The job's bundles in this worker (unpickled on first use, then cached)."""
    from pyspark import TaskContext, cloudpickle

    context = TaskContext.get()
    if context is not None:
        torch.set_num_threads(max(1, int(context.cpus())))
    key = (token, "cpu")
    if key not in _BUNDLES:
        _BUNDLES.clear()  # one job's bundles at a time: a reused worker does not accumulate models
        _BUNDLES[key] = cloudpickle.loads(broadcast.value)
    return _BUNDLES[key]


def _spread(df: DataFrame) -> DataFrame:
    # At least one partition per core so every task slot scores.
    parallelism = df.sparkSession.sparkContext.defaultParallelism
    return df.repartition(parallelism) if df.rdd.getNumPartitions() < parallelism else df


# --------------------------------------------------------------------------- run_score


@dataclass
class ScoreReport:
    """What ``longtail score`` wrote."""

    model: str
    model_version: str
    run_date: dt.date
    top_k: int
    users: int
    fallback_users: int
    new_items: int
    coverage: float
    tail_share: float
    diversity: float | None
    seconds: float
    table: str = ""

    def __str__(self) -> str:
        div = "n/a" if self.diversity is None else f"{self.diversity:.3f}"
        return (
            f"recommendations {self.run_date}: {self.users} users x top-{self.top_k} from {self.model} "
            f"{self.model_version} ({self.fallback_users} popularity fallbacks, {self.new_items} new items "
            f"rankable from text); coverage {self.coverage:.3f}, "
            f"tail share {self.tail_share:.3f}, diversity {div}; {self.seconds:.1f}s -> {self.table}"
        )


_SCORED_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType()),
        T.StructField("rank", T.IntegerType()),
        T.StructField("item_id", T.StringType()),
        T.StructField("score", T.FloatType()),
        T.StructField("fallback", T.BooleanType()),
        T.StructField("list_diversity", T.DoubleType()),
        T.StructField("is_tail", T.BooleanType()),
        T.StructField("list_length", T.IntegerType()),
    ]
)


def _list_rows(user_ids: list[str], items: np.ndarray, scores: np.ndarray, bundle: ScoringBundle, fallback: bool) -> pd.DataFrame:
    # Item 0 marks "no candidate left" (unseen catalogue exhausted): dropped here, and the
    # list length lets the driver refuse the run before anything is written. A user with no
    # candidate at all keeps one placeholder row (list_length 0) so that the check sees them.
    k = items.shape[1]
    valid = items > 0
    lengths = valid.sum(axis=1)
    valid[:, 0] |= lengths == 0
    div = (
        list_diversities(items, bundle.unit_embeddings) if bundle.unit_embeddings is not None
        else np.full(len(user_ids), np.nan)
    )
    ids = np.asarray(bundle.item_ids, dtype=object)
    flat = valid.ravel()
    frame = pd.DataFrame(
        {
            "user_id": np.repeat(np.asarray(user_ids, dtype=object), k),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(user_ids)),
            "item_id": ids[items.ravel()],
            "score": scores.ravel().astype(np.float32),
            "fallback": np.full(len(user_ids) * k, fallback),
            "list_diversity": np.repeat(div, k),
            "is_tail": bundle.tail[items.ravel()],
            "list_length": np.repeat(lengths.astype(np.int32), k),
        }
    )
    return frame[flat] if not flat.all() else frame


def score_users_frame(
    users: DataFrame, token: str, broadcast: Any, k: int, user_batch: int, item_chunk: int
) -> DataFrame:
    """Top-``k`` rows for every ``(user_id, item_idxs, seen_idxs)`` row of ``users`` (lazy).

    ``item_idxs`` feeds the model; the list excludes those and ``seen_idxs`` (every catalogue
    item the user ever touched, beyond the ``max_len`` kept in ``user_sequences``; may be null).
    """

    def score_partition(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        bundle = worker_bundles(token, broadcast)[0]
        for frame in frames:
            for start in range(0, len(frame), user_batch):
                part = frame.iloc[start : start + user_batch]
                histories = pad_histories(list(part["item_idxs"]))
                seen = pad_histories([
                    np.concatenate([np.asarray(h, dtype=np.int64), np.asarray([] if s is None else s, dtype=np.int64)])
                    for h, s in zip(part["item_idxs"], part["seen_idxs"])
                ])
                scores, items = bundle.top_k(histories, k, item_chunk, seen=seen)
                yield _list_rows(list(part["user_id"]), items.numpy(), scores.numpy(), bundle, False)

    if "seen_idxs" not in users.columns:
        users = users.withColumn("seen_idxs", F.lit(None).cast("array<int>"))
    return _spread(users.select("user_id", "item_idxs", "seen_idxs")).mapInPandas(score_partition, _SCORED_SCHEMA)


def seen_items(wh: Warehouse, seqs: DataFrame, catalogue: Catalogue) -> DataFrame:
    """``seqs`` plus ``seen_idxs``: every catalogue item of the user's ``interactions``.

    ``user_sequences`` keeps only the latest ``max_len`` items, and items dropped by the
    k-core can come back as text-only items; neither may be recommended to someone who has
    them. Without an ``interactions`` table ``seen_idxs`` is null (histories only).
    """
    if not wh.exists(schemas.INTERACTIONS):
        return seqs.withColumn("seen_idxs", F.lit(None).cast("array<int>"))
    interactions = wh.read(schemas.INTERACTIONS)
    schemas.require_columns(interactions, schemas.INTERACTIONS_SCHEMA, schemas.INTERACTIONS)
    ids = pd.DataFrame({"item_id": catalogue.item_ids, "item_idx": np.arange(catalogue.size, dtype=np.int32)})
    ids = wh.spark.createDataFrame(ids[ids["item_id"] != ""], "item_id string, item_idx int")
    seen = (
        interactions.select("user_id", "item_id")
        .join(ids, "item_id")
        .groupBy("user_id")
        .agg(F.collect_set("item_idx").alias("seen_idxs"))
    )
    return seqs.join(seen, "user_id", "left")


def _fallback_frame(
    wh: Warehouse, seqs: DataFrame, catalogue: Catalogue, popularity: np.ndarray, k: int, token: str, broadcast: Any
) -> DataFrame | None:
    """Popularity lists for users without a usable history, or None when there are none to find.

    Users come from ``users`` and ``interactions``; those in ``user_sequences`` are scored by
    the model. A fallback user's list is the most popular known items sharing a category with
    an item the user touched (most popular first), then global popularity; never an item the
    user touched. Scores: popularity share of the item (``count / max count``), plus 1 for a
    category match, so they fall with the rank.
    """
    parts = []
    if wh.exists(schemas.USERS):
        parts.append(wh.read(schemas.USERS).select("user_id", F.lit(None).cast("string").alias("item_id")))
    if wh.exists(schemas.INTERACTIONS):
        interactions = wh.read(schemas.INTERACTIONS)
        schemas.require_columns(interactions, schemas.INTERACTIONS_SCHEMA, schemas.INTERACTIONS)
        parts.append(interactions.select("user_id", "item_id"))
    if not parts:
        return None
    touched = parts[0]
    for other in parts[1:]:
        touched = touched.unionByName(other)
    candidates = (
        touched.where(F.col("user_id").isNotNull())
        .join(seqs.select("user_id"), "user_id", "left_anti")
        .groupBy("user_id")
        .agg(F.collect_set("item_id").alias("seen"))  # nulls (users without interactions) drop out
    )
    # Catalogue-sized lookups on the driver, shipped once: items by popularity, their
    # categories, and per category its items in popularity order.
    n = catalogue.n_known
    ranked = np.argsort(-popularity[:n], kind="stable")
    ranked = ranked[catalogue.known[ranked]]  # known items, most popular first
    rank_of = {catalogue.item_ids[i]: r for r, i in enumerate(ranked)}
    item_categories: dict[str, list[str]] = {}
    members: dict[str, list[int]] = {}
    if wh.exists(schemas.ITEMS):
        for row in wh.read(schemas.ITEMS).select("item_id", "categories").collect():
            categories = list(row["categories"] or [])
            item_categories[row["item_id"]] = categories
            r = rank_of.get(row["item_id"])
            if r is not None:
                for c in categories:
                    members.setdefault(c, []).append(r)
    top = float(max(int(popularity.max()), 1))
    plan = {
        "ranked": ranked,
        "share": popularity[ranked] / top,
        "rank_of": rank_of,
        "item_categories": item_categories,
        "members": {c: np.sort(np.asarray(v, dtype=np.int64)) for c, v in members.items()},
    }
    plan_bc = wh.spark.sparkContext.broadcast(plan)

    def fallback_partition(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        bundle = worker_bundles(token, broadcast)[0]
        p = plan_bc.value
        for frame in frames:
            lists, scores = [], []
            for seen in frame["seen"]:
                seen = [] if seen is None else list(seen)
                seen_ranks = np.asarray([p["rank_of"][s] for s in seen if s in p["rank_of"]], dtype=np.int64)
                categories = {c for s in seen for c in p["item_categories"].get(s, [])}
                # Only the k + |seen| most popular of each list can make the top k.
                depth = k + len(seen_ranks)
                in_cats = [p["members"][c][:depth] for c in categories if c in p["members"]]
                first = np.unique(np.concatenate(in_cats)) if in_cats else np.zeros(0, dtype=np.int64)
                first = first[~np.isin(first, seen_ranks)][:k]
                rest = np.arange(min(len(p["ranked"]), depth + len(first)))
                rest = rest[~np.isin(rest, seen_ranks) & ~np.isin(rest, first)][: k - len(first)]
                chosen = np.concatenate([first, rest])
                picked = np.zeros(k, dtype=np.int64)
                picked[: len(chosen)] = p["ranked"][chosen]
                score = np.full(k, -np.inf)
                score[: len(chosen)] = np.concatenate([1.0 + p["share"][first], p["share"][rest]])
                lists.append(picked)
                scores.append(score)
            if lists:
                yield _list_rows(list(frame["user_id"]), np.stack(lists), np.stack(scores), bundle, True)

    return candidates.mapInPandas(fallback_partition, _SCORED_SCHEMA)


def run_score(
    wh: Warehouse,
    model_name: str,
    cfg: ScoreConfig,
    version: str | None = None,
    run_date: dt.date | None = None,
    top_k: int | None = None,
    *,
    als_cfg: EvaluateConfig | None = None,
    model_loader: ModelLoader | None = None,
) -> ScoreReport:
    """Write the top-K recommendations of every user into the ``run_date`` partition.

    Args:
        wh: warehouse (carries the session).
        model_name: a trained model, or a baseline (``popularity``, ``als``, ``content``).
        cfg: the ``score`` section (``item_chunk``, ``user_batch``, ``hybrid``).
        version: model version (default: the latest).
        run_date: partition to replace (default: today, UTC).
        top_k: K (default: ``cfg.top_k``).
        als_cfg: ALS settings when ALS is the model or a hybrid part (default ``EvaluateConfig()``).
        model_loader: ``load_model`` replacement (tests); default ``longtail.stages.train.load_model``.

    Returns:
        :class:`ScoreReport` with users scored, fallbacks, coverage, tail share, diversity.

    Raises:
        ModelNotFoundError: unknown model name or version. InputError: K larger than some
            user's unseen catalogue, or a bad hybrid. TableNotFoundError / SchemaError: inputs.
        Nothing is written when any of these is raised.
    """
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.timezone.utc)
    run_date = run_date or started_at.date()
    k = int(top_k if top_k is not None else cfg.top_k)
    if k < 1:
        raise InputError(f"--top-k {k}: must be at least 1")
    seqs = read_user_sequences(wh)
    catalogue = load_catalogue(wh, include_new_items=True)
    factory = ScorerFactory(wh, catalogue, "all", als_cfg or EvaluateConfig(), model_loader)
    hybrid = cfg.hybrid if hybrid_on(cfg.hybrid) else None
    scorer = factory.hybrid(model_name, version, hybrid) if hybrid is not None else factory.scorer(model_name, version)
    model_version = scorer.version
    bundle = make_bundle(scorer, catalogue, hybrid)
    token, bc = broadcast_bundles(wh, [bundle])

    scored = score_users_frame(seen_items(wh, seqs, catalogue), token, bc, k, cfg.user_batch, cfg.item_chunk)
    # Fallback lists rank by item_stats popularity (training part): already loaded, no extra pass.
    fallback = _fallback_frame(wh, seqs, catalogue, catalogue.popularity, k, token, bc)
    if fallback is not None:
        scored = scored.unionByName(fallback)
    scored = scored.persist()
    try:
        # Every user has exactly one rank-1 row; one distinct count keeps it a single aggregation.
        first = F.col("rank") == 1
        stats = scored.agg(
            F.count(F.when(first, 1)).alias("users"),
            F.count(F.when(first & F.col("fallback"), 1)).alias("fallback_users"),
            F.countDistinct("item_id").alias("items"),
            F.avg(F.col("is_tail").cast("double")).alias("tail_share"),
            F.avg("list_diversity").alias("diversity"),
            F.min("list_length").alias("shortest"),
        ).collect()[0]
        rankable = max(catalogue.size - len(bundle.excluded), 1)
        if stats["users"] and stats["shortest"] < k:
            raise InputError(
                f"--top-k {k}: larger than the unseen catalogue of some users (a user has only "
                f"{stats['shortest']} unseen items of {rankable} rankable); nothing written"
            )
        recs = (
            scored.withColumn("model", F.lit(scorer.name))
            .withColumn("model_version", F.lit(model_version))
            .withColumn("run_date", F.lit(run_date).cast("date"))
            .withColumn("generated_at", F.lit(started_at).cast("timestamp"))
        )
        recs = schemas.conform(recs, schemas.RECOMMENDATIONS)
        diversity = None if stats["diversity"] is None else float(stats["diversity"])
        with wh.job():
            wh.write(recs, schemas.RECOMMENDATIONS, mode="overwrite", partition_by=["run_date"],
                     replace_partitions={"run_date": run_date})
            finished_at = dt.datetime.now(dt.timezone.utc)
            _write_run_row(wh, run_date, scorer.name, model_version, int(stats["users"] or 0),
                           float(stats["items"] or 0) / rankable, float(stats["tail_share"] or 0.0),
                           diversity, started_at, finished_at)
    finally:
        scored.unpersist()
        bc.unpersist()
    return ScoreReport(
        model=scorer.name, model_version=model_version, run_date=run_date, top_k=k,
        users=int(stats["users"] or 0), fallback_users=int(stats["fallback_users"] or 0),
        new_items=int(np.isin(np.arange(catalogue.n_known, catalogue.size), bundle.excluded, invert=True).sum()),
        coverage=float(stats["items"] or 0) / rankable, tail_share=float(stats["tail_share"] or 0.0),
        diversity=diversity, seconds=time.perf_counter() - started, table=wh.path(schemas.RECOMMENDATIONS),
    )


def _write_run_row(
    wh: Warehouse, run_date: dt.date, model: str, version: str, users: int, coverage: float,
    tail_share: float, diversity: float | None, started_at: dt.datetime, finished_at: dt.datetime,
) -> None:
    # One row per run_date: the table is tiny (a row a night), so rewrite it whole.
    rows = []
    if wh.exists(schemas.RECOMMENDATION_RUNS):
        old = schemas.conform(wh.read(schemas.RECOMMENDATION_RUNS), schemas.RECOMMENDATION_RUNS)
        rows = [r.asDict() for r in old.where(F.col("run_date") != F.lit(run_date)).collect()]
    rows.append(
        {"run_date": run_date, "model": model, "model_version": version, "users": users, "coverage": coverage,
         "tail_share": tail_share, "diversity": diversity, "started_at": started_at, "finished_at": finished_at}
    )
    frame = wh.spark.createDataFrame(
        [tuple(r[f.name] for f in schemas.RECOMMENDATION_RUNS_SCHEMA.fields) for r in rows],
        schemas.RECOMMENDATION_RUNS_SCHEMA,
    )
    wh.write(frame, schemas.RECOMMENDATION_RUNS, mode="overwrite")
