"""``longtail evaluate`` against a brute-force recomputation on a tiny warehouse."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from longtail.core import schemas
from longtail.core.config import EvaluateConfig, HybridConfig
from longtail.core.errors import InputError, ModelNotFoundError
from longtail.ranking.metrics import gini, hit_rate, list_diversities, mrr, ndcg, sample_negatives, target_ranks
from longtail.stages.evaluate import run_evaluate
from pyspark import cloudpickle

pytestmark = pytest.mark.spark
cloudpickle.register_pickle_by_value(sys.modules[__name__])

N_ITEMS, N_USERS, MAX_LEN = 30, 24, 5
CFG = EvaluateConfig(negatives=8, seed=11, als_rank=4, als_max_iter=4)
RNG = np.random.default_rng(5)
HISTORIES = {
    u: RNG.choice(np.arange(1, 16) if u % 2 else np.arange(16, 31), size=int(RNG.integers(5, 10)), replace=False).tolist()
    for u in range(1, N_USERS + 1)
}
TAIL_ITEMS = set(range(11, 31))
TAIL_USERS = {u for u in HISTORIES if u % 3 == 0}
EMB = RNG.normal(size=(N_ITEMS + 1, 6)).astype(np.float32)
TABLE = torch.from_numpy(RNG.normal(size=(N_ITEMS + 1, 8)).astype(np.float32))
TABLE[0] = 0

CONTRACT_SEGMENTS = {"overall", "tail_item", "head_item", "tail_user", "head_user"}
#: Table rows of one report: 5 segments x (3 sampled + 4 full metrics), 6 catalogue figures overall and
#: for tail and head users, 10 deciles of slots and of interactions.
ROWS_PER_REPORT = 5 * (3 + 4) + 3 * 6 + 2 * 10


class FakeTrained:
    """``TrainedModel`` interface: mean of the last ``max_len`` items' vectors."""

    name, version, path, max_len = "fake_model", "v1", "/nowhere", MAX_LEN
    item_ids = [""] + [f"it{i}" for i in range(1, N_ITEMS + 1)]
    module = torch.nn.Identity()

    def user_vectors(self, histories):
        mask = (histories > 0).float()[..., None]
        return (TABLE[histories] * mask).sum(1) / mask.sum(1).clamp_min(1)

    def item_vectors(self):
        return TABLE


def load_fake(wh, name, version=None):
    if name != "fake_model" or version not in (None, "v1"):
        raise ModelNotFoundError(f"model {name!r}: no version {version!r}")
    return FakeTrained()


@pytest.fixture(scope="module")
def inputs(spark, tmp_path_factory):
    from longtail.core.tables import Warehouse

    wh = Warehouse(spark, str(tmp_path_factory.mktemp("evaluate") / "warehouse"))
    seqs = [(f"u{u}", u, h, h[:-2], h[-2], h[-1]) for u, h in HISTORIES.items()]
    wh.write(spark.createDataFrame(seqs, schemas.USER_SEQUENCES_SCHEMA), schemas.USER_SEQUENCES)
    pop = _train_popularity()
    stats = [(f"it{i}", i, int(pop[i]), "tail" if i in TAIL_ITEMS else "head") for i in range(1, N_ITEMS + 1)]
    wh.write(spark.createDataFrame(stats, schemas.ITEM_STATS_SCHEMA), schemas.ITEM_STATS)
    users = [(f"u{u}", u, len(h), "tail" if u in TAIL_USERS else "head") for u, h in HISTORIES.items()]
    wh.write(spark.createDataFrame(users, schemas.USER_STATS_SCHEMA), schemas.USER_STATS)
    emb = [(f"it{i}", EMB[i].tolist(), "fake", "h") for i in range(1, N_ITEMS + 1)]
    wh.write(spark.createDataFrame(emb, schemas.ITEM_EMBEDDINGS_SCHEMA), schemas.ITEM_EMBEDDINGS)
    return wh


@pytest.fixture()
def wh(inputs, warehouse):
    shutil.copytree(inputs.root, warehouse.root)
    return warehouse


def _train_popularity() -> np.ndarray:
    pop = np.zeros(N_ITEMS + 1)
    for h in HISTORIES.values():
        for i in h[:-2]:
            pop[i] += 1
    return pop


