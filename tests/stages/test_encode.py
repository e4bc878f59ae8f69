"""``longtail encode`` on tiny tables with the real bundled MiniLM (offline)."""
from __future__ import annotations

import os

import numpy as np
import pytest
from longtail.core import schemas
from longtail.core.config import EncodeConfig
from longtail.core.errors import ConfigError, EnvironmentProblem
from longtail.encoders import text as encoders
from longtail.encoders.pca import load_pca, pca_path
from longtail.stages.encode import item_texts, run_encode, user_texts

LONG_DESCRIPTION = " ".join(f"ingredient{i}" for i in range(3000))

ITEMS = [
    # item_id, title, description, categories, brand, attributes
    ("i0", "Red matte lipstick", "Long lasting colour", ["Beauty", "Makeup", "Lips"], "Acme", {"price": "5.0"}),
    ("i1", "Shampoo for dry hair", None, ["Beauty", "Hair Care"], None, None),
    ("i2", None, None, [], None, None),  # nothing at all: empty text
    ("i3", "Crème hydratante ✨ 保湿クリーム", None, None, "Ünïcode", None),
    ("i4", "Mascara", LONG_DESCRIPTION, ["Beauty", "", "Eyes"], "Acme", None),
    ("i5", "Nail polish remover", "Acetone free", ["Beauty", "Nails"], "Polish Co", None),
    ("i6", "Sunscreen SPF 50", None, ["Beauty", "Skin Care"], "SunCo", None),
]
STATS = [(f"i{k}", k, 3, "tail") for k in range(len(ITEMS))]
SEQUENCES = [
    # user_id, user_idx, item_idxs, train_item_idxs, valid_item_idx, test_item_idx
    ("u0", 0, [0, 1, 5, 6], [0, 1], 5, 6),
    ("u1", 1, [3, 4, 0, 1, 5], [3, 4, 0], 1, 5),
    ("u2", 2, [2, 0, 1], [2], 0, 1),  # only training item has no text: empty user text
    ("u3", 3, [6, 5, 4, 3, 0], [6, 5, 4], 3, 0),
]


def _write_inputs(wh, items=ITEMS, sequences=SEQUENCES):
    spark = wh.spark
    wh.write(spark.createDataFrame(items, schemas.ITEMS_SCHEMA), schemas.ITEMS)
    wh.write(spark.createDataFrame(STATS, schemas.ITEM_STATS_SCHEMA), schemas.ITEM_STATS)
    wh.write(spark.createDataFrame(sequences, schemas.USER_SEQUENCES_SCHEMA), schemas.USER_SEQUENCES)


def _texts(df, key):
    return {r[key]: r["text"] for r in df.collect()}


def _worker_model_loads(spark, dtype: str = "float32") -> dict[int, int]:
    import pandas as pd

    def probe(frames):
        from longtail.encoders import text as enc

        for _ in frames:
            # One model of this dtype in this worker's module-level cache: tasks reused it rather
            # than reloading. (Workers outlive tests: another test may have left a model of another dtype.)
            yield pd.DataFrame({"pid": [os.getpid()], "loads": [sum(key[2] == dtype for key in enc._CACHE)]})

    rows = spark.range(4, numPartitions=4).mapInPandas(probe, "pid long, loads long").collect()
    return {r["pid"]: r["loads"] for r in rows}


def _embeddings(wh, table, key):
    return {r[key]: (list(r["embedding"]), r["model"], r["text_hash"]) for r in wh.read(table).collect()}


# --------------------------------------------------------------------------- texts (Spark, no model)


@pytest.mark.spark
def test_item_text_template_drops_missing_fields_with_their_labels(spark):
    df = spark.createDataFrame(ITEMS, schemas.ITEMS_SCHEMA)
    texts = _texts(item_texts(df, EncodeConfig().item_template), "item_id")
    assert texts["i0"] == "Red matte lipstick. Brand: Acme. Categories: Beauty, Makeup, Lips. Long lasting colour"
    assert texts["i1"] == "Shampoo for dry hair. Categories: Beauty, Hair Care"
    assert texts["i2"] == ""
    assert texts["i3"] == "Crème hydratante ✨ 保湿クリーム. Brand: Ünïcode"
    assert texts["i4"].startswith("Mascara. Brand: Acme. Categories: Beauty, Eyes. ingredient0 ")
    # Fields may come from the attributes map; a missing first field drops its separator.
    custom = _texts(item_texts(df, "{brand} | {title}, price {price}"), "item_id")
    assert custom["i0"] == "Acme | Red matte lipstick, price 5.0"
    assert custom["i1"] == "Shampoo for dry hair"
    assert custom["i2"] == ""


@pytest.mark.spark
def test_bad_templates_are_config_errors(spark):
    df = spark.createDataFrame(ITEMS, schemas.ITEMS_SCHEMA).drop("attributes")
    with pytest.raises(ConfigError, match=r"encode.item_template: field \{colour\}"):
        item_texts(df, "{title} {colour}")
    with pytest.raises(ConfigError, match="format spec"):
        item_texts(df, "{title:>20}")
    with pytest.raises(ConfigError, match="encode.item_template"):
        item_texts(df, "{title")


