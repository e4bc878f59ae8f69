"""benchmarks/retrieval.py: the synthetic vectors, the recall it prints, its ann path on an exact index, and
the served lists of a trained model (synthetic catalogue, or a warehouse read without writing into it)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from bench_scripts import load_script

pytest.importorskip("faiss")


bench = load_script("retrieval")


def test_synthetic_catalogue_has_padding_row_and_a_bias_per_item():
    items, bias, users = bench.synthetic(300, 7, dim=8, topics=5)
    assert items.shape == (300, 8) and bias.shape == (300,) and users.shape == (7, 8)
    assert not items[0].any() and (bias <= 0).all() and items.dtype == np.float32


def test_recall_is_the_share_of_the_exact_list_held():
    assert bench.recall(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 2, 9], [7, 8, 9]])) == pytest.approx(1 / 3)


def test_ann_path_with_a_flat_index_serves_the_exact_lists():
    from longtail.ranking.retrieval import build_index
    from longtail.ranking.topk import chunked_topk

    items, bias, users = bench.synthetic(300, 7, dim=8, topics=5)
    served = torch.from_numpy(np.concatenate([items, bias[:, None]], axis=1))
    queries = torch.from_numpy(np.concatenate([users, np.ones((7, 1), np.float32)], axis=1))
    index = build_index(items, bias=bias)
    assert index.kind == "flat"
    got = bench._ann(index, users, queries, served, 20, 5)
    np.testing.assert_array_equal(got, chunked_topk(queries, served, 5)[1].numpy())


#: Keys the issue asks of the result line (24, point 6).
RESULT_KEYS = {
    "items", "users", "exact_core_s_per_user", "ann_core_s_per_user", "speedup", "recall_at_10", "tail_share_exact",
    "tail_share_ann", "peak_driver_mib", "peak_worker_mib", "index_kind", "nlist", "nprobe", "candidates",
}


def _result_line(capsys) -> dict:
    """The JSON object of the script's last printed line."""
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.spark
@pytest.mark.slow
def test_synthetic_mode_trains_an_llmesr_model_on_planted_text_and_probing_every_list_serves_the_exact_lists(
    spark, capsys, tmp_path,
):
    bench.main(["--model", "llmesr_sasrec", "--items", "600", "--users", "400", "--epochs", "1", "--score-users", "120",
                "--locality", "0.9", "--locality-width", "3", "--text-dim", "24", "--nlist", "3", "--nprobe", "3", "1",
                "--workdir", str(tmp_path), "--set", "train.hidden=16", "--set", "encode.pca_dim=16",
                "--set", "train.max_len=20", "--set", "train.negatives=64", "--set", "train.batch_size=64",
                "--set", "train.lr=0.005"])
    result = _result_line(capsys)
    assert RESULT_KEYS <= set(result) and result["mode"] == "synthetic" and result["epochs"] == 1
    assert result["users"] == 120 and result["items"] == result["catalogue_items"] == 600
    assert result["text"] == "planted" and result["text_dim"] == 24 and 0.0 < result["pca_explained"] <= 1.0
    # One epoch over 400 users: the planted text carries the users' spots (items 3 places apart are
    # bought together). A random ranking's NDCG@10 is about 4.5 / items; `sasrec` on the same catalogue
    # and settings reached .005, this model .075 (2026-12-07).
    assert result["valid_ndcg10"] > 4 * 4.5 / result["items"]
    assert (result["index_kind"], result["nlist"], result["nprobe"]) == ("ivf", 3, 3)
    # Every list probed: the index is exact, so the served lists are the exact ones.
    assert result["recall_at_10"] == 1.0 and result["tail_share_ann"] == result["tail_share_exact"]
    assert 0.0 < result["tail_share_exact"] < 1.0 and result["exact_core_s_per_user"] > 0
    assert [s["nprobe"] for s in result["sweep"]] == [3, 1] and 0.0 <= result["sweep"][1]["recall_at_10"] <= 1.0
    assert not list(tmp_path.iterdir())  # the scratch warehouse is removed without --keep


@pytest.mark.spark
def test_warehouse_mode_reads_a_trained_model_and_writes_nothing_into_the_warehouse(demo_warehouse, capsys, tmp_path):
    wh, cfg, _, _ = demo_warehouse
    # auto, tuned as score tunes it (to recall 1 on the users' own lists), then every list probed.
    bench.main(["--warehouse", wh.root, "--model", cfg.train.model, "--nlist", "4", "--nprobe", "auto", "4",
                "--workdir", str(tmp_path), "--set", "score.ann_target_recall=1"])
    result = _result_line(capsys)
    assert RESULT_KEYS <= set(result) and result["mode"] == "warehouse" and result["warehouse_unchanged"] is True
    assert result["users"] == wh.read("user_sequences").count() and result["index_kind"] == "ivf"
    assert result["tuning"]["recall_at_10"] == 1.0 and result["nprobe"] == result["tuning"]["nprobe"] <= 4
    assert result["recall_at_10"] == 1.0 and result["tail_share_ann"] == result["tail_share_exact"]
    assert [s["recall_at_10"] for s in result["sweep"]] == [1.0, 1.0] and not list(tmp_path.iterdir())


def test_vectors_mode_ends_with_the_result_line_and_every_list_probed_is_exact(capsys):
    bench.main(["--vectors", "--items", "3000", "--score-users", "20", "--nlist", "8", "--nprobe", "8", "2",
                "--index", "ivf_pq", "--candidates", "3000"])
    result = _result_line(capsys)
    assert RESULT_KEYS <= set(result) and result["mode"] == "vectors" and result["users"] == 20
    assert (result["index_kind"], result["nlist"], result["nprobe"], result["items"]) == ("ivf_pq", 8, 8, 2999)
    # Every list probed and every item a candidate: the exact re-score gives the exact lists.
    assert result["recall_at_10"] == 1.0 and [s["nprobe"] for s in result["sweep"]] == [8, 2]
    assert result["exact_core_s_per_user"] > 0 and result["ann_core_s_per_user"] > 0


def test_vectors_mode_tunes_on_other_users_than_it_measures(capsys):
    bench.main(["--vectors", "--items", "3000", "--score-users", "20", "--nlist", "8", "--nprobe", "auto",
                "--index", "ivf"])
    result = _result_line(capsys)
    tuning = result["tuning"]
    assert tuning["queries"] == 2000 and tuning["recall_at_10"] >= 0.98 and result["nprobe"] == tuning["nprobe"]
    assert result["quantizer"] == tuning["quantizer"] and result["recall_at_10"] > 0.8


def test_scratch_folder_is_new_and_its_missing_parent_is_made(tmp_path):
    parent = tmp_path / "not" / "there"
    first, second = bench.scratch_folder(str(parent)), bench.scratch_folder(str(parent))
    assert first != second and all(p.startswith(str(parent)) and os.path.isdir(p) for p in (first, second))