def _brute_force(score_fn, cfg=CFG):
    """Per-user sampled and full ranks and full top-10 lists, straight from the definitions."""
    rows = []
    for u, h in HISTORIES.items():
        inputs, target = h[:-1], h[-1]
        scores = np.asarray(score_fn(inputs), dtype=np.float64)  # [N_ITEMS + 1]
        n = min(cfg.negatives, N_ITEMS - len(set(h)))  # all unseen items when there are too few
        negs = sample_negatives(np.random.default_rng([cfg.seed, u]), N_ITEMS, np.asarray(h), n)
        sampled = target_ranks(scores[np.concatenate([[target], negs])][None, :], 0)[0]
        full_scores = scores.copy()
        full_scores[0] = -np.inf
        full_scores[[i for i in inputs if i != target]] = -np.inf
        full = target_ranks(full_scores[None, :], target)[0]
        top = np.argsort(-full_scores, kind="stable")[:10]
        rows.append((u, target, sampled, full, top))
    return rows


def _expected_report(rows, with_catalog: bool):
    masks = {
        "overall": lambda u, t: True,
        "tail_item": lambda u, t: t in TAIL_ITEMS,
        "head_item": lambda u, t: t not in TAIL_ITEMS,
        "tail_user": lambda u, t: u in TAIL_USERS,
        "head_user": lambda u, t: u not in TAIL_USERS,
    }
    out = {"sampled": {}, "full": {}}
    for seg, keep in masks.items():
        s = np.array([r[2] for r in rows if keep(r[0], r[1])])
        f = np.array([r[3] for r in rows if keep(r[0], r[1])])
        out["sampled"][seg] = {"hr@10": hit_rate(s, 10), "ndcg@10": ndcg(s, 10), "mrr@10": mrr(s, 10)}
        out["full"][seg] = {"hr@10": hit_rate(f, 10), "ndcg@10": ndcg(f, 10), "mrr@10": mrr(f, 10),
                            "recall@20": hit_rate(f, 20)}
    if with_catalog:
        lists = np.stack([r[4] for r in rows])
        flat = lists.ravel()
        out["catalog"] = {
            "coverage@10": len(set(flat.tolist())) / N_ITEMS,
            "tail_coverage@10": len(set(flat.tolist()) & TAIL_ITEMS) / len(TAIL_ITEMS),
            "diversity@10": float(list_diversities(lists, EMB).mean()),
            "gini@10": gini(np.bincount(flat, minlength=N_ITEMS + 1)[1:]),
            "tail_share@10": float(np.isin(flat, sorted(TAIL_ITEMS)).mean()),
            "avg_popularity@10": float(_train_popularity()[flat].mean()),
        }
    return out


def _assert_close(got, want):
    for protocol in ("sampled", "full"):
        for seg in CONTRACT_SEGMENTS:
            for metric, value in want[protocol][seg].items():
                assert got["protocols"][protocol][seg][metric] == pytest.approx(value, abs=1e-9), (protocol, seg, metric)
    if "catalog" in want:
        for metric, value in want["catalog"].items():
            assert got["catalog"][metric] == pytest.approx(value, abs=1e-6), metric


def _shape(obj):
    return {k: _shape(v) for k, v in obj.items()} if isinstance(obj, dict) else type(obj).__name__


