"""Scoring a batch of users: the bundle the driver ships to every Python worker once.

The driver computes the catalogue's item matrix of a scorer once (:func:`make_bundle`) and
stages the bundles of a job as one side file in the warehouse (:func:`stage_bundles`:
``<warehouse>/_tmp/bundles/<token>.pkl``, cloudpickled); each worker reads and unpickles it once
(:func:`worker_bundles`, cached in this importable module) and, per batch of users, gets
their top-K lists (:meth:`ScoringBundle.top_k`, for ``score``) or the ranks of their
held-out items under both protocols (:meth:`ScoringBundle.ranks`, for ``evaluate``).
With ``score.retrieval: ann`` a candidate index of the bundle's item matrix (:func:`make_index`)
is staged the same way (:func:`stage`) and searched per batch before the exact scoring.

A side file instead of a Spark broadcast: it works on Spark Connect (no SparkContext there), on
every cluster manager and with the warehouse on an object store, and a worker that reads it keeps
it for the job's later tasks.

Devices: when Spark assigned the running task a GPU (``TaskContext.resources()["gpu"]``, a GPU
executor with ``spark.task.resource.gpu.amount``) and CUDA works, :func:`worker_bundles` sets
each bundle's ``device`` to it (:func:`task_device`): the item matrix is copied there once per
worker and the chunked products, masks and top-K merges of ``top_k`` (exact and from
candidates) and of the full ranking of ``ranks`` run there; the user vectors (the model), the
candidate search (faiss), the MMR re-rank and the sampled protocol stay on the CPU. Elsewhere
everything runs on the CPU as before.
"""
from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from longtail.core import files
from longtail.core.config import HybridConfig
from longtail.core.errors import EnvironmentProblem, InputError
from longtail.inference.catalogue import Catalogue
from longtail.inference.scorers import Scorer
from longtail.ranking.metrics import target_ranks
from longtail.ranking.retrieval import (
    DEFAULT_NPROBE,
    DEFAULT_TARGET_RECALL,
    CandidateIndex,
    build_index,
    candidate_count,
    seen_counts,
    tune_index,
)
from longtail.ranking.topk import (
    candidate_scores,
    candidate_topk,
    chunked_topk,
    full_ranks,
    mmr_rerank,
)

