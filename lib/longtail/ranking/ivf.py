"""Inverted lists over user vectors: the maths of ``neighbors.method: ivf`` (no Spark here).

An IVF partition of the users: ``lists`` centroids fitted by spherical k-means on a bounded
sample of unit user vectors (:func:`fit_centroids`, faiss), every user a member of the list of
its nearest centroid, and each user's candidates the members of the ``probe`` lists whose
centroids are nearest to it (:func:`probe_lists`; the first is its own). With ``probe`` equal
to the number of lists every user is a candidate of every other: the search is exact.

Sizes (docs/scaling.md): a user costs ``lists`` products to assign and about ``probe x users /
lists`` to search, so ``lists = sqrt(probe x users)`` balances both; :func:`list_count`'s
``4 sqrt(users)`` is that balance at the default ``probe`` of 16, ``8 sqrt(users)`` products per
user in all (80,000 at 100M users, against 100M for the exact method).
"""
from __future__ import annotations

import math

import numpy as np

from longtail.core.errors import EnvironmentProblem

#: k-means trains on at most this many sampled users per list (faiss warns below 39 per centroid;
#: 256 is its default cap). The lists only partition the users (the probe sets the recall), and
#: the k-means is the driver's cost (``sample x lists x dim x iterations``), so fewer suffice.
#: The sample is also bounded by ``neighbors.ivf_sample``.
TRAIN_POINTS_PER_LIST = 32
#: The automatic list count leaves at least this many sampled users per list (fewer lists at 100M
#: users than ``4 sqrt(users)`` when ``neighbors.ivf_sample`` is small: a little more search per user).
MIN_TRAIN_POINTS_PER_LIST = 16
#: k-means iterations on the sample (faiss's default is 25; the lists only have to be
#: reasonable: the probe, not the last iterations, sets the recall).
KMEANS_ITERATIONS = 10
#: A k-means of fewer multiply-adds per iteration (points x lists x dim) runs on one thread.
SMALL_KMEANS = 1 << 28
#: Centroid scores computed at once in :func:`probe_lists` (rows x lists floats): 64 MiB.
PROBE_FLOATS = 1 << 24