@pytest.mark.slow
def test_popularity_report_matches_brute_force_and_the_contract(wh):
    # 22 negatives: users with 9 items have only 21 unseen ones and are ranked against all of them.
    cfg = EvaluateConfig(negatives=22, seed=CFG.seed)
    assert min(N_ITEMS - len(h) for h in HISTORIES.values()) < 22 < max(N_ITEMS - len(h) for h in HISTORIES.values())
    report = run_evaluate(wh, "popularity", cfg, user_batch=5, item_chunk=7)
    on_disk = json.loads(Path(wh.root, "_reports", "evaluation-popularity.json").read_text())
    assert on_disk == report.as_dict()
    # The contract's shape, key for key.
    seg = {"hr@10": "float", "ndcg@10": "float", "mrr@10": "float"}
    full_seg = {**seg, "recall@20": "float"}
    catalog = {f"{m}@10": "float" for m in ("coverage", "tail_coverage", "diversity", "gini", "tail_share",
                                              "avg_popularity")}
    assert _shape(on_disk) == {
        "model": "str", "model_version": "str", "k": "int",
        "dataset": {"users": "int", "items": "int", "interactions": "int", "evaluated_users": "int"},
        "protocols": {
            "sampled": {"negatives": "int", **{s: seg for s in CONTRACT_SEGMENTS}},
            "full": {s: full_seg for s in CONTRACT_SEGMENTS},
        },
        "catalog": catalog,
        "catalog_by_segment": {"tail_user": catalog, "head_user": catalog},
        "exposure": {"slots": "list", "interactions": "list"},
        "popularity_penalty": "float",
        "exposure_adjustment": "NoneType",  # a baseline is never adjusted
        "similar_items": "NoneType",  # no similar_items table in this warehouse (added with issue 25)
    }
    assert on_disk["dataset"] == {"users": N_USERS, "items": N_ITEMS, "evaluated_users": N_USERS,
                                  "interactions": sum(len(h) for h in HISTORIES.values())}
    assert on_disk["protocols"]["sampled"]["negatives"] == 22
    pop = _train_popularity()
    _assert_close(on_disk, _expected_report(_brute_force(lambda inputs: pop, cfg), with_catalog=False))
    rows = wh.read(schemas.EVALUATION).toPandas()
    assert set(rows["protocol"]) == {"sampled", "full", "catalog", "exposure"}
    assert len(rows) == ROWS_PER_REPORT and (rows["model"] == "popularity").all()


@pytest.mark.slow
def test_trained_model_ranks_lists_hybrid_and_table_rows(wh):
    def model_scores(inputs):
        h = inputs[-MAX_LEN:]
        return (TABLE[h].mean(0) @ TABLE.T).numpy()

    want = _expected_report(_brute_force(model_scores), with_catalog=True)
    # MMR with lambda 1 is the plain ranking: the hybrid variant must equal the model.
    report = run_evaluate(wh, "fake_model", CFG, hybrid=HybridConfig(mmr_lambda=1.0, mmr_candidates=25),
                          model_loader=load_fake)
    _assert_close(report.report, want)
    variant = report.variants["fake_model+hybrid"]
    _assert_close(variant, want)
    assert Path(report.variant_paths["fake_model+hybrid"]).is_file()
    assert "effect vs plain" in str(report)
    rows = wh.read(schemas.EVALUATION).toPandas()
    assert set(rows["model"]) == {"fake_model", "fake_model+hybrid"}
    first = rows.groupby("model")["evaluated_at"].max()
    # evaluation is append-only: a rerun adds the model's rows again, later; the variant's stay as they were.
    run_evaluate(wh, "fake_model", CFG, model_loader=load_fake)
    rows = wh.read(schemas.EVALUATION).toPandas()
    assert len(rows) == 3 * ROWS_PER_REPORT
    assert rows.groupby("model")["evaluated_at"].nunique().to_dict() == {"fake_model": 2, "fake_model+hybrid": 1}
    again = rows.groupby("model")["evaluated_at"].max()
    assert again["fake_model"] > first["fake_model"] and again["fake_model+hybrid"] == first["fake_model+hybrid"]


class CalibratedFake(FakeTrained):
    """The fake model, saved with the popularity penalty training chose for it."""

    config = {"popularity_penalty": 0.8}


@pytest.mark.slow
def test_a_model_is_evaluated_with_the_popularity_penalty_it_was_trained_with(wh):
    log_pop = np.log1p(_train_popularity())

    def adjusted_scores(inputs):
        h = inputs[-MAX_LEN:]
        return (TABLE[h].mean(0) @ TABLE.T).numpy() - 0.8 * log_pop

    served = run_evaluate(wh, "fake_model", CFG, model_loader=lambda *a, **k: CalibratedFake())
    assert served.report["popularity_penalty"] == 0.8
    assert served.report["exposure_adjustment"] == {"kind": "popularity", "penalty": 0.8}
    _assert_close(served.report, _expected_report(_brute_force(adjusted_scores), with_catalog=True))
    # A number overrides the model's own; 0 is the unadjusted model, with more popular lists.
    raw = run_evaluate(wh, "fake_model", CFG, model_loader=lambda *a, **k: CalibratedFake(), popularity_penalty=0)
    assert raw.report["popularity_penalty"] == 0.0
    assert raw.report["catalog"]["avg_popularity@10"] > served.report["catalog"]["avg_popularity@10"]


