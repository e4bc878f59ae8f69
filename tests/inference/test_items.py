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