@pytest.mark.spark
@pytest.mark.slow
def test_user_text_uses_only_recent_training_items(spark):
    items = spark.createDataFrame(ITEMS, schemas.ITEMS_SCHEMA)
    stats = spark.createDataFrame(STATS, schemas.ITEM_STATS_SCHEMA)
    seqs = spark.createDataFrame(SEQUENCES, schemas.USER_SEQUENCES_SCHEMA)
    cfg = EncodeConfig(user_template="History: {titles}")
    texts = _texts(user_texts(seqs, stats, items, cfg), "user_id")
    assert texts["u0"] == "History: Red matte lipstick; Shampoo for dry hair"
    # Validation (i5) and test (i6) items never appear.
    assert "Nail polish" not in texts["u0"] and "Sunscreen" not in texts["u0"]
    assert texts["u1"] == "History: Crème hydratante ✨ 保湿クリーム; Mascara; Red matte lipstick"
    assert texts["u2"] == ""
    # Only the most recent N training items, then only the last M characters.
    short = _texts(user_texts(seqs, stats, items, EncodeConfig(user_template="{titles}", user_history_items=2)),
                   "user_id")
    assert short["u1"] == "Mascara; Red matte lipstick"
    cut = _texts(user_texts(seqs, stats, items, EncodeConfig(user_template="{titles}", user_max_chars=12)),
                 "user_id")
    assert cut["u1"] == "tte lipstick"
    with pytest.raises(ConfigError, match=r"unknown field \{user_id\}"):
        run_encode(None, EncodeConfig(user_template="{user_id}: {titles}"))
    # A catalogue without titles (brand and categories only): items are named by their item text.
    untitled = spark.createDataFrame([(r[0], None, *r[2:]) if r[0] == "i1" else r for r in ITEMS], schemas.ITEMS_SCHEMA)
    thin = _texts(user_texts(seqs, stats, untitled, EncodeConfig(user_template="{titles}")), "user_id")
    assert thin["u0"] == "Red matte lipstick; Categories: Beauty, Hair Care"
    assert thin["u2"] == ""


# --------------------------------------------------------------------------- the stage


@pytest.mark.spark
@pytest.mark.slow
def test_udf_embeddings_equal_transformers_and_pca_is_a_projection(warehouse):
    wh = warehouse
    _write_inputs(wh)
    # float32: compared with plain transformers to 1e-5 below (bfloat16 agrees to a cosine of 0.9999).
    cfg = EncodeConfig(pca_dim=4, max_tokens=32, batch_size=2, precision="float32")
    report = run_encode(wh, cfg)
    assert (report.items.total, report.items.encoded, report.items.reused, report.items.empty) == (7, 7, 0, 1)
    assert (report.users.total, report.users.encoded, report.users.empty) == (4, 4, 1)
    assert report.dim == 384 and report.pooling == "mean" and report.pca_refit
    assert "items 7 (encoded 7" in str(report)
    # Four UDF tasks ran (items and users, two partitions each): each reused Python worker
    # loaded the model once, not once per task (or batch).
    loads = _worker_model_loads(wh.spark)
    assert max(loads.values()) == 1, loads

    # Same texts through plain transformers (one at a time, mean pooling, L2 norm).
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = str(encoders.resolve_model_path("minilm"))
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    texts = _texts(item_texts(wh.read(schemas.ITEMS), cfg.item_template), "item_id")
    got = _embeddings(wh, schemas.ITEM_EMBEDDINGS, "item_id")
    for item_id, text in texts.items():
        vec = np.asarray(got[item_id][0], dtype=np.float32)
        assert got[item_id][1] == "minilm" and len(got[item_id][2]) == 64
        if not text:
            assert not vec.any(), "empty text gets the zero vector"
            continue
        enc = tok([text], return_tensors="pt", truncation=True, max_length=32)
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        want = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)[0].numpy()
        np.testing.assert_allclose(vec, want, atol=1e-5, err_msg=item_id)
    users = _embeddings(wh, schemas.USER_EMBEDDINGS, "user_id")
    assert not np.asarray(users["u2"][0]).any()
    assert abs(np.linalg.norm(users["u1"][0]) - 1) < 1e-5

    # PCA: orthonormal components, mean of the embeddings, table = (x - mean) @ C.T.
    saved = load_pca(wh.root, "minilm")
    mean, comps = saved.mean, saved.components
    assert mean.dtype == comps.dtype == np.float32 and comps.shape == (4, 384)
    np.testing.assert_allclose(comps @ comps.T, np.eye(4), atol=1e-5)
    ids = sorted(got)
    x = np.asarray([got[i][0] for i in ids], dtype=np.float64)
    np.testing.assert_allclose(mean, x.mean(0), atol=1e-6)
    pca = {r["item_id"]: r for r in wh.read(schemas.ITEM_EMBEDDINGS_PCA).collect()}
    y = np.asarray([pca[i]["embedding"] for i in ids])
    np.testing.assert_allclose(y, (x - mean) @ comps.T, atol=1e-5)
    assert {pca[i]["model"] for i in ids} == {"minilm"}
    # The top components span the same space as numpy's PCA (SVD of the centred data).
    _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    np.testing.assert_allclose(np.abs(vt[:4] @ comps.T.astype(np.float64)), np.eye(4), atol=1e-3)
    assert abs(report.pca_explained_variance - (s[:4] ** 2).sum() / (s**2).sum()) < 1e-4
    assert os.path.isfile(pca_path(wh.root, "minilm"))
    assert not [f for f in os.listdir(os.path.dirname(pca_path(wh.root, "minilm"))) if ".tmp" in f]