@pytest.mark.slow
def test_a_model_saved_with_the_hubness_adjustment_is_evaluated_with_its_own_item_bias(wh, tmp_path):
    from longtail.core.files import npy_bytes
    from longtail.inference.store import HUBNESS_FILE

    hubness = np.linspace(0.0, 2.0, N_ITEMS + 1).astype(np.float32)  # later items lowered more
    hubness[0] = 0.0
    (tmp_path / HUBNESS_FILE).write_bytes(npy_bytes(hubness))

    class HubnessFake(FakeTrained):
        path = str(tmp_path)
        config = {"exposure_adjustment": {"kind": "hubness", "penalty": 0.5}, "popularity_penalty": 0.0}

    def adjusted_scores(inputs):
        h = inputs[-MAX_LEN:]
        return (TABLE[h].mean(0) @ TABLE.T).numpy() - 0.5 * hubness

    served = run_evaluate(wh, "fake_model", CFG, model_loader=lambda *a, **k: HubnessFake())
    assert served.report["exposure_adjustment"] == {"kind": "hubness", "penalty": 0.5}
    assert served.report["popularity_penalty"] == 0.0
    _assert_close(served.report, _expected_report(_brute_force(adjusted_scores), with_catalog=True))

    class Missing(HubnessFake):
        path = str(tmp_path / "elsewhere")

    with pytest.raises(ModelNotFoundError, match=HUBNESS_FILE):
        run_evaluate(wh, "fake_model", CFG, model_loader=lambda *a, **k: Missing())


@pytest.mark.slow
def test_max_users_ranks_the_same_seeded_sample_on_every_run(wh):
    # Popularity scores, so a user's ranks depend only on the user: the sample's figures are
    # the brute-force figures over exactly the users it kept.
    cfg = EvaluateConfig(negatives=8, seed=CFG.seed, max_users=10, protocols=["full"])
    first = run_evaluate(wh, "popularity", cfg).report
    again = run_evaluate(wh, "popularity", cfg).report
    assert first == again
    kept = first["dataset"]["evaluated_users"]
    assert 3 <= kept < N_USERS and first["dataset"]["users"] == N_USERS
    pop = _train_popularity()
    rows = _brute_force(lambda inputs: pop, cfg)
    # (Every user is ranked below max_users: the contract test's evaluated_users == N_USERS.)
    # Some subset of the users of that size gives the sample's hit rate (a sum of kept hits).
    hits = sorted(int(r[3] < 10) for r in rows)
    got = round(first["protocols"]["full"]["overall"]["hr@10"] * kept)
    assert sum(hits[:kept]) <= got <= sum(hits[-kept:])


def test_bad_requests(wh):
    with pytest.raises(ModelNotFoundError):
        run_evaluate(wh, "fake_model", CFG, version="v2", model_loader=load_fake)
    with pytest.raises(ModelNotFoundError):
        run_evaluate(wh, "sasrec", CFG)  # the real loader: nothing trained here
    with pytest.raises(InputError, match="evaluate.protocols"):
        run_evaluate(wh, "popularity", EvaluateConfig(protocols=["sampled", "leave-two-out"]))
    with pytest.raises(InputError, match="evaluate.negatives"):
        run_evaluate(wh, "popularity", EvaluateConfig(negatives=0))
    assert not wh.exists(schemas.EVALUATION)


@pytest.mark.slow
def test_als_and_a_full_hybrid(wh):
    als = run_evaluate(wh, "als", CFG)
    assert als.model_version == "rank4-iter4-reg0.1-alpha1-seed11"
    full = als.report["protocols"]["full"]["overall"]
    assert 0.0 <= full["hr@10"] <= full["recall@20"] <= 1.0
    # Two clusters of items: ALS beats chance by far on the full catalogue.
    assert full["hr@10"] > 2 * 10 / N_ITEMS
    hybrid = HybridConfig(als_weight=0.5, content_weight=0.5, mmr_lambda=0.5, mmr_candidates=20)
    report = run_evaluate(wh, "fake_model", CFG, hybrid=hybrid, model_loader=load_fake)
    variant = report.variants["fake_model+hybrid"]
    assert variant["model_version"] == "v1+model1-als0.5-content0.5-mmr0.5x20"
    assert variant["catalog"] != report.report["catalog"]
