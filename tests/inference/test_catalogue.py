"""``load_catalogue``: the items the driver can rank, read as Arrow columns (no object per embedding)."""
from __future__ import annotations

import numpy as np
import pytest
from longtail.core import schemas
from longtail.core.errors import InputError
from longtail.inference import load_catalogue

pytestmark = pytest.mark.spark


def _write(wh, embeddings, items=("a", "b", "c", "new1", "new2")):
    spark = wh.spark
    stats = [("a", 1, 5, "head"), ("b", 2, None, "tail"), ("c", 4, 1, None)]  # idx 3 unused
    wh.write(spark.createDataFrame(stats, schemas.ITEM_STATS_SCHEMA), schemas.ITEM_STATS)
    rows = [(i, f"item {i}", "", [], "b", {}) for i in items]
    wh.write(spark.createDataFrame(rows, schemas.ITEMS_SCHEMA), schemas.ITEMS)
    wh.write(spark.createDataFrame(embeddings, schemas.ITEM_EMBEDDINGS_SCHEMA), schemas.ITEM_EMBEDDINGS)


def test_the_encoder_with_most_items_its_first_row_per_item_and_listed_text_only_items(warehouse, monkeypatch):
    from longtail.inference import catalogue as module

    monkeypatch.setattr(module, "GATHER_ROWS", 2)  # the matrix is filled in several steps
    emb = [
        ("a", [1.0, 0.0], "big", "h"), ("a", [9.0, 9.0], "big", "h"),  # a repeated id: the first row counts
        ("b", None, "big", "h"),  # no vector: no embedding
        ("new2", [0.0, 2.0], "big", "h"), ("new1", [3.0, 0.0], "big", "h"),
        ("gone", [1.0, 1.0], "big", "h"),  # not listed in items any more: not rankable
        ("c", [5.0, 5.0, 5.0], "small", "h"), ("z", [1.0, 1.0, 1.0], None, "h"),  # other encoders
    ]
    _write(warehouse, emb)
    cat = load_catalogue(warehouse)
    assert cat.item_ids == ["", "a", "b", "", "c", "new1", "new2"] and cat.n_known == 5
    assert cat.embedding_model == "big"
    np.testing.assert_array_equal(cat.known, [False, True, True, False, True, False, False])
    np.testing.assert_array_equal(cat.tail, [False, False, True, False, False, True, True])
    np.testing.assert_array_equal(cat.popularity, [0, 5, 0, 0, 1, 0, 0])
    assert cat.embeddings.dtype == np.float32 and cat.embeddings.shape == (7, 2)
    np.testing.assert_array_equal(cat.has_embedding, [False, True, False, False, False, True, True])
    np.testing.assert_array_equal(cat.embeddings[[1, 5, 6]], [[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    assert not cat.embeddings[[0, 2, 3, 4]].any()
    assert load_catalogue(warehouse, include_new_items=False).item_ids == ["", "a", "b", "", "c"]


def test_embeddings_of_different_lengths_name_the_item(warehouse):
    _write(warehouse, [("a", [1.0, 0.0], "m", "h"), ("c", [1.0, 0.0, 0.0], "m", "h")])
    with pytest.raises(InputError, match=r"item 'c' has a 3-d embedding, others 2-d"):
        load_catalogue(warehouse)


def test_no_embeddings_leaves_one_zero_column(warehouse):
    _write(warehouse, [("a", [1.0], "m", "h")])
    warehouse.write(warehouse.spark.createDataFrame([], schemas.ITEM_EMBEDDINGS_SCHEMA), schemas.ITEM_EMBEDDINGS,
                    mode="overwrite")
    cat = load_catalogue(warehouse)
    assert cat.embedding_model is None and cat.embeddings.shape == (5, 1) and not cat.has_embedding.any()
    assert cat.unit_embeddings() is None


@pytest.mark.parametrize("chunks", [1, 3])
def test_embedding_rows_read_every_chunk_of_the_collected_table_in_place(chunks):
    # Spark collects one Arrow chunk per batch; the rows are read chunk by chunk (no combined copy),
    # so each row must land at its own idx whichever chunk holds it, and a repeated id keeps its first row.
    import itertools

    import pyarrow as pa
    from longtail.inference.catalogue import _embedding_rows
    from longtail.inference.items import ItemIndex

    ids = ["c", "a", "x", "b", "a", "d"]
    vectors = [[3.0, 3.5], [1.0, 1.5], [7.0, 7.0], None, [9.0, 9.0], [4.0, 4.5]]
    bounds = np.linspace(0, len(ids), chunks + 1).astype(int)
    table = pa.Table.from_batches([
        pa.record_batch({"item_id": ids[s:e], "embedding": pa.array(vectors[s:e], pa.list_(pa.float32()))})
        for s, e in itertools.pairwise(bounds)
    ])

    class Collected:
        def toArrow(self):
            return table

    embeddings, has = _embedding_rows(ItemIndex(["", "a", "b", "c", "d"]), Collected())
    np.testing.assert_array_equal(embeddings, [[0, 0], [1.0, 1.5], [0, 0], [3.0, 3.5], [4.0, 4.5]])
    np.testing.assert_array_equal(has, [False, True, False, True, True])
