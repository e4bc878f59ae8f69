"""Training: shards from Spark, single and distributed runs, saving, reloading, bad input."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from longtail.core import schemas as S
from longtail.core.config import TrainConfig
from longtail.core.errors import (
    ConfigError,
    EnvironmentProblem,
    InputError,
    LongtailError,
    ModelNotFoundError,
)
from longtail.core.tables import Warehouse
from longtail.inference.store import load_model, load_model_dir
from longtail.stages.train import run_train
from longtail.stages.train.data import (
    NegativeSampler,
    RankData,
    UserTable,
    bucketed_order,
    sample_training_negatives,
)
from longtail.stages.train.prepare import prepare_training_data
from longtail.stages.train.validation import ValidationSet
from tiny_walks import write_text_tables, write_walks

N_ITEMS = 130
N_USERS = 48
HIDDEN = 8
LLM_DIM = 12

TINY = TrainConfig(
    hidden=HIDDEN, max_len=12, dropout=0.1, layers=1, heads=1, batch_size=16, epochs=3,
    patience=5, distill_neighbors=3, seed=7, alpha=0.1,  # the distillation path on (off by default)
)


def _write_inputs(spark, wh: Warehouse, n_users: int = N_USERS, drop_embedding: set[str] = frozenset()) -> None:
    """Users walk the catalogue in steps of 3 from a random start (a learnable pattern)."""
    rng = np.random.default_rng(0)
    write_walks(spark, wh, rng, n_users, N_ITEMS, lengths=(5, 12))
    write_text_tables(spark, wh, rng, N_ITEMS, HIDDEN, LLM_DIM, drop_embedding)
    similar = [
        (f"u{u}", [f"u{u}"] + [f"u{(u + j) % n_users}" for j in (1, 2, 3, 4)], [1.0] * 5) for u in range(n_users)
    ]
    wh.write(spark.createDataFrame(similar, S.SIMILAR_USERS_SCHEMA), S.SIMILAR_USERS)


@pytest.fixture(scope="module")
def data_wh(spark, tmp_path_factory):
    """One warehouse with inputs, shared by the tests that only add models to it."""
    wh = Warehouse(spark, str(tmp_path_factory.mktemp("train") / "warehouse"))
    _write_inputs(spark, wh)
    return wh


@pytest.fixture(scope="module")
def prepared(data_wh, tmp_path_factory):
    """The run folder of a 2-process llmesr_sasrec run (4 shards), written once."""
    run_dir = str(tmp_path_factory.mktemp("run") / "run")
    facts = prepare_training_data(data_wh, "llmesr_sasrec", TINY, run_dir, n_shards=4, world=2)
    return run_dir, facts


def _state(path: str) -> dict:
    return load_model_dir(path).module.state_dict()


# --------------------------------------------------------------------------- pure helpers


def test_training_negatives_avoid_the_users_items():
    rng = np.random.default_rng(0)
    seen = np.tile(np.arange(1, 9), (50, 1))  # items 1..8 seen, catalogue of 10
    targets = np.ones((50, 8), dtype=np.int64)
    targets[:, :2] = 0
    neg = sample_training_negatives(rng, targets, seen, 10)
    assert np.all(neg[:, :2] == 0)
    assert set(np.unique(neg[:, 2:])) <= {9, 10}


# --------------------------------------------------------------------------- Spark part


@pytest.mark.spark
def test_shards_split_users_between_ranks(prepared):
    run_dir, facts = prepared
    assert facts["n_items"] == N_ITEMS and facts["train_users"] == N_USERS and facts["llm_dim"] == LLM_DIM
    files = sorted(
        os.path.join(d, f) for d, _, fs in os.walk(f"{run_dir}/shards") for f in fs if f.endswith(".parquet")
    )
    assert len(files) % 2 == 0
    users = UserTable.load(f"{run_dir}/users")
    ranks = [RankData.load(f"{run_dir}/shards", r, 2, 4, users) for r in (0, 1)]
    assert sum(r.n for r in ranks) == N_USERS and all(r.n > 0 for r in ranks)
    seqs = sorted(tuple(r.values[r.offsets[i] : r.offsets[i + 1]]) for r in ranks for i in range(r.n))
    expected = sorted(tuple(users.train_values[users.train_offsets[i] : users.train_offsets[i + 1]]) for i in range(N_USERS))
    assert seqs == expected
    # Similar users map to rows of the user table, without the user itself, at most k.
    nb = ranks[0].neighbors
    assert nb.shape[1] == TINY.distill_neighbors and np.all(nb >= 0)
    batch = ranks[0].batch(np.arange(4), np.random.default_rng(0), N_ITEMS, TINY.max_len, False, 0.5)
    assert batch["neighbor_index"].max() < batch["neighbor_seqs"].shape[0]
    assert np.all((batch["pos"] > 0) == (batch["neg"] > 0))


@pytest.mark.spark
@pytest.mark.slow
def test_single_run_saves_registers_and_reloads_identically(data_wh, prepared):
    result = run_train(data_wh, "sasrec", TINY)
    assert result.epochs_run == 3 and result.processes == 1 and 0 <= result.valid_ndcg10 <= 1
    assert "sasrec" in str(result)
    for name in ("weights.pt", "config.json", "item_ids.json", "metrics.json"):
        assert os.path.isfile(os.path.join(result.path, name))
    config = json.loads(open(os.path.join(result.path, "config.json")).read())
    assert config["model"] == "sasrec" and config["hyperparameters"]["hidden"] == HIDDEN
    # The serving popularity penalty was chosen on validation, by the tolerance rule, and saved.
    calibration = json.loads(open(os.path.join(result.path, "metrics.json")).read())["exposure_calibration"]
    floor = (1 - TINY.exposure_tolerance) * calibration["grid"][0]["ndcg10"]
    assert f"hubness penalty {result.exposure_penalty:g}" in str(result)
    assert result.exposure_adjustment == calibration["kind"] == config["exposure_adjustment"]["kind"] == "hubness"
    assert result.exposure_penalty == config["exposure_adjustment"]["penalty"] == calibration["penalty"] == max(
        g["penalty"] for g in calibration["grid"] if g["ndcg10"] >= floor
    )
    assert config["popularity_penalty"] == 0.0  # the older key holds the popularity part only
    hubness = np.load(os.path.join(result.path, "item_hubness.npy"))
    assert hubness.shape == (len(loaded_ids(result.path)),) and hubness[0] == 0 and np.isfinite(hubness).all()
    registered = data_wh.read(S.MODELS).filter("model = 'sasrec'").collect()
    assert result.version in {r["model_version"] for r in registered}
    assert not os.listdir(os.path.join(data_wh.root, "_train"))  # the run folder is gone

    loaded = load_model(data_wh, "sasrec")  # the latest
    assert loaded.version == result.version and loaded.item_ids[1] == "i1" and loaded.item_ids[0] == ""
    assert not loaded.module.training
    histories = [list(range(1, 10, 3)), [5, 8]]
    again = load_model(data_wh, "sasrec", version=result.version)
    assert loaded.user_vectors(histories).shape == (2, HIDDEN)
    assert torch.equal(
        loaded.user_vectors(histories) @ loaded.item_vectors().T,
        again.user_vectors(histories) @ again.item_vectors().T,
    )
    # The reloaded model scores the validation users exactly as it did when it was saved.
    run_dir, _ = prepared
    validation = ValidationSet.build(UserTable.load(f"{run_dir}/users"), N_ITEMS, TINY.max_len, TINY.seed, 100)
    ndcg, hr = validation.evaluate(loaded.module, protocols=("sampled", "full"))[TINY.validate]
    assert ndcg == pytest.approx(result.valid_ndcg10, abs=1e-12)
    assert hr == pytest.approx(result.valid_hr10, abs=1e-12)


@pytest.mark.spark
@pytest.mark.slow
def test_same_seed_same_result(data_wh):
    cfg = dataclasses.replace(TINY, epochs=1)
    a = run_train(data_wh, "sasrec", cfg)
    b = run_train(data_wh, "sasrec", cfg)
    assert a.version != b.version
    sa, sb = _state(a.path), _state(b.path)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    c = run_train(data_wh, "sasrec", dataclasses.replace(cfg, seed=8))
    sc = _state(c.path)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.spark
@pytest.mark.slow
def test_early_stopping_with_patience(data_wh):
    # lr 0: validation never improves after epoch 1, so training stops after 1 + patience.
    result = run_train(data_wh, "sasrec", dataclasses.replace(TINY, lr=0.0, epochs=50, patience=2))
    metrics = json.loads(open(os.path.join(result.path, "metrics.json")).read())
    assert result.best_epoch == 1 and result.epochs_run == 3 and metrics["stopped_early"]
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.parametrize("views, gate", [(1, "none"), (2, "none"), (2, "popularity")])
def test_llmesr_run_carries_the_encoders_pca_map(data_wh, views, gate):
    from longtail.encoders.pca import load_pca

    run_train(data_wh, "llmesr_bert4rec", dataclasses.replace(TINY, epochs=1, semantic_view=views == 2, view_gate=gate))
    model = load_model(data_wh, "llmesr_bert4rec")
    if gate == "popularity":  # the buckets of the training counts travel with the saved model
        stats = data_wh.read("item_stats").select("item_idx", "popularity").collect()
        expected = {r.item_idx: min(7, int(np.floor(np.log2(1 + r.popularity)))) for r in stats}
        assert {i: int(model.module.item_gate.bucket[i]) for i in expected} == expected
    # New items are placed through the very map encode fitted (no refit of its own).
    saved = load_pca(data_wh.root, "m")
    view = model.module.views[0]
    assert np.array_equal(view.pca_components.numpy(), saved.components)
    assert np.array_equal(view.pca_mean.numpy(), saved.mean)
    assert model.config["encoder"] == "m"  # which text encoder new items must go through
    assert model.item_vectors().shape == (N_ITEMS + 1, views * HIDDEN)
    # Items known only from their text are placed in every view (the collaborative one through the map).
    assert model.item_vectors_from_text(np.zeros((2, LLM_DIM), dtype=np.float32)).shape == (2, views * HIDDEN)


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.parametrize(("loss", "validate", "precision"), [
    ("bce", "sampled", "float32"), ("ce", "full", "float32"), ("sampled_softmax", "full", "float32"),
    ("sampled_softmax", "full", "bfloat16"),
])
def test_each_loss_learns_the_walk_under_full_ranking(data_wh, prepared, loss, validate, precision):
    # Users walk the catalogue in steps of 3, so the next item is learnable; a random ranking puts
    # the validation item in the top 10 of the 130 items for about 10/130 of the users. The
    # bfloat16 run also updates its item table row-wise (train.item_updates: sparse).
    updates = "sparse" if precision == "bfloat16" else "auto"
    cfg = dataclasses.replace(TINY, loss=loss, validate=validate, epochs=8, patience=8, lr=0.01, negatives=32,
                              precision=precision, item_updates=updates)
    result = run_train(data_wh, "sasrec", cfg)
    metrics = json.loads(open(os.path.join(result.path, "metrics.json")).read())
    assert metrics["item_updates"] == ("sparse" if updates == "sparse" else "dense")  # auto: dense at 130 items
    history = metrics["history"]
    # Selection on the chosen protocol; full selection records the sampled figures beside it.
    assert ("valid_full_ndcg10" in history[-1]) == (validate == "full") and "valid_sampled_ndcg10" in history[-1]
    assert result.valid_ndcg10 == pytest.approx(max(h[f"valid_{validate}_ndcg10"] for h in history))
    run_dir, _ = prepared
    validation = ValidationSet.build(UserTable.load(f"{run_dir}/users"), N_ITEMS, TINY.max_len, TINY.seed, 100)
    model = load_model(data_wh, "sasrec", version=result.version)
    _, full_hr = validation.evaluate(model.module, protocols=("full",))["full"]
    assert full_hr > 3 * 10 / N_ITEMS, f"{loss}: full HR@10 {full_hr:.3f}"


@pytest.mark.parametrize(("setting", "units", "expected"), [
    ("auto", True, "bfloat16"), ("auto", False, "float32"), ("float32", True, "float32"),
    ("bfloat16", False, "bfloat16"), (None, True, "float32"),  # a model saved before the key
])
def test_step_precision_auto_takes_bfloat16_only_where_the_cpu_has_its_units(monkeypatch, setting, units, expected):
    import longtail.encoders.text as text
    from longtail.stages.train.worker import step_precision

    monkeypatch.setattr(text, "cpu_has_bf16_units", lambda: units)
    assert step_precision(setting, "cpu") == expected


def test_negative_sampler_draws_and_log_probabilities():
    rng = np.random.default_rng(0)
    uniform = NegativeSampler(50, 4000)
    draws = uniform.draw(rng)
    assert draws.min() >= 1 and draws.max() <= 50 and uniform.logq is None
    popularity = np.zeros(51, dtype=np.int64)
    popularity[1] = 99  # item 1 is drawn 100x as often as each other item (counts + 1)
    sampler = NegativeSampler(50, 20000, "popularity", popularity, logq=True)
    share = np.mean(sampler.draw(rng) == 1)
    assert share == pytest.approx(100 / 149, abs=0.02)
    assert sampler.logq[0] == 0 and sampler.logq[1] == pytest.approx(np.log(100 / 149), rel=1e-5)
    with pytest.raises(ValueError, match="train.negatives"):
        NegativeSampler(50, 0)


def test_batches_carry_what_each_loss_needs():
    data = RankData((np.array([3, 4, 5, 6, 7, 8]), np.array([0, 3, 6])), None, None)
    rng = np.random.default_rng(0)
    ids = np.array([0, 1])
    assert {"seqs", "pos", "neg"} == data.batch(ids, rng, 20, 5, False, 0.5, loss="bce").keys()
    assert {"seqs", "pos"} == data.batch(ids, rng, 20, 5, False, 0.5, loss="ce").keys()
    batch = data.batch(ids, rng, 20, 5, False, 0.5, NegativeSampler(20, 7, logq=True), loss="sampled_softmax")
    assert batch["negatives"].shape == (7,) and batch["logq"].shape == (21,)


def test_bucketed_order_keeps_rows_and_groups_similar_lengths():
    rng = np.random.default_rng(0)
    lengths_of = rng.integers(1, 200, size=1000)
    order = rng.permutation(1000)
    out = bucketed_order(order, lengths_of[order], 32, 8, np.random.default_rng(1))
    assert sorted(out.tolist()) == list(range(1000))
    batches = [out[i : i + 32] for i in range(0, 1000, 32)]
    assert all(len(b) == 32 for b in batches[:-1]) and len(batches[-1]) == 1000 % 32
    spread = np.mean([np.ptp(lengths_of[b]) for b in batches[:-1]])
    assert spread < 0.25 * np.ptp(lengths_of)


# --------------------------------------------------------------------------- bad input


@pytest.mark.spark
def test_unknown_model_name(warehouse):
    with pytest.raises(ModelNotFoundError, match="valid models: .*llmesr_sasrec"):
        run_train(warehouse, "sasrecc", TINY)
    with pytest.raises(ModelNotFoundError, match="sasrecc"):
        load_model(warehouse, "sasrecc")
    with pytest.raises(ModelNotFoundError, match="no trained model yet"):
        load_model(warehouse, "sasrec")


@pytest.mark.spark
def test_unknown_version(spark, warehouse):
    import datetime as dt

    row = ("sasrec", "20240101T000000000Z-abcdef12", "/nowhere", dt.datetime(2024, 1, 1), 1, 0.1, 0.2, 1.0, 1, 7)
    warehouse.write(spark.createDataFrame([row], S.MODELS_SCHEMA), S.MODELS)
    with pytest.raises(ModelNotFoundError, match="no version '19990101'"):
        load_model(warehouse, "sasrec", version="19990101")
    with pytest.raises(ModelNotFoundError, match="llmesr_gru4rec"):
        load_model(warehouse, "llmesr_gru4rec")


@pytest.mark.spark
def test_empty_training_table(spark, warehouse):
    _write_inputs(spark, warehouse, n_users=4)
    warehouse.write(spark.createDataFrame([], S.USER_SEQUENCES_SCHEMA), S.USER_SEQUENCES)
    with pytest.raises(InputError, match="user_sequences: no users"):
        run_train(warehouse, "sasrec", TINY)
    assert not warehouse.exists(S.MODELS)


@pytest.mark.spark
def test_missing_embeddings_are_named(spark, warehouse):
    _write_inputs(spark, warehouse, n_users=8, drop_embedding={"i5", "i17", "i99"})
    with pytest.raises(InputError) as err:
        run_train(warehouse, "llmesr_sasrec", TINY)
    message = str(err.value)
    assert "item_embeddings" in message and "3 of 130" in message and "i17" in message and "i5" in message
    assert not warehouse.exists(S.MODELS)


@pytest.mark.spark
def test_a_pca_map_of_other_embeddings_is_refused(spark, warehouse):
    _write_inputs(spark, warehouse, n_users=8)
    # item_embeddings rewritten after the map was saved: the map no longer describes them.
    emb = warehouse.read(S.ITEM_EMBEDDINGS).collect()
    warehouse.write(spark.createDataFrame(emb, S.ITEM_EMBEDDINGS_SCHEMA), S.ITEM_EMBEDDINGS)
    with pytest.raises(InputError, match="rerun `longtail encode`"):
        run_train(warehouse, "llmesr_sasrec", TINY)
    assert not warehouse.exists(S.MODELS)


@pytest.mark.spark
def test_pca_width_must_match_hidden(data_wh):
    with pytest.raises(LongtailError, match="train.hidden"):
        run_train(data_wh, "llmesr_sasrec", dataclasses.replace(TINY, hidden=16))


@pytest.mark.spark
def test_cluster_mode_checks_task_slots_first(data_wh):
    # The test session is local[2]: a 3-task barrier stage would retry for ~10 minutes.
    with pytest.raises(EnvironmentProblem, match="needs 3 concurrent task slots"):
        run_train(data_wh, "sasrec", dataclasses.replace(TINY, mode="cluster", processes=3))


# --------------------------------------------------------------------------- distributed


@pytest.mark.spark
@pytest.mark.slow
def test_two_processes_with_torch_distributor(data_wh):
    # The dual view, its item table updated row-wise: DDP (gloo) all-reduces the sparse gradients.
    # Dense updates across ranks run in the two-executor lane (tests/deploy).
    cfg = dataclasses.replace(TINY, mode="local", processes=2, epochs=2, semantic_view=True, item_updates="sparse")
    result = run_train(data_wh, "llmesr_sasrec", cfg)
    assert result.processes == 2 and result.epochs_run == 2 and result.mode == "local"
    metrics = json.loads(open(os.path.join(result.path, "metrics.json")).read())
    assert metrics["item_updates"] == "sparse"
    # Both ranks ran the same steps over disjoint halves: every training user once per epoch.
    assert metrics["sequences_per_epoch"] == N_USERS
    model = load_model(data_wh, "llmesr_sasrec", result.version)
    assert model.user_vectors([[1, 4, 7]]).shape == (1, 2 * HIDDEN)


@pytest.mark.gpu
def test_gpu_training_step():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    from longtail.models import build_model

    model = build_model("sasrec", 20, dict(hidden=8, layers=1, heads=1, dropout=0.0, max_len=5, alpha=0.0,
                                           cross_attention=False)).cuda()
    seqs = torch.tensor([[0, 1, 2, 3]], device="cuda")
    batch = {"seqs": seqs, "pos": torch.tensor([[0, 2, 3, 4]], device="cuda"),
             "neg": torch.tensor([[0, 9, 9, 9]], device="cuda")}
    model.loss(batch).backward()
    assert model.user_vectors(seqs).device.type == "cuda"


class _OneScore(torch.nn.Module):
    """Every user scores item 1 at 1.0 and every other item at 0.5 (a one-dimensional dot product)."""

    def __init__(self, n_items: int) -> None:
        super().__init__()
        self.table = torch.full((n_items + 1, 1), 0.5)
        self.table[1] = 1.0

    def item_vectors(self):
        return self.table

    def user_vectors(self, seqs):
        return torch.ones((seqs.shape[0], 1))


def loaded_ids(path: str) -> list[str]:
    return json.loads(open(os.path.join(path, "item_ids.json")).read())


def test_validation_users_are_a_seeded_sample_when_limited():
    n_users = 30
    users = UserTable(np.arange(1, n_users + 1), (np.arange(1, n_users + 1), np.arange(n_users + 1)),
                      np.full(n_users, 5, dtype=np.int64), (np.arange(1, 2 * n_users + 1), np.arange(0, 2 * n_users + 1, 2)))
    everyone = ValidationSet.build(users, 40, max_len=4, seed=3, negatives=5)
    sample = ValidationSet.build(users, 40, max_len=4, seed=3, negatives=5, limit=7)
    again = ValidationSet.build(users, 40, max_len=4, seed=3, negatives=5, limit=7)
    assert everyone.n == n_users and sample.n == 7 and len(set(sample.rows)) == 7
    assert sample.rows.tolist() == again.rows.tolist() and set(sample.rows) < set(everyone.rows)
    assert ValidationSet.build(users, 40, max_len=4, seed=4, negatives=5, limit=7).rows.tolist() != sample.rows.tolist()


def test_hubness_calibration_lowers_the_item_on_top_of_every_list_by_its_own_scores():
    n_items, n_users = 20, 6
    histories = [[2 + u, 3 + u, 1, 9] for u in range(n_users)]
    values = np.concatenate([np.asarray(h) for h in histories])
    train_values = np.concatenate([np.asarray(h[:2]) for h in histories])
    users = UserTable(np.arange(1, n_users + 1), (train_values, np.arange(0, 2 * n_users + 1, 2)),
                      np.ones(n_users, dtype=np.int64), (values, np.arange(0, 4 * n_users + 1, 4)))
    validation = ValidationSet.build(users, n_items, max_len=4, seed=0, negatives=5)
    # No popularity at all: the hubness comes from the scores. Item 1 scores 1.0 for everyone,
    # the rest 0.5; under a penalty p item 1 keeps its lead while (1 - p) > 0.5 (1 - p).
    got = validation.calibrate_exposure(_OneScore(n_items), np.zeros(n_items + 1), tolerance=0.01, kind="hubness")
    assert got.kind == "hubness" and got.bias.shape == (n_items + 1,)
    assert got.bias[0] == 0.0 and got.bias[1] == 1.0 and np.allclose(got.bias[2:], 0.5)
    assert got.penalty == 0.75 and [g["penalty"] for g in got.grid][-1] == 1.0  # tied at 1.0: below the floor
    with pytest.raises(ConfigError, match="train.exposure_adjustment"):
        validation.calibrate_exposure(_OneScore(n_items), np.zeros(n_items + 1), tolerance=0.01, kind="zipf")


def test_exposure_calibration_takes_the_largest_penalty_within_the_tolerance_and_stops_below_it():
    from longtail.stages.train.validation import EXPOSURE_PENALTIES

    n_items, n_users = 20, 6
    # Every user's validation item is item 1: first by score, and by far the most popular
    # (log count 3). Under a penalty p its score is 1 - 3p against 0.5 for the rest, so it
    # drops out of the top 10 (NDCG 0) as soon as p > 1/6.
    histories = [[2 + u, 3 + u, 1, 9] for u in range(n_users)]
    values = np.concatenate([np.asarray(h) for h in histories])
    offsets = np.arange(0, 4 * n_users + 1, 4)
    train_values = np.concatenate([np.asarray(h[:2]) for h in histories])
    users = UserTable(np.arange(1, n_users + 1), (train_values, np.arange(0, 2 * n_users + 1, 2)),
                      np.ones(n_users, dtype=np.int64), (values, offsets))
    validation = ValidationSet.build(users, n_items, max_len=4, seed=0, negatives=5)
    log_counts = np.zeros(n_items + 1)
    log_counts[1] = 3.0
    strict = validation.calibrate_exposure(_OneScore(n_items), log_counts, tolerance=0.01)
    assert strict.penalty == 0.1
    by_penalty = {g["penalty"]: g for g in strict.grid}
    assert by_penalty[0.0]["ndcg10"] == 1.0 and by_penalty[0.2]["ndcg10"] == 0.0
    # The scan stopped at the first penalty below the floor: the larger ones were not ranked.
    assert [g["penalty"] for g in strict.grid] == [0.0, 0.1, 0.2]
    # The slots move off the popular item as the penalty grows.
    assert by_penalty[0.0]["avg_log_popularity10"] > by_penalty[0.2]["avg_log_popularity10"]
    assert validation.calibrate_exposure(_OneScore(n_items), log_counts, tolerance=1.0).penalty == max(EXPOSURE_PENALTIES)


@pytest.mark.spark
@pytest.mark.slow
def test_non_finite_steps_are_skipped_and_a_diverged_run_keeps_its_best_epoch(data_wh, monkeypatch):
    from longtail.models.layers import SequentialRecommender

    loss = SequentialRecommender.loss
    steps = -(-N_USERS // TINY.batch_size)
    calls = {"n": 0}

    def nan_steps(self, batch):
        # One NaN step in epoch 2, then NaN at every step from epoch 4 on.
        calls["n"] += 1
        value = loss(self, batch)
        return value * float("nan") if calls["n"] == steps + 1 or calls["n"] > 3 * steps else value

    monkeypatch.setattr(SequentialRecommender, "loss", nan_steps)
    result = run_train(data_wh, "sasrec", dataclasses.replace(TINY, epochs=6, grad_clip=1e-6))
    history = json.loads(open(os.path.join(result.path, "metrics.json")).read())["history"]
    assert [h["skipped_steps"] for h in history] == [0, 1, 0, steps]
    # The lone NaN step is skipped and training goes on; an epoch with no finite step stops it,
    # keeping a validated finite model.
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] and history[-1]["diverged"]
    assert all(np.isfinite(h["loss"]) for h in history[:3]) and "diverged" not in history[2]
    assert result.best_epoch in (1, 2, 3) and 0 <= result.valid_ndcg10 <= 1
    assert torch.isfinite(load_model_dir(result.path).item_vectors()).all()
    # A clip norm this small clips every step that is taken.
    assert [h["clipped_steps"] for h in history[:3]] == [steps, steps - 1, steps]
