"""synthetic: deterministic, long-tailed, category-driven behaviour, written as contract tables."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from longtail.core import schemas
from longtail.core.config import DemoConfig, SequencesConfig
from longtail.synthetic import (
    generate_catalogue,
    planted_item_embeddings,
    write_catalogue,
)


@pytest.fixture(scope="module")
def catalogue():
    return generate_catalogue(2000, 800, seed=7)


def test_same_seed_gives_identical_frames_and_another_seed_does_not():
    a, b, c = generate_catalogue(300, 120, 3), generate_catalogue(300, 120, 3), generate_catalogue(300, 120, 4)
    for name in ("interactions", "items", "users"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert not a.interactions.equals(c.interactions)


def test_frames_have_the_documented_columns_and_no_repeated_user_item_pairs(catalogue):
    assert list(catalogue.interactions.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert list(catalogue.items.columns) == ["item_id", "title", "description", "categories", "brand"]
    assert catalogue.interactions["timestamp"].dtype == "int64"
    assert catalogue.interactions["rating"].between(1, 5).all()
    assert not catalogue.interactions.duplicated(["user_id", "item_id"]).any()
    assert catalogue.items["item_id"].is_unique and catalogue.users["user_id"].is_unique
    assert set(catalogue.interactions["user_id"]) == set(catalogue.users["user_id"])


def test_popularity_is_long_tailed_and_histories_are_long_tailed_with_at_least_five(catalogue):
    inter = catalogue.interactions
    pop = inter["item_id"].value_counts()
    top = pop.iloc[: len(catalogue.items) // 5].sum() / len(inter)
    assert top > 0.5  # the 20% most popular items hold most interactions
    assert pop.iloc[0] > 10 * pop.median()
    lengths = inter.groupby("user_id").size()
    assert lengths.min() >= 5
    assert lengths.max() >= 4 * lengths.median()


def test_users_mostly_pick_items_of_their_preferred_categories(catalogue):
    items = catalogue.items.assign(category=catalogue.items["categories"].str[1])[["item_id", "category"]]
    joined = catalogue.interactions.merge(items, on="item_id").merge(catalogue.users, on="user_id")
    inside = [c in pref for c, pref in zip(joined["category"], joined["preferred_categories"])]
    per_user = joined.assign(inside=inside).groupby("user_id")["inside"].mean()
    assert sum(inside) / len(inside) > 0.7
    assert (per_user > 0.5).mean() > 0.8
    # Ten categories: by chance a user with 1-3 of them would be near 20%.
    assert 1 <= catalogue.users["preferred_categories"].str.len().min()
    assert catalogue.users["preferred_categories"].str.len().max() <= 3


def test_item_text_names_the_category_and_brand(catalogue):
    for row in catalogue.items.head(50).itertuples():
        category = row.categories[1]
        assert category.lower() in row.description.lower()
        assert row.brand in row.description
        assert row.title[0].isupper() and len(row.title.split()) >= 3
    # Brands are specialised: most brands sell in a single category.
    per_brand = catalogue.items.assign(category=catalogue.items["categories"].str[1]).groupby("brand")["category"]
    assert (per_brand.nunique() == 1).mean() > 0.9


@pytest.mark.spark
@pytest.mark.slow
def test_write_catalogue_writes_contract_tables_that_a_5_core_mostly_keeps(warehouse):
    from longtail.stages.sequences import run_sequences

    cat = write_catalogue(warehouse, DemoConfig(users=300, items=100, seed=1), rows_per_file=4000)
    # One file per `rows_per_file` rows, not one per Arrow batch (2,048 rows: two for these ~3,000
    # interactions before the coalesce).
    assert len(cat.interactions) > 2048
    assert [len(_files(warehouse, t)) for t in (schemas.INTERACTIONS, schemas.ITEMS, schemas.USERS)] == [1, 1, 1]
    inter = warehouse.read(schemas.INTERACTIONS)
    schemas.require_columns(inter, schemas.INTERACTIONS_SCHEMA, schemas.INTERACTIONS)
    schemas.require_columns(warehouse.read(schemas.ITEMS), schemas.ITEMS_SCHEMA, schemas.ITEMS)
    assert warehouse.read(schemas.USERS).count() == 300
    assert warehouse.read(schemas.ITEMS).count() == 100
    first = inter.orderBy("user_id", "ts", "item_id").first()
    expected = cat.interactions.sort_values(["user_id", "timestamp", "item_id"]).iloc[0]
    assert (first.user_id, first.item_id, int(first.ts.timestamp())) == (
        expected.user_id, expected.item_id, expected.timestamp)
    summary = run_sequences(warehouse, SequencesConfig())
    assert summary.users >= 0.9 * 300
    assert summary.interactions >= 0.9 * len(cat.interactions)


def _files(warehouse, table: str) -> list[str]:
    from deltalake import DeltaTable
    from longtail.core import files

    return DeltaTable(files.delta_uri(warehouse.path(table))).file_uris()


def test_mixture_draws_follow_the_mixture_probabilities():
    import numpy as np
    from longtail.synthetic import _Mixture

    # Two users over 6 items in 3 categories (category 2 has no items: its weight moves to the rest).
    cat_of_item = np.array([0, 0, 1, 1, 1, 0])
    weight = np.array([4.0, 1.0, 3.0, 2.0, 1.0, 3.0])
    pref = np.array([[1.0, 0.0, 0.0], [0.25, 0.25, 0.5]])
    mixture = _Mixture.of(pref, cat_of_item, weight, preference_strength=0.8)
    draws = mixture.draw(np.random.default_rng(0), np.array([0, 1]), 200_000)
    in_cat = np.where(cat_of_item == 0, weight / 8.0, weight / 6.0)  # P(item | its category)
    global_p = weight / weight.sum()
    expected = [
        0.8 * np.where(cat_of_item == 0, in_cat, 0.0) + 0.2 * global_p,
        0.8 * 0.5 * in_cat + 0.2 * global_p,
    ]
    for user in (0, 1):
        seen = np.bincount(draws[user], minlength=6) / draws.shape[1]
        np.testing.assert_allclose(seen, expected[user], atol=0.005)


def test_a_catalogue_of_min_history_items_gives_every_user_every_item():
    cat = generate_catalogue(40, 5, seed=2)
    per_user = cat.interactions.groupby("user_id")["item_id"].nunique()
    assert (per_user == 5).all() and len(per_user) == 40


def _within_category_gaps(cat) -> pd.Series:
    """Per user and category, the circular distance between consecutive items of the user in the
    category's hidden order (item index within its category), as a share of the category's size."""
    import numpy as np

    items = cat.items.assign(category=cat.items["categories"].str[1])
    items["place"] = items.groupby("category").cumcount()
    items["size"] = items.groupby("category")["item_id"].transform("size")
    bought = cat.interactions.merge(items[["item_id", "category", "place", "size"]], on="item_id")
    bought = bought.sort_values(["user_id", "category", "place"])
    gap = bought.groupby(["user_id", "category"])["place"].diff()
    gap = np.minimum(gap, bought["size"] - gap) / bought["size"]
    return gap.dropna()


def test_locality_keeps_users_near_their_own_spot_in_a_category_and_zero_changes_nothing():
    plain = generate_catalogue(2000, 5000, seed=5, zipf_exponent=0.5)
    pd.testing.assert_frame_equal(plain.interactions,
                                  generate_catalogue(2000, 5000, seed=5, zipf_exponent=0.5, locality=0.0).interactions)
    local = generate_catalogue(2000, 5000, seed=5, zipf_exponent=0.5, locality=0.9, locality_width=5)
    # 500 items per category: a spread of 5 items is 1% of it; popularity draws spread over all of it.
    assert _within_category_gaps(local).median() < 0.05 < _within_category_gaps(plain).median()
    # The popularity law and the categories are the same draws: only the choice within a category moved.
    pd.testing.assert_frame_equal(plain.items, local.items)
    with pytest.raises(ValueError, match="locality"):
        generate_catalogue(10, 10, seed=1, locality=1.5)


def test_planted_embeddings_are_close_for_items_near_in_a_category_and_apart_across_categories():
    items = generate_catalogue(50, 6000, seed=3).items
    vectors = planted_item_embeddings(items, dim=64, seed=1, locality_width=10)
    assert vectors.shape == (6000, 64) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(vectors, planted_item_embeddings(items, dim=64, seed=1, locality_width=10))
    category = items["categories"].map(lambda c: c[1]).to_numpy()
    same = np.flatnonzero(category == category[0])  # in index order: the hidden order
    sims = vectors[same] @ vectors[same[300]]
    near = np.r_[sims[295:300], sims[301:306]]  # 1-5 places away, width 10
    far = np.r_[sims[:200], sims[400:]]  # 100 places or more away
    other = vectors[category != category[0]] @ vectors[same[300]]
    assert near.min() > 0.85 and np.quantile(far, 0.99) < 0.6
    assert np.median(other) < np.median(far) - 0.2  # the category coordinates keep categories apart
    with pytest.raises(ValueError, match="planted"):
        planted_item_embeddings(items, dim=16, category_dims=16)
