"""The seeded hash sample of users that evaluate and similar-items read their figures from."""
from __future__ import annotations

import pytest
from longtail.inference.users import sample_users


@pytest.mark.spark
def test_the_sample_is_about_the_bound_the_same_every_time_and_everyone_below_it(spark):
    users = spark.range(1, 4001).withColumnRenamed("id", "user_idx")
    picked = sorted(r[0] for r in sample_users(users, 1000, 4000, seed=42).collect())
    again = sorted(r[0] for r in sample_users(users, 1000, 4000, seed=42).collect())
    other = sorted(r[0] for r in sample_users(users, 1000, 4000, seed=43).collect())
    assert picked == again and picked != other
    assert 850 < len(picked) < 1150
    assert sample_users(users, 4000, 4000, seed=42) is users