@pytest.mark.spark
@pytest.mark.slow
def test_reruns_encode_only_what_changed(warehouse, tmp_path):
    wh = warehouse
    _write_inputs(wh)
    cfg = EncodeConfig(pca_dim=3)
    first = run_encode(wh, cfg)
    assert first.items.encoded == 7 and first.users.encoded == 4
    before_items = _embeddings(wh, schemas.ITEM_EMBEDDINGS, "item_id")
    before_users = _embeddings(wh, schemas.USER_EMBEDDINGS, "user_id")
    versions = {t: wh.version(t) for t in (schemas.ITEM_EMBEDDINGS, schemas.USER_EMBEDDINGS, schemas.ITEM_EMBEDDINGS_PCA)}

    # Nothing changed: nothing encoded, nothing rewritten, rows identical.
    again = run_encode(wh, cfg)
    assert (again.items.encoded, again.items.reused, again.users.encoded, again.users.reused) == (0, 7, 0, 4)
    assert not again.pca_refit and not again.items.written
    assert {t: wh.version(t) for t in versions} == versions
    assert _embeddings(wh, schemas.ITEM_EMBEDDINGS, "item_id") == before_items

    # Two titles change and one item goes: exactly those two items re-encode, the rest is kept as
    # is, and users whose training history shows a changed or removed item re-encode.
    changed = [(r[0], r[1] + " (new formula)" if r[0] in ("i0", "i5") else r[1], *r[2:]) for r in ITEMS]
    wh.write(wh.spark.createDataFrame(changed[:-1], schemas.ITEMS_SCHEMA), schemas.ITEMS)
    # `run` with a model that reads no similar users encodes the items only: user_embeddings stay as they were.
    items_only = run_encode(wh, cfg, users=False)
    assert (items_only.items.encoded, items_only.items.reused, items_only.items.removed, items_only.items.total) == (2, 4, 1, 6)
    assert items_only.pca_refit and not items_only.users_encoded and "users not encoded" in str(items_only)
    assert wh.version(schemas.USER_EMBEDDINGS) == versions[schemas.USER_EMBEDDINGS]
    third = run_encode(wh, cfg)
    assert (third.items.encoded, third.items.reused) == (0, 6) and not third.pca_refit
    # i0 is in the training history of u0 and u1, i5 and i6 in that of u3; u2's text is unchanged.
    assert (third.users.encoded, third.users.reused) == (3, 1)
    after = _embeddings(wh, schemas.ITEM_EMBEDDINGS, "item_id")
    assert set(after) == set(before_items) - {"i6"}
    assert {k for k in after if after[k] != before_items[k]} == {"i0", "i5"}
    after_users = _embeddings(wh, schemas.USER_EMBEDDINGS, "user_id")
    assert {k for k in after_users if after_users[k] != before_users[k]} == {"u0", "u1", "u3"}

    # Another model (here: the same weights in another folder) re-encodes everything.
    other = tmp_path / "minilm-copy"
    src = encoders.resolve_model_path("minilm")
    for f in src.rglob("*"):
        if f.is_file():
            (other / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(f, other / f.relative_to(src))
    fourth = run_encode(wh, EncodeConfig(model=str(other), pca_dim=3))
    assert (fourth.items.encoded, fourth.items.reused, fourth.users.encoded) == (6, 0, 4)
    rows = _embeddings(wh, schemas.ITEM_EMBEDDINGS, "item_id")
    assert {m for _, m, _ in rows.values()} == {str(other.resolve())}
    np.testing.assert_allclose(rows["i1"][0], after["i1"][0], atol=1e-6)
    assert load_pca(wh.root, str(other)).components.shape == (3, 384)


@pytest.mark.spark
def test_missing_model_fails_clearly_and_writes_nothing(warehouse, tmp_path):
    _write_inputs(warehouse)
    with pytest.raises(EnvironmentProblem, match="not-downloaded.*not a local model directory"):
        run_encode(warehouse, EncodeConfig(model=str(tmp_path / "not-downloaded")))
    assert not warehouse.exists(schemas.ITEM_EMBEDDINGS)
    assert load_pca(warehouse.root, "minilm") is None
    with pytest.raises(ConfigError, match="encode.pca_dim 500"):
        run_encode(warehouse, EncodeConfig(pca_dim=500))
    with pytest.raises(ConfigError, match="encode.batch_size 0"):
        run_encode(warehouse, EncodeConfig(batch_size=0))