#: Users per MMR re-rank step (memory: MMR_ROWS x candidates x embedding dimension floats).
MMR_ROWS = 256


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
    #: Where the products and top-K merges run: ``cpu`` (the driver's choice), or the task's GPU
    #: (``cuda:N``) as :func:`worker_bundles` finds it.
    device: str = "cpu"
    # Filled on the executor from the arrays above.
    _torch: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _device_items: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def tensors(self) -> dict[str, torch.Tensor]:
        if not self._torch:
            self._torch = {
                "items": torch.from_numpy(np.ascontiguousarray(self.items)),
                "excluded": torch.from_numpy(self.excluded.astype(np.int64)),
            }
            if self.unit_embeddings is not None:
                self._torch["unit"] = torch.from_numpy(np.ascontiguousarray(self.unit_embeddings))
        return self._torch

    def items_on(self, device: str | torch.device) -> torch.Tensor:
        """The item matrix on ``device``: the CPU tensor itself there, else a copy made once per
        device in this worker (``N x D`` floats of device memory)."""
        key = str(device)
        if torch.device(key).type == "cpu":
            return self.tensors()["items"]
        if key not in self._device_items:
            self._device_items[key] = self.tensors()["items"].to(key)
        return self._device_items[key]

    def top_k(
        self, histories: torch.Tensor, k: int, item_chunk: int, seen: torch.Tensor | None = None,
        index: CandidateIndex | None = None, candidates: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` items per user, excluding ``seen`` (default: the histories); MMR when configured.

        Without ``index`` the whole catalogue is scored (exact). With ``index``
        (``score.retrieval: ann``, :func:`make_index` of this bundle) each user's list (or MMR
        pool) is the exact top among the index's candidates (:meth:`from_candidates`;
        ``candidates``: ``score.candidates``).
        """
        t = self.tensors()
        seen = histories if seen is None else seen
        # The model runs on the CPU; its user vectors move to the bundle's device for the products.
        users = self.scorer.user_vectors(histories).to(torch.float32).to(self.device)
        mmr = self.mmr_lambda is not None and "unit" in t
        pool = max(self.mmr_candidates, k) if mmr else k
        if index is None:
            scores, items = chunked_topk(
                users, self.items_on(self.device), pool, seen=seen, excluded=t["excluded"], item_chunk=item_chunk
            )
        else:
            scores, items = self.from_candidates(users, seen, pool, index, candidates, item_chunk)
        scores, items = scores.cpu(), items.cpu()  # no copy on the CPU
        if not mmr:
            return scores, items
        picked, picked_scores = self.rerank(items, scores, k)
        return picked_scores, picked

    def from_candidates(
        self, users: torch.Tensor, seen: torch.Tensor, pool: int, index: CandidateIndex, candidates: int,
        item_chunk: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``pool`` unseen items per user among the index's candidates, scored exactly.

        The index returns ``max(candidates, pool + s)`` items per user, ``s`` the most items a
        user of the batch has seen (:func:`~longtail.ranking.retrieval.candidate_count`: batches
        hold users of like history length, so ``s`` is close to each one's own). A user left
        with fewer than ``pool`` unseen candidates (an IVF probe that found too few, or a user
        who has seen almost everything) is ranked over the whole catalogue instead, so a list is
        never short where the exact one is not.

        Returns:
            ``(scores [B, pool], items [B, pool])``, as :func:`~longtail.ranking.topk.chunked_topk`,
            on the device of ``users`` (the exact scores there; faiss searches on the CPU).
        """
        t = self.tensors()
        item_vectors = self.items_on(users.device)
        most_seen = int(seen_counts(seen.numpy()).max(initial=0))
        c = candidate_count(candidates, pool, most_seen, index.size)
        # faiss's threads follow torch's: the task's cores (worker_bundles), not every core of the machine.
        found = torch.from_numpy(index.search(users.cpu().numpy(), c, threads=torch.get_num_threads()))
        scores, items = candidate_topk(users, item_vectors, found, pool, seen=seen, excluded=t["excluded"])
        short = torch.nonzero(torch.isneginf(scores[:, -1]))[:, 0].cpu()
        if len(short):
            exact_scores, exact_items = chunked_topk(
                users[short.to(users.device)], item_vectors, pool, seen=seen[short], excluded=t["excluded"],
                item_chunk=item_chunk,
            )
            short = short.to(users.device)
            scores[short], items[short] = exact_scores, exact_items
        return scores, items

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

    def ranks(
        self, histories: torch.Tensor, targets: torch.Tensor, candidates: torch.Tensor, k: int, depth: int,
        item_chunk: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ranks of each user's target: among ``candidates`` (sampled protocol, target in column 0)
        and among the whole catalogue minus ``histories`` (full protocol); and the full top-``k``.

        With MMR on, a rank is the target's pick position (a miss when it is not among the
        first ``depth`` picks of the full ranking, or the ``k`` of the sampled one).

        Returns:
            ``(sampled ranks [B], full ranks [B], top-k items [B, k])``, ranks 0-based.
        """
        t = self.tensors()
        users = self.scorer.user_vectors(histories).to(torch.float32)
        # Padding and items this scorer cannot rank score -inf in both protocols alike.
        padding = candidates == 0
        if t["excluded"] is not None and len(t["excluded"]):
            padding = padding | torch.isin(candidates, t["excluded"])
        scores = candidate_scores(users, t["items"], candidates).masked_fill(padding, float("-inf"))
        if self.mmr_lambda is None or "unit" not in t:
            full, top = full_ranks(
                users.to(self.device), self.items_on(self.device), targets, seen=histories, excluded=t["excluded"],
                k=k, item_chunk=item_chunk,
            )
            return target_ranks(scores.numpy(), 0), full.cpu().numpy(), top.cpu().numpy()
        return self._mmr_ranks(users, scores, histories, targets, candidates, k, depth, item_chunk)

    def _mmr_ranks(self, users, scores, histories, targets, candidates, k: int, depth: int, item_chunk: int):
        # MMR changes the order, not the scores: the target's rank is its pick position.
        t = self.tensors()
        order_scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
        picked, _ = self.rerank(torch.gather(candidates, 1, order), order_scores, k)
        sampled = _pick_position(picked, candidates[:, 0], miss=float(candidates.shape[1]))
        seen = histories.masked_fill(histories == targets[:, None], 0)
        pool_scores, pool = chunked_topk(users, t["items"], max(self.mmr_candidates, depth), seen=seen,
                                         excluded=t["excluded"], item_chunk=item_chunk)
        picked, _ = self.rerank(pool, pool_scores, depth)
        full = _pick_position(picked, targets, miss=float(t["items"].shape[0]))
        return sampled, full, picked[:, :k].numpy()


def make_bundle(
    scorer: Scorer,
    catalogue: Catalogue,
    hybrid: HybridConfig | None = None,
    restrict_to_known: bool = False,
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
    )


def make_index(
    bundle: ScoringBundle, nlist: int = 0, nprobe: int | str = 64, *, histories: list | None = None,
    target_recall: float = DEFAULT_TARGET_RECALL, candidates: int = 100, k: int = 10, kind: str = "auto",
) -> CandidateIndex:
    """The candidate index of a bundle (``score.retrieval: ann``), built once on the driver.

    It holds the served item matrix itself (``bundle.items``), minus row 0 and the items the
    scorer cannot rank: the index ranks by the very score ``top_k`` serves. An exposure
    adjustment is already a column of that matrix (:class:`~longtail.inference.scorers.ExposureAdjusted`:
    items ``[v, -bias]``, users ``[u, penalty]``, the per-item bias folded into the inner product as
    one dimension), and a hybrid's z-score blend is one dot product as well
    (:func:`~longtail.ranking.topk.zscore_blend_users`; its per-user offset column shifts every
    item alike), so candidates come from the blend, not from the model alone.

    Args:
        nlist: ``score.ann_nlist`` (0: automatic).
        nprobe: ``score.ann_nprobe``: a number, or ``auto``: the lists' form and the fewest lists
            that reach ``target_recall`` on the users of ``histories``
            (:func:`~longtail.ranking.retrieval.tune_index`; their vectors from the bundle's scorer,
            their histories as the items they have seen).
        histories: item idxs per sampled user, oldest first (``auto`` only; None: the default 64).
        candidates, k: ``score.candidates`` and the list length, as served.
        kind: the index kind (:func:`~longtail.ranking.retrieval.build_index`; ``auto`` as ``score``).

    Raises:
        EnvironmentProblem: faiss is not installed.
    """
    allowed = np.ones(len(bundle.items), dtype=bool)
    allowed[bundle.excluded] = False
    if nprobe != "auto" or not histories:
        return build_index(bundle.items, allowed=allowed, nlist=nlist, kind=kind,
                           nprobe=DEFAULT_NPROBE if nprobe == "auto" else int(nprobe))
    from longtail.models.histories import pad_histories

    padded = pad_histories(histories)
    with torch.no_grad():
        queries = torch.cat([bundle.scorer.user_vectors(padded[i : i + 256]).to(torch.float32)
                             for i in range(0, len(padded), 256)])
    return tune_index(bundle.items, queries.numpy(), seen=padded.numpy(), allowed=allowed, nlist=nlist, kind=kind,
                      target_recall=target_recall, candidates=candidates, k=k)


@dataclass(frozen=True)
class Staged:
    """A driver-side object pickled once into a side file; tasks load it once per Python worker.

    Small to ship in a task's closure (a token and a path). :meth:`unpersist` deletes the file.
    """

    token: str
    path: str

    def value(self) -> Any:
        """The object, read and unpickled on first use in this worker, then cached."""
        from pyspark import cloudpickle

        if self.token not in _STAGED:
            while len(_STAGED) >= _STAGED_KEEP:  # a reused worker does not accumulate old jobs' models
                _STAGED.popitem(last=False)
            _STAGED[self.token] = cloudpickle.loads(files.read_bytes(self.path))
        return _STAGED[self.token]

    def unpersist(self) -> None:
        """Delete the side file (the job is done with it)."""
        files.remove_file(self.path)


#: Objects loaded in this Python worker, by token, oldest first (a job stages at most a few).
_STAGED: "OrderedDict[str, Any]" = OrderedDict()
_STAGED_KEEP = 4


def stage(root: str, obj: Any) -> Staged:
    """Pickle ``obj`` (cloudpickle: fakes and models defined anywhere travel) into
    ``<root>/_tmp/bundles/<token>.pkl`` and return its handle for tasks."""
    from pyspark import cloudpickle

    token = uuid.uuid4().hex
    path = f"{files.absolute(root.rstrip('/'))}/_tmp/bundles/{token}.pkl"
    fs, where = files.filesystem(path)
    fs.create_dir(where.rsplit("/", 1)[0], recursive=True)
    # Pickled straight into the file: no second copy of the item tables in the driver's memory
    # (protocol 5 writes numpy buffers as they are). No temporary name needed: no task reads the
    # file before this returns, and its token is new.
    with fs.open_output_stream(where) as out:
        cloudpickle.dump(obj, out)
    return Staged(token, path)


def stage_bundles(wh, bundles: list[ScoringBundle]) -> tuple[str, Staged]:
    """Stage the job's bundles in the warehouse; returns ``(token, handle)`` for tasks
    (:func:`worker_bundles`). Call ``handle.unpersist()`` when the job is done."""
    staged = stage(wh.root, bundles)
    return staged.token, staged


#: The former name (bundles went out as a Spark broadcast, which Spark Connect does not have).
broadcast_bundles = stage_bundles


def worker_bundles(token: str, staged: Staged, device: str = "auto") -> list[ScoringBundle]:
    """The job's bundles in this worker (read and unpickled on first use, then cached), each
    set to score on the running task's device (:func:`task_device` of ``device``)."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is not None:
        torch.set_num_threads(max(1, int(context.cpus())))
    bundles = staged.value()
    chosen = task_device(device)
    for bundle in bundles:
        bundle.device = chosen
    return bundles


#: Device settings of :func:`task_device`.
DEVICES = ("auto", "cpu", "cuda")


def task_device(setting: str = "auto", key: str = "score.device") -> str:
    """Where the running task scores: ``cuda:N`` for the GPU Spark assigned it, else ``cpu``.

    ``auto``: the task's GPU (``TaskContext.resources()["gpu"]``, its first address) when it
    has one and CUDA works, else the CPU; outside a Spark task (the driver, notebooks' direct
    calls), the CPU. ``cpu``: always the CPU. ``cuda``: as auto, but no usable GPU is an error.
    As ``encode`` picks its device (``longtail.encoders.text.task_device``), except that a GPU
    only counts when Spark assigned it: an executor without GPU resources scores on its CPUs.

    Args:
        setting: ``auto``, ``cpu`` or ``cuda``; key: the config key it came from (named in errors).

    Raises:
        InputError: an unknown setting. EnvironmentProblem: ``cuda`` and no usable GPU.
    """
    if setting not in DEVICES:
        raise InputError(f"config key {key}: scoring device {setting!r} is not one of {', '.join(DEVICES)}")
    if setting == "cpu":
        return "cpu"
    addresses = _task_gpus()
    if addresses and torch.cuda.is_available() and torch.cuda.device_count() > 0:
        first = str(addresses[0])
        index = int(first) if first.isdigit() else 0
        # An executor isolated to its GPU (CUDA_VISIBLE_DEVICES) sees it as device 0.
        return f"cuda:{index if index < torch.cuda.device_count() else 0}"
    if setting == "cuda":
        raise EnvironmentProblem(
            f"config key {key}: cuda, but this task has no GPU assigned by Spark or CUDA is unusable; "
            f"set {key}: auto (the GPU when there is one) or cpu"
        )
    return "cpu"


def check_device(spark, setting: str, key: str = "score.device") -> None:
    """Refuse, on the driver and before anything is computed, a ``cuda`` setting no task can honour.

    A task only scores on a GPU Spark assigned it (:func:`task_device`), which needs
    ``spark.task.resource.gpu.amount`` above 0; with a ``local`` master the tasks run on this
    machine, so CUDA must also work here. What the driver cannot see (CUDA on remote executors)
    is checked again in each task.

    Raises:
        InputError: an unknown setting. EnvironmentProblem: ``cuda`` on a session whose tasks get no
        GPU; the message names ``key`` and is one line.
    """
    if setting not in DEVICES:
        raise InputError(f"config key {key}: scoring device {setting!r} is not one of {', '.join(DEVICES)}")
    if setting != "cuda":
        return
    amount = _session_conf(spark, "spark.task.resource.gpu.amount")
    try:
        assigned = float(amount or 0) > 0
    except ValueError:
        assigned = False
    local = (_session_conf(spark, "spark.master") or "").startswith("local")
    if not assigned or (local and not torch.cuda.is_available()):
        why = ("spark.task.resource.gpu.amount is not set, so Spark assigns no GPU to a task" if not assigned
               else "no CUDA device on this machine, where the local master runs the tasks")
        raise EnvironmentProblem(f"config key {key}: cuda, but {why}; set {key}: auto or cpu")


def _session_conf(spark, name: str) -> str | None:
    """A Spark property of the session (classic or Connect); None when unset or unreadable."""
    try:
        return spark.conf.get(name, None)
    except Exception:  # noqa: BLE001 - some servers refuse unknown keys
        return None


def _task_gpus() -> list[str]:
    """Addresses of the GPUs Spark assigned the running task (none outside a task)."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        return []
    gpu = context.resources().get("gpu")
    return list(gpu.addresses) if gpu is not None else []


def spread(df):
    """``df`` in one partition per task slot, so that every slot scores (Spark Connect too)."""
    from longtail.core.session import default_parallelism

    return df.repartition(default_parallelism(df.sparkSession))


def _pick_position(picked: torch.Tensor, targets: torch.Tensor, miss: float) -> np.ndarray:
    hits = picked == targets[:, None]
    first = torch.argmax(hits.to(torch.int8), dim=1).to(torch.float64)
    return torch.where(hits.any(dim=1), first, torch.full_like(first, miss)).numpy()
