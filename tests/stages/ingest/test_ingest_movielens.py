"""The ``movielens`` format: MovieLens-1M ``::``-separated latin-1 files."""
from __future__ import annotations

import pytest
from ingest_helpers import STRICT, table_rows, ts, write_file
from longtail.stages.ingest import run_ingest


@pytest.mark.spark
def test_movielens_latin1_dat_files(spark, warehouse, tmp_path):
    ratings = write_file(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n",
                     "latin-1")
    movies = write_file(
        tmp_path / "movies.dat",
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::Misérables, Les (1995)::Drama|Musical\n",
        "latin-1",
    )
    users = write_file(tmp_path / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n",
                   "latin-1")

    report = run_ingest(spark, warehouse, "movielens", ratings, movies, users, STRICT)

    assert table_rows(warehouse, "interactions") == [
        ("1", "1193", ts(2000, 12, 31, 22, 12, 40), 5.0),
        ("1", "661", ts(2000, 12, 31, 22, 35, 9), 3.0),
        ("2", "1193", ts(2000, 12, 31, 21, 33, 33), 4.0),
    ]
    items = {r.item_id: r for r in warehouse.read("items").collect()}
    assert items["661"].title == "Misérables, Les (1995)"
    assert items["661"].categories == ["Drama", "Musical"]
    assert items["661"].attributes == {"year": "1995"}
    # The users file, not the interactions, decides the users (user 3 has no ratings).
    assert table_rows(warehouse, "users", "user_id") == [("1",), ("2",), ("3",)]
    first = warehouse.read("users").where("user_id = '1'").first()
    assert first.attributes["gender"] == "F" and first.attributes["zip_code"] == "48067"
    assert report.derived == []
