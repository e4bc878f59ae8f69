"""Tiny training warehouses the train tests share: users who walk the catalogue in steps of 3 (a
pattern a model learns in a few epochs) and the LLM and PCA item tables with encode's PCA map."""
from __future__ import annotations

import numpy as np

from longtail.core import schemas as S
from longtail.core.tables import Warehouse
from longtail.encoders.pca import PcaMap, save_pca


def write_walks(spark, wh: Warehouse, rng: np.random.Generator, n_users: int, n_items: int,
                lengths: tuple[int, int]) -> None:
    """``user_sequences`` of ``n_users`` walks over items ``1..n_items`` (a length drawn from
    ``lengths``, a random start), and ``item_stats`` of exactly those items."""
    rows = []
    for u in range(n_users):
        length = int(rng.integers(*lengths))
        start = int(rng.integers(0, n_items))
        seq = [(start + 3 * i) % n_items + 1 for i in range(length)]
        rows.append((f"u{u}", u + 1, seq, seq[:-2], seq[-2], seq[-1]))
    wh.write(spark.createDataFrame(rows, S.USER_SEQUENCES_SCHEMA), S.USER_SEQUENCES)
    items = [(f"i{i}", i, 5, "tail" if i % 3 else "head") for i in range(1, n_items + 1)]
    wh.write(spark.createDataFrame(items, S.ITEM_STATS_SCHEMA), S.ITEM_STATS)


def write_text_tables(spark, wh: Warehouse, rng: np.random.Generator, n_items: int, hidden: int, llm_dim: int,
                      drop_embedding: frozenset[str] | set[str] = frozenset()) -> None:
    """Random LLM embeddings of items ``i1..i<n_items>`` (but ``drop_embedding``), their PCA to
    ``hidden`` (every item) and the PCA map encode saves beside them, fitted on that version."""
    llm = rng.normal(size=(n_items, llm_dim)).astype(np.float32)
    centred = llm - llm.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    pca = (centred @ vt[:hidden].T).astype(np.float32)
    keep = [i for i in range(n_items) if f"i{i + 1}" not in drop_embedding]
    wh.write(spark.createDataFrame([(f"i{i + 1}", llm[i].tolist(), "m", "h") for i in keep],
                                   S.ITEM_EMBEDDINGS_SCHEMA), S.ITEM_EMBEDDINGS)
    wh.write(spark.createDataFrame([(f"i{i + 1}", pca[i].tolist(), "m") for i in range(n_items)],
                                   S.ITEM_EMBEDDINGS_PCA_SCHEMA), S.ITEM_EMBEDDINGS_PCA)
    save_pca(wh.root, PcaMap(llm.mean(axis=0), vt[:hidden].astype(np.float32), 1.0, "m", wh.version(S.ITEM_EMBEDDINGS)))
