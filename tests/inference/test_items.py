"""The one item index and the mapping between its versions (no Spark)."""
from __future__ import annotations

import numpy as np
import pytest
from longtail.core.errors import InputError
from longtail.inference.items import ItemIndex


def test_index_from_pairs_leaves_padding_and_holes_empty():
    index = ItemIndex.from_pairs(np.array([3, 1]), ["c", "a"], "item_stats")
    assert index.ids == ["", "a", "", "c"] and index.size == 4
    assert index.position() == {"a": 1, "c": 3}


@pytest.mark.parametrize(
    "idxs, match",
    [([], "no items"), ([0, 1], "must be 1 or more"), ([2, 2], "duplicates"), ([np.nan, 1], "must be 1 or more")],
)
def test_bad_item_idxs_are_named(idxs, match):
    with pytest.raises(InputError, match=f"table item_stats: .*{match}"):
        ItemIndex.from_pairs(np.array(idxs, dtype=float), ["x"] * len(idxs), "item_stats")


def test_a_model_trained_before_new_items_maps_onto_todays_catalogue():
    trained = ItemIndex(["", "a", "b", "c"])
    today = ItemIndex(["", "a", "", "c", "d"]).extended(["new"])  # b left, d arrived, "new" has text only
    assert today.lookup(trained).tolist() == [0, 1, 0, 3, 0, 0]
    assert trained.lookup(today).tolist() == [0, 1, 0, 3]


def test_sorted_ids_find_every_row_of_an_id_and_nothing_for_unknown_or_empty_ids():
    from longtail.inference.items import SortedIds

    ids = SortedIds(["", "b", None, "a", "b", "é-ü"])
    assert len(ids) == 4  # "" and None are never keys
    rows, which = ids.lookup(["b", "zz", "a", "", None, "é-ü"])
    assert sorted(zip(which.tolist(), rows.tolist())) == [(0, 1), (0, 4), (2, 3), (5, 5)]
    np.testing.assert_array_equal(ids.first(["b", "nope", "a"]), [1, -1, 3])
    # An id longer than every key is unknown, and never cut down to a key ("a-much-longer-id" is not "a").
    np.testing.assert_array_equal(ids.first(["a-much-longer-id", "a", "bb"]), [-1, 3, -1])
    assert ids.lookup([])[0].dtype == np.int64 and SortedIds([]).lookup(["a"])[0].size == 0
    mapped = SortedIds(["x", "y"], rows=np.array([10, 20]))
    np.testing.assert_array_equal(mapped.first(["y", "x"]), [20, 10])