def list_count(users: int, lists: int = 0, sample: int | None = None) -> int:
    """Inverted lists for ``users`` users.

    Args:
        users: how many users are partitioned (> 0).
        lists: ``neighbors.ivf_lists``; 0 chooses ``round(4 sqrt(users))``, at most
            ``sample / MIN_TRAIN_POINTS_PER_LIST`` (``sample``: ``neighbors.ivf_sample``) so the
            centroids have enough sampled users; a number is taken as it is. At most one list per user.
    """
    users = max(int(users), 1)
    if lists:
        chosen = int(lists)
    else:
        chosen = round(4 * math.sqrt(users))
        if sample is not None:
            chosen = min(chosen, int(sample) // MIN_TRAIN_POINTS_PER_LIST)
    return max(1, min(chosen, users))


def sample_size(users: int, lists: int, cap: int) -> int:
    """Users drawn to fit ``lists`` centroids: ``TRAIN_POINTS_PER_LIST`` per list, at most ``cap``
    (``neighbors.ivf_sample``: the driver holds ``sample x dim`` floats) and at most ``users``."""
    return max(1, min(int(users), TRAIN_POINTS_PER_LIST * int(lists), int(cap)))


def fit_centroids(sample: np.ndarray, lists: int, seed: int = 0) -> np.ndarray:
    """Unit centroids of spherical k-means (faiss) over the unit rows of ``sample``.

    Args:
        sample: ``[S, E]`` unit user vectors (zero rows allowed), any order: sort them first
            for a result that does not depend on how they were collected.
        lists: centroids wanted; fewer (``S``) when the sample is smaller.
        seed: k-means seed (the same sample and seed give the same centroids).

    Returns:
        ``[min(lists, S), E]`` float32 centroids.

    Raises:
        EnvironmentProblem: faiss is not installed. ValueError: an empty sample.
    """
    x = np.ascontiguousarray(sample, dtype=np.float32)
    if not len(x):
        raise ValueError("no users to fit the inverted lists on")
    k = max(1, min(int(lists), len(x)))
    if k == len(x):  # one list per sampled user: the users are the centroids
        return x.copy()
    faiss = _faiss()
    kmeans = faiss.Kmeans(
        x.shape[1], k, niter=KMEANS_ITERATIONS, seed=int(seed), spherical=True, verbose=False,
        min_points_per_centroid=1, max_points_per_centroid=max(TRAIN_POINTS_PER_LIST, len(x) // k + 1),
    )
    threads = faiss.omp_get_max_threads()
    if len(x) * k * x.shape[1] < SMALL_KMEANS:
        # A small k-means is over in milliseconds on one thread; OpenMP's threads waiting for
        # each other on a busy machine made it 10x slower (0.07 s against 0.97 s, 3000 x 219 x 64).
        faiss.omp_set_num_threads(1)
    try:
        kmeans.train(x)
    finally:
        faiss.omp_set_num_threads(threads)
    return np.asarray(kmeans.centroids, dtype=np.float32).reshape(k, x.shape[1])


def order_centroids(centroids: np.ndarray, seed: int = 0) -> np.ndarray:
    """The centroids renumbered so that consecutive ids are near each other.

    A coarse spherical k-means over the centroids themselves (``sqrt(L)`` groups) orders them by
    group, then by closeness to the group's centre. Tasks search runs of consecutive lists, whose
    users probe mostly the same lists: each task reads far fewer distinct list files.
    """
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    groups = round(math.sqrt(len(c)))
    if groups < 2:
        return c
    coarse = fit_centroids(c, groups, seed=seed)
    group = probe_lists(c, coarse, 1)[:, 0]
    closeness = np.einsum("ij,ij->i", c, coarse[group])
    return c[np.lexsort((-closeness, group))]


def probe_lists(unit: np.ndarray, centroids: np.ndarray, probe: int) -> np.ndarray:
    """The ``probe`` lists of highest centroid inner product per row, best first.

    Args:
        unit: ``[U, E]`` unit user vectors. centroids: ``[L, E]``. probe: lists per user
            (at most ``L``).

    Returns:
        ``[U, min(probe, L)]`` int64 list ids; column 0 is the user's own list. Ties go to the
        smaller list id, so identical users land in the same lists.
    """
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    p = max(1, min(int(probe), len(c)))
    rows = max(1, PROBE_FLOATS // max(len(c), 1))
    out = np.empty((len(unit), p), dtype=np.int64)
    for s in range(0, len(unit), rows):
        scores = np.asarray(unit[s : s + rows], dtype=np.float32) @ c.T
        out[s : s + rows] = best_columns(scores, p)
    return out


def best_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns of the ``k`` highest scores per row, best first, ties to the smaller column."""
    q, c = scores.shape
    if k >= c:
        cols = np.broadcast_to(np.arange(c, dtype=np.int64), (q, c))
    else:
        cols = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(scores, cols, 1).min(axis=1, keepdims=True)
        tied = (scores == kth).sum(axis=1) > (np.take_along_axis(scores, cols, 1) == kth).sum(axis=1)
        if tied.any():  # several columns tie at the cut-off: keep the smaller ones
            cols = cols.copy()
            for r in np.nonzero(tied)[0]:
                cols[r] = np.lexsort((np.arange(c), -scores[r]))[:k]
    vals = np.take_along_axis(scores, cols, 1)
    order = np.lexsort((cols, -vals), axis=1)
    return np.take_along_axis(cols, order, 1).astype(np.int64)


def _faiss():
    """The faiss module; a one-line error naming the extra when it is missing."""
    try:
        import faiss  # noqa: PLC0415 - optional dependency, loaded where it is used
    except ImportError:
        raise EnvironmentProblem(
            "neighbors.method ivf: faiss is not installed (pip install 'longtail[ann]')"
        ) from None
    return faiss
