"""``longtail score`` on a tiny warehouse with fake models implementing the TrainedModel interface."""
from __future__ import annotations

import datetime as dt
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from longtail.core import schemas
from longtail.core.config import HybridConfig, ScoreConfig
from longtail.core.errors import InputError, ModelNotFoundError
from longtail.stages.score import run_score
from pyspark import cloudpickle
from pyspark.sql import types as T

pytestmark = pytest.mark.spark

# The fakes below travel to the Python workers by value (the tests folder is not on their path).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

D1, D2 = dt.date(2024, 5, 1), dt.date(2024, 5, 2)

# Items 1..6 are "face" products (embedding near e0), 7..12 "hair" (near e1).
KNOWN = [f"i{i}" for i in range(1, 13)]
HISTORIES = {
    "u1": [1, 2, 3, 4, 5],
    "u2": [7, 8, 9, 10, 11],
    "u3": [1, 7, 2, 8, 3],
    "u4": [2, 3, 4, 9, 10, 12],
}


def _embedding(i: int) -> list[float]:
    base = [1.0, 0.0, 0.0, 0.0] if i <= 6 else [0.0, 1.0, 0.0, 0.0]
    return [b + 0.05 * ((i * 7919 + d * 31) % 11 - 5) / 5 for d, b in enumerate(base)]


class FakeModule(torch.nn.Module):
    """Item vectors = LLM embeddings; with ``text`` it places new items from text too."""

    def __init__(self, table: torch.Tensor, text: bool) -> None:
        super().__init__()
        self.register_buffer("table", table)
        self.supports_text = text

    def item_vectors_from_text(self, llm: torch.Tensor) -> torch.Tensor:
        if not self.supports_text:
            raise TypeError("no semantic view")
        return llm.float()


class FakeTrained:
    """The ``longtail.train.TrainedModel`` interface: mean of the history's item vectors."""

    def __init__(self, name: str, version: str, text: bool, fail_for_item: int | None = None) -> None:
        self.name, self.version, self.path, self.max_len = name, version, "/nowhere", 4
        self.item_ids = [""] + KNOWN
        table = torch.tensor([[0.0] * 4] + [_embedding(i) for i in range(1, 13)])
        self.module = FakeModule(table, text)
        self.fail_for_item = fail_for_item

    def user_vectors(self, histories: torch.Tensor) -> torch.Tensor:
        assert histories.shape[1] == self.max_len  # padded/truncated to the model's length
        if self.fail_for_item is not None and bool((histories == self.fail_for_item).any()):
            raise RuntimeError("worker died")
        mask = (histories > 0).float()[..., None]
        return (self.module.table[histories] * mask).sum(1) / mask.sum(1).clamp_min(1)

    def item_vectors(self) -> torch.Tensor:
        return self.module.table


def loader_for(**models: FakeTrained):
    def load(wh, name, version=None):
        if name not in models or (version is not None and version != models[name].version):
            raise ModelNotFoundError(f"model {name!r}: no version {version!r}")
        return models[name]

    return load


LOADER = loader_for(
    llmesr_fake=FakeTrained("llmesr_fake", "v1", text=True),
    plain_fake=FakeTrained("plain_fake", "v1", text=False),
)


@pytest.fixture(scope="module")
def inputs(spark, tmp_path_factory):
    """The input tables, written once; each test gets its own copy."""
    from longtail.core.tables import Warehouse

    return _write_inputs(Warehouse(spark, str(tmp_path_factory.mktemp("score") / "warehouse")))


@pytest.fixture()
def wh(inputs, warehouse):
    shutil.copytree(inputs.root, warehouse.root)
    return warehouse


def _write_inputs(warehouse):
    spark = warehouse.spark
    seq_rows = [
        (u, n, h, h[:-2], h[-2], h[-1]) for n, (u, h) in enumerate(HISTORIES.items(), start=1)
    ]
    warehouse.write(spark.createDataFrame(seq_rows, schemas.USER_SEQUENCES_SCHEMA), schemas.USER_SEQUENCES)
    popularity = {i: sum(i in h[:-2] for h in HISTORIES.values()) for i in range(1, 13)}
    popularity[6] = 3  # a popular face item nobody in the sequences bought in training
    stats = [(f"i{i}", i, popularity[i], "head" if popularity[i] >= 2 else "tail") for i in range(1, 13)]
    warehouse.write(spark.createDataFrame(stats, schemas.ITEM_STATS_SCHEMA), schemas.ITEM_STATS)
    items = [(f"i{i}", f"item {i}", "", ["face" if i <= 6 else "hair"], "b", {}) for i in range(1, 13)]
    items += [("new_face", "new face cream", "", ["face"], "b", {}), ("new_odd", "odd thing", "", ["tools"], "b", {})]
    warehouse.write(spark.createDataFrame(items, schemas.ITEMS_SCHEMA), schemas.ITEMS)
    emb = [(f"i{i}", _embedding(i), "fake", "h") for i in range(1, 13)]
    emb += [("new_face", [1.0, 0.0, 0.0, 0.0], "fake", "h"), ("new_odd", [0.0, 0.0, 1.0, 0.0], "fake", "h")]
    warehouse.write(spark.createDataFrame(emb, schemas.ITEM_EMBEDDINGS_SCHEMA), schemas.ITEM_EMBEDDINGS)
    # u_hair touched one hair item but was filtered out of user_sequences; u_blank only exists.
    inter = [(u, f"i{i}", dt.datetime(2024, 1, 1), None) for u, h in HISTORIES.items() for i in h]
    inter.append(("u_hair", "i7", dt.datetime(2024, 1, 2), None))
    warehouse.write(spark.createDataFrame(inter, schemas.INTERACTIONS_SCHEMA), schemas.INTERACTIONS)
    warehouse.write(spark.createDataFrame([(u, {}) for u in [*HISTORIES, "u_hair", "u_blank"]], schemas.USERS_SCHEMA), schemas.USERS)
    return warehouse


def _recs(wh, run_date=None):
    df = wh.read(schemas.RECOMMENDATIONS).toPandas()
    if run_date is not None:
        df = df[df["run_date"] == run_date]
    return df


def _lists(df):
    return {u: list(g.sort_values("rank")["item_id"]) for u, g in df.groupby("user_id")}


@pytest.mark.slow
def test_exactly_k_unseen_rows_per_user_new_items_fallbacks_and_run_row(wh):
    report = run_score(wh, "llmesr_fake", ScoreConfig(item_chunk=5, user_batch=2), run_date=D1, top_k=3, model_loader=LOADER)
    recs = _recs(wh)
    assert list(recs.columns) == [f.name for f in schemas.RECOMMENDATIONS_SCHEMA.fields]
    assert set(recs["user_id"]) == {*HISTORIES, "u_hair", "u_blank"}
    for user, group in recs.groupby("user_id"):
        assert sorted(group["rank"]) == [1, 2, 3]
        assert group["item_id"].nunique() == 3
        seen = {f"i{i}" for i in HISTORIES.get(user, [])} | ({"i7"} if user == "u_hair" else set())
        assert not seen & set(group["item_id"]), user
        assert (group.sort_values("rank")["score"].diff().dropna() <= 1e-6).all()  # best first
    assert (recs["model"] == "llmesr_fake").all() and (recs["model_version"] == "v1").all()
    lists = _lists(recs)
    # A new item (text, no interactions) reaches the face buyer through the semantic view.
    assert lists["u1"][0] == "new_face"
    assert "new_face" not in lists["u2"]  # hair buyer
    assert "new_odd" not in lists["u1"] + lists["u4"]  # text unlike anything they buy
    # Users without a usable history: flagged fallbacks, never a crash.
    assert set(recs[recs["fallback"]]["user_id"]) == {"u_hair", "u_blank"}
    # u_hair's fallback stays in the category it knows (hair), i7 (touched) excluded.
    assert set(lists["u_hair"]) <= {f"i{i}" for i in range(8, 13)}
    # u_blank gets global popularity (item_stats): i2 and i6 (3 each) lead.
    assert lists["u_blank"][:2] == ["i2", "i6"]
    assert report.users == 6 and report.fallback_users == 2 and report.new_items == 2
    runs = wh.read(schemas.RECOMMENDATION_RUNS).toPandas()
    assert len(runs) == 1 and runs.loc[0, "users"] == 6 and runs.loc[0, "model_version"] == "v1"
    assert runs.loc[0, "coverage"] == pytest.approx(report.coverage) and 0 < report.coverage <= 1
    assert 0 <= runs.loc[0, "tail_share"] <= 1
    assert runs.loc[0, "finished_at"] >= runs.loc[0, "started_at"]
    assert runs.loc[0, "diversity"] == pytest.approx(report.diversity)


def test_touched_item_ids_map_to_catalogue_idxs_in_the_workers():
    # The exclusions of model users are read as item ids and mapped on the executors, one search
    # per batch: ids outside the catalogue (and padding) drop out, an id listed twice excludes both idxs.
    from longtail.inference.items import SortedIds
    from longtail.stages.score import _catalogue_idxs

    ids = SortedIds(["", "i1", "", "i3", "i1"])
    found = _catalogue_idxs([["i3", "gone", "i1"], None, [], ["i3"]], ids)
    assert [sorted(f) for f in found] == [[1, 3, 4], [], [], [3]]
    assert all(f.dtype == "int64" for f in found)
    assert [f.size for f in _catalogue_idxs([["i1"], None], None)] == [0, 0]


def _dict_fallback(ranked, share, item_ids, categories, seen, k):
    """The fallback list as the dict-based plan built it (before the arrays), for comparison."""
    rank_of = {item_ids[i]: r for r, i in enumerate(ranked)}
    members = {}
    for item_id, listed in categories.items():
        if item_id in rank_of:
            for c in listed:
                members.setdefault(c, []).append(rank_of[item_id])
    members = {c: np.sort(np.asarray(v)) for c, v in members.items()}
    seen_ranks = np.asarray([rank_of[s] for s in seen if s in rank_of], dtype=np.int64)
    cats = {c for s in seen for c in categories.get(s, [])}
    depth = k + len(seen_ranks)
    in_cats = [members[c][:depth] for c in cats if c in members]
    first = np.unique(np.concatenate(in_cats)) if in_cats else np.zeros(0, dtype=np.int64)
    first = first[~np.isin(first, seen_ranks)][:k]
    rest = np.arange(min(len(ranked), depth + len(first)))
    rest = rest[~np.isin(rest, seen_ranks) & ~np.isin(rest, first)][: k - len(first)]
    chosen = np.concatenate([first, rest])
    picked = np.zeros(k, dtype=np.int64)
    picked[: len(chosen)] = ranked[chosen]
    return picked


def test_fallback_plan_of_arrays_gives_the_lists_of_the_dict_plan(warehouse):
    # 300 items in 12 categories (some none, some two, one null entry), 40 of them outside the
    # catalogue (k-core drop-outs: their categories still count), users touching 0-6 items.
    from longtail.inference.catalogue import Catalogue
    from longtail.inference.items import ItemIndex
    from longtail.stages.score import _fallback_plan

    rng = np.random.default_rng(3)
    names = [f"item-{i:03d}" for i in range(300)]
    categories = {n: [f"c{c}" for c in rng.choice(12, size=rng.integers(0, 3), replace=False)] for n in names}
    categories[names[7]] = ["c1", None]
    rows = [(n, None, None, categories[n], None, None) for n in names]
    warehouse.write(warehouse.spark.createDataFrame(rows, schemas.ITEMS_SCHEMA), schemas.ITEMS)
    categories[names[7]] = ["c1"]
    in_catalogue = [""] + names[:260]
    size = len(in_catalogue)
    popularity = rng.integers(0, 50, size=size)
    known = np.ones(size, dtype=bool)
    known[0] = False
    catalogue = Catalogue(ItemIndex(in_catalogue), known, np.zeros(size, dtype=bool), popularity,
                          np.zeros((size, 1), dtype=np.float32), np.zeros(size, dtype=bool), size)
    blocked = np.zeros(size, dtype=bool)
    blocked[[5, 9]] = True
    plan = _fallback_plan(warehouse, catalogue, popularity, blocked)
    for _ in range(200):
        seen = list(rng.choice(names + ["never-listed"], size=rng.integers(0, 7), replace=False))
        got, _scores = plan.list_for(seen, 10)
        want = _dict_fallback(plan.ranked, plan.share, in_catalogue, categories, seen, 10)
        np.testing.assert_array_equal(got, want)
    assert not set(plan.list_for([], 10)[0]) & {5, 9}


def test_plain_backbone_cannot_place_text_only_items(inputs):
    from longtail.inference import ModelScorer, load_catalogue

    catalogue = load_catalogue(inputs)
    assert catalogue.item_ids[13:] == ["new_face", "new_odd"] and catalogue.tail[13:].all()
    llmesr = ModelScorer(FakeTrained("a", "v1", text=True), catalogue)
    plain = ModelScorer(FakeTrained("b", "v1", text=False), catalogue)
    assert llmesr.scorable()[13:].all() and not plain.scorable()[13:].any()
    torch.testing.assert_close(llmesr.item_vectors()[13], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    # histories are remapped, compacted and padded to the model's max_len (the fake asserts it)
    assert llmesr.user_vectors(torch.tensor([[0, 1, 2, 3, 4, 5, 13]])).shape == (1, 4)


@pytest.mark.slow
def test_failed_runs_leave_the_tables_as_they_were(wh):
    run_score(wh, "plain_fake", ScoreConfig(), run_date=D1, top_k=2, model_loader=LOADER)
    version = wh.version(schemas.RECOMMENDATIONS)
    runs_version = wh.version(schemas.RECOMMENDATION_RUNS)
    # 12 known items, u4 has 6: K = 7 cannot be filled without seen items.
    with pytest.raises(InputError, match=r"--top-k 7: larger than the unseen catalogue"):
        run_score(wh, "plain_fake", ScoreConfig(), run_date=D1, top_k=7, model_loader=LOADER)
    # A task dying half-way (user with item 9) writes nothing either.
    broken = loader_for(plain_fake=FakeTrained("plain_fake", "v2", text=False, fail_for_item=9))
    with pytest.raises(Exception, match="worker died"):
        run_score(wh, "plain_fake", ScoreConfig(user_batch=1), run_date=D1, top_k=2, model_loader=broken)
    assert wh.version(schemas.RECOMMENDATIONS) == version
    assert wh.version(schemas.RECOMMENDATION_RUNS) == runs_version
    d1 = _recs(wh, D1)
    assert len(d1) == 6 * 2 and (d1["model_version"] == "v1").all()


def test_items_touched_beyond_the_sequence_are_never_recommended(wh):
    # u1 also bought i6 (older than what user_sequences keeps) and the text-only new_face:
    # without them in the exclusion both would lead u1's list (see the test above).
    extra = [("u1", "i6", dt.datetime(2023, 1, 1), None), ("u1", "new_face", dt.datetime(2023, 1, 2), None)]
    wh.write(wh.spark.createDataFrame(extra, schemas.INTERACTIONS_SCHEMA), schemas.INTERACTIONS, mode="append")
    run_score(wh, "llmesr_fake", ScoreConfig(), run_date=D1, top_k=3, model_loader=LOADER)
    lists = _lists(_recs(wh))
    assert len(lists["u1"]) == 3 and not {"i6", "new_face"} & set(lists["u1"])


def test_user_who_has_seen_every_item_is_refused_before_anything_is_written(wh):
    # The plain backbone knows 12 items; a user who bought all of them has no candidate left.
    everything = list(range(1, 13))
    row = [("u_all", 99, everything, everything[:-2], everything[-2], everything[-1])]
    wh.write(wh.spark.createDataFrame(row, schemas.USER_SEQUENCES_SCHEMA), schemas.USER_SEQUENCES, mode="append")
    with pytest.raises(InputError, match=r"larger than the unseen catalogue"):
        run_score(wh, "plain_fake", ScoreConfig(), run_date=D1, top_k=1, model_loader=LOADER)
    assert not wh.exists(schemas.RECOMMENDATIONS)
    assert not wh.exists(schemas.RECOMMENDATION_RUNS)


def test_unknown_model_or_version(wh):
    with pytest.raises(ModelNotFoundError):
        run_score(wh, "llmesr_fake", ScoreConfig(), version="v9", run_date=D1, model_loader=LOADER)
    with pytest.raises(ModelNotFoundError):  # the real loader: nothing trained in this warehouse
        run_score(wh, "sasrec", ScoreConfig(), version="2024-01-01", run_date=D1)
    with pytest.raises(ModelNotFoundError, match="popularity"):
        run_score(wh, "popularity", ScoreConfig(), version="nope", run_date=D1)
    assert not wh.exists(schemas.RECOMMENDATIONS)


@pytest.mark.slow
def test_rerun_of_a_date_replaces_only_that_partition_and_hybrid_diversity(wh):
    plain = run_score(wh, "plain_fake", ScoreConfig(), run_date=D1, top_k=3, model_loader=LOADER)
    hybrid = HybridConfig(content_weight=0.5, mmr_lambda=0.0, mmr_candidates=10)
    diverse = run_score(wh, "plain_fake", ScoreConfig(hybrid=hybrid), run_date=D2, top_k=3, model_loader=LOADER)
    assert diverse.model == "plain_fake+hybrid" and "content0.5" in diverse.model_version
    assert diverse.users == plain.users == 6
    assert diverse.diversity > plain.diversity  # the MMR re-rank (lambda 0) spreads the lists
    before_d2 = _recs(wh, D2).sort_values(["user_id", "rank"]).reset_index(drop=True)
    assert set(before_d2["model"]) == {"plain_fake+hybrid"} and len(before_d2) == 6 * 3
    run_score(wh, "popularity", ScoreConfig(), run_date=D1, top_k=2)
    after = _recs(wh)
    d1 = after[after["run_date"] == D1]
    assert (d1["model"] == "popularity").all() and len(d1) == 6 * 2
    d2 = after[after["run_date"] == D2].sort_values(["user_id", "rank"]).reset_index(drop=True)
    assert d2.equals(before_d2)
    # recommendation_runs is append-only: D1 has two runs, the latest describes its partition.
    runs = wh.read(schemas.RECOMMENDATION_RUNS).toPandas()
    assert len(runs) == 3 and (runs["run_date"] == D1).sum() == 2
    latest = runs.sort_values("finished_at").groupby("run_date").last()
    assert latest.loc[D1, "model"] == "popularity" and latest.loc[D2, "model"] == "plain_fake+hybrid"


# --------------------------------------------------------------------------- the served exposure adjustment

# Hubness saved with the model (model idx = item number): two hubs, i6 (face) and i12 (hair), top many
# lists; i5 a little above the rest, so that no two candidates tie. Items the model has no row for
# (new_face, new_odd) are served with the median, 0.2.
HUBNESS = [0.0] + [0.2, 0.2, 0.2, 0.2, 0.25, 3.0, 0.2, 0.2, 0.2, 0.2, 0.2, 3.0]
HUBS = {"i6", "i12"}
PENALTY = 0.5
CATALOGUE = [""] + KNOWN + ["new_face", "new_odd"]  # score's catalogue idxs (new items appended)


def _hand_lists(history_of, exclude_of, k: int, penalty: float, with_new_items: bool):
    """Top-``k`` (item id, score) of every model user from the fake's logits minus ``penalty x
    hubness``, computed here: user vector = mean of the last ``max_len`` (4) history items."""
    import numpy as np

    table = [[0.0] * 4] + [_embedding(i) for i in range(1, 13)]
    bias = list(HUBNESS)
    if with_new_items:  # what the fake's semantic view gives them, and the median hubness
        table += [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
        bias += [float(np.median(HUBNESS[1:]))] * 2
    table, bias = np.asarray(table, dtype=np.float64), np.asarray(bias)
    out = {}
    for user, history in HISTORIES.items():
        scores = table @ table[history_of(history)[-4:]].mean(0) - penalty * bias
        scores[[0, *exclude_of(history)]] = -np.inf
        order = np.argsort(-scores, kind="stable")[: k + 1]
        assert (np.diff(scores[order]) < -1e-4).all(), f"{user}: near tie, the check would be fragile"
        out[user] = [(CATALOGUE[i], float(scores[i])) for i in order[:k]]
    return out


@pytest.mark.slow
def test_score_serves_the_hubness_adjustment_saved_with_the_model_as_evaluate_does(wh, tmp_path):
    from longtail.core.config import EvaluateConfig
    from longtail.core.files import npy_bytes
    from longtail.inference.store import HUBNESS_FILE
    from longtail.stages.evaluate import run_evaluate

    import numpy as np

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / HUBNESS_FILE).write_bytes(npy_bytes(np.asarray(HUBNESS, dtype=np.float32)))
    fake = FakeTrained("hub_fake", "v1", text=True)
    fake.path = str(model_dir)
    fake.config = {"exposure_adjustment": {"kind": "hubness", "penalty": PENALTY}, "popularity_penalty": 0.0}
    loader = loader_for(hub_fake=fake)
    k = 2

    served = run_score(wh, "hub_fake", ScoreConfig(), run_date=D1, top_k=k, model_loader=loader)
    plain = run_score(wh, "hub_fake", ScoreConfig(popularity_penalty=0), run_date=D2, top_k=k, model_loader=loader)
    assert (served.model, served.model_version) == (plain.model, plain.model_version) == ("hub_fake", "v1")
    recs = {d: _recs(wh, d) for d in (D1, D2)}

    # Each model user's list and scores: the top-K of logits - p x hubness, every item they touched
    # excluded; penalty 0 serves the bare logits.
    for run_date, penalty in ((D1, PENALTY), (D2, 0.0)):
        expected = _hand_lists(lambda h: h, lambda h: h, k, penalty, with_new_items=True)
        got = recs[run_date]
        for user, items in expected.items():
            rows = got[got["user_id"] == user].sort_values("rank")
            assert list(rows["item_id"]) == [i for i, _ in items], (run_date, user)
            assert list(rows["score"]) == pytest.approx([s for _, s in items], abs=1e-5), (run_date, user)
            assert not rows["fallback"].any()
    adjusted, unadjusted = _lists(recs[D1]), _lists(recs[D2])
    # The direction: the hubs lead or fill lists of the plain model and leave every list once adjusted...
    assert sum(i in HUBS for u in HISTORIES for i in unadjusted[u]) == 3
    assert not HUBS & {i for u in HISTORIES for i in adjusted[u]}
    # ...which changes three of the four users' lists; the items staying keep or gain places.
    assert sum(adjusted[u] != unadjusted[u] for u in HISTORIES) == 3
    for user in HISTORIES:
        for item in set(adjusted[user]) & set(unadjusted[user]):
            assert adjusted[user].index(item) <= unadjusted[user].index(item), (user, item)
    # Popularity fallbacks are never adjusted.
    assert {u: adjusted[u] for u in ("u_hair", "u_blank")} == {u: unadjusted[u] for u in ("u_hair", "u_blank")}

    # evaluate serves the same model the same way: its report records the adjustment, and its
    # figures are those of the same adjusted scores (inputs: train + valid; the test item is ranked).
    stats = [(u, n, len(h), schemas.TAIL if n % 2 else schemas.HEAD) for n, (u, h) in enumerate(HISTORIES.items(), 1)]
    wh.write(wh.spark.createDataFrame(stats, schemas.USER_STATS_SCHEMA), schemas.USER_STATS)
    item_stats = wh.read(schemas.ITEM_STATS).toPandas().set_index("item_id")
    cfg = EvaluateConfig(k=k, recall_at=k, protocols=["full"])
    reports = {
        penalty: run_evaluate(wh, "hub_fake", cfg, model_loader=loader, popularity_penalty=setting).report
        for penalty, setting in ((PENALTY, "model"), (0.0, 0))
    }
    assert reports[PENALTY]["exposure_adjustment"] == {"kind": "hubness", "penalty": PENALTY}
    assert reports[0.0]["exposure_adjustment"] is None
    for penalty, report in reports.items():
        lists = _hand_lists(lambda h: h[:-1], lambda h: h[:-1], k, penalty, with_new_items=False)
        slots = [i for items in lists.values() for i, _ in items]
        hits = [f"i{h[-1]}" in {i for i, _ in lists[u]} for u, h in HISTORIES.items()]
        catalog = report["catalog"]
        assert report["protocols"]["full"]["overall"][f"hr@{k}"] == pytest.approx(np.mean(hits)), penalty
        assert catalog[f"coverage@{k}"] == pytest.approx(len(set(slots)) / 12), penalty
        assert catalog[f"tail_share@{k}"] == pytest.approx(
            np.mean([item_stats.loc[i, "segment"] == schemas.TAIL for i in slots])), penalty
        assert catalog[f"avg_popularity@{k}"] == pytest.approx(
            np.mean([item_stats.loc[i, "popularity"] for i in slots])), penalty
    # u4's test item is the hub i12: the adjustment costs that hit, as it drops i12 from the lists.
    assert reports[0.0]["protocols"]["full"]["overall"][f"hr@{k}"] == 1.0
    assert reports[PENALTY]["protocols"]["full"]["overall"][f"hr@{k}"] == 0.75


# --------------------------------------------------------------------------- candidate retrieval (score.retrieval)


def _hub_model(tmp_path) -> FakeTrained:
    """The fake served with a saved hubness adjustment (as in the test above)."""
    from longtail.core.files import npy_bytes
    from longtail.inference.store import HUBNESS_FILE

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / HUBNESS_FILE).write_bytes(npy_bytes(np.asarray(HUBNESS, dtype=np.float32)))
    fake = FakeTrained("hub_fake", "v1", text=True)
    fake.path = str(model_dir)
    fake.config = {"exposure_adjustment": {"kind": "hubness", "penalty": PENALTY}}
    return fake


def _table(wh, run_date):
    recs = _recs(wh, run_date).sort_values(["user_id", "rank"]).reset_index(drop=True)
    return recs.drop(columns=["run_date", "generated_at"])


@pytest.mark.parametrize(
    "nlist, nprobe, hybrid",
    [
        pytest.param(0, 64, None, id="flat"),
        pytest.param(2, 2, None, id="ivf-every-list", marks=pytest.mark.slow),
        pytest.param(2, "auto", None, id="ivf-tuned-to-recall-1"),
        pytest.param(0, 64, HybridConfig(content_weight=0.5, mmr_lambda=0.5, mmr_candidates=4), id="flat-hybrid-mmr",
                     marks=pytest.mark.slow),
    ],
)
def test_ann_with_an_exact_index_writes_the_exact_table(wh, tmp_path, nlist, nprobe, hybrid):
    # The served hubness adjustment, items touched beyond the sequence (u1: i6, new_face), fallback
    # users, and with a hybrid the content blend and the MMR re-rank: the same rows either way.
    extra = [("u1", "i6", dt.datetime(2023, 1, 1), None), ("u1", "new_face", dt.datetime(2023, 1, 2), None)]
    wh.write(wh.spark.createDataFrame(extra, schemas.INTERACTIONS_SCHEMA), schemas.INTERACTIONS, mode="append")
    loader = loader_for(hub_fake=_hub_model(tmp_path))
    hybrid = hybrid or HybridConfig()
    exact = run_score(wh, "hub_fake", ScoreConfig(hybrid=hybrid), run_date=D1, top_k=2, model_loader=loader)
    # auto: measured on the users' own lists (all of them here: fewer than ann_tune_users), to recall 1.
    ann_cfg = ScoreConfig(hybrid=hybrid, retrieval="ann", ann_nlist=nlist, ann_nprobe=nprobe, candidates=3,
                          ann_target_recall=1.0)
    ann = run_score(wh, "hub_fake", ann_cfg, run_date=D2, top_k=2, model_loader=loader)
    assert exact.retrieval == "exact"  # auto on 14 rankable items (12 known, 2 placed from text)
    kind = "flat, 14 items" if nlist == 0 else "ivf 2 lists (norm), nprobe 2, 14 items"
    if nprobe == "auto":
        assert re.fullmatch(r"ann \(ivf 2 lists \((norm|spherical)\), nprobe [12], 14 items, tuned: recall@10 "
                            r"1\.000 on \d+ sampled queries \(target 1\), 3 candidates\)", ann.retrieval), ann.retrieval
    else:
        assert ann.retrieval == f"ann ({kind}, 3 candidates)"
    want, got = _table(wh, D1), _table(wh, D2)
    pd.testing.assert_frame_equal(got.drop(columns="score"), want.drop(columns="score"))
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-6)
    assert not {"i6", "new_face"} & set(_lists(_recs(wh, D2))["u1"])
    assert (ann.users, ann.fallback_users, ann.coverage) == (exact.users, exact.fallback_users, exact.coverage)
    assert not list((Path(wh.root) / "_tmp" / "bundles").glob("*"))  # both side files removed


def test_ann_without_faiss_stops_before_anything_is_written(wh, monkeypatch):
    from longtail.core.errors import EnvironmentProblem

    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(EnvironmentProblem, match=r"pip install 'longtail\[ann\]'"):
        run_score(wh, "plain_fake", ScoreConfig(retrieval="ann"), run_date=D1, top_k=2, model_loader=LOADER)
    assert not wh.exists(schemas.RECOMMENDATIONS)
    assert not list((Path(wh.root) / "_tmp" / "bundles").glob("*"))


# --------------------------------------------------------------------------- availability rules (availability.table)


def test_unavailable_items_stay_out_of_model_and_fallback_lists_and_the_run_row_counts_them(wh):
    # i2 and i6 lead the global popularity fallback, new_face leads u1's model list (see above).
    blocked = ["i2", "i6", "new_face"]
    rules = [(i, False) for i in blocked] + [("i1", True), ("not_in_catalogue", False)]
    wh.write(wh.spark.createDataFrame(rules, "item_id string, available boolean"), "availability")
    # A run table from before the column: the first run with it adds the column (older rows: null).
    old = T.StructType([f for f in schemas.RECOMMENDATION_RUNS_SCHEMA.fields if f.name != "unavailable_items"])
    start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    wh.write(wh.spark.createDataFrame([(D2, "m", "v0", 1, 0.5, 0.5, None, start, start)], old),
             schemas.RECOMMENDATION_RUNS)
    # Candidate retrieval (a flat index: the exact lists): the index never holds an unavailable item.
    report = run_score(wh, "llmesr_fake", ScoreConfig(retrieval="ann"), run_date=D1, top_k=3, model_loader=LOADER,
                       availability="availability")
    recs = _recs(wh)
    assert not set(blocked) & set(recs["item_id"])
    assert recs["user_id"].nunique() == 6 and (recs.groupby("user_id").size() == 3).all()
    lists = _lists(recs)
    assert lists["u_blank"][0] not in blocked and lists["u1"][0] != "new_face"
    assert report.unavailable_items == 3 and "3 unavailable items excluded" in str(report)
    assert report.retrieval == "ann (flat, 11 items, 100 candidates)"  # 14 rankable minus the 3
    runs = wh.read(schemas.RECOMMENDATION_RUNS).toPandas().set_index("model_version")
    assert runs.loc["v1", "unavailable_items"] == 3 and pd.isna(runs.loc["v0", "unavailable_items"])


def test_a_bad_availability_table_stops_score_before_anything_is_written(wh):
    from longtail.core.errors import SchemaError, TableNotFoundError

    with pytest.raises(TableNotFoundError, match=r"config key availability.table: no Delta table 'stock'"):
        run_score(wh, "plain_fake", ScoreConfig(), run_date=D1, top_k=2, model_loader=LOADER, availability="stock")
    wh.write(wh.spark.createDataFrame([("i1", "no")], "item_id string, available string"), "stock")
    with pytest.raises(SchemaError, match=r"column 'available' is string, expected boolean"):
        run_score(wh, "plain_fake", ScoreConfig(), run_date=D1, top_k=2, model_loader=LOADER, availability="stock")
    assert not wh.exists(schemas.RECOMMENDATIONS) and not wh.exists(schemas.RECOMMENDATION_RUNS)


# --------------------------------------------------------------------------- score.device


def test_cuda_without_a_gpu_stops_score_with_one_line_naming_the_key(wh):
    from longtail.core.errors import EnvironmentProblem

    with pytest.raises(EnvironmentProblem) as err:
        run_score(wh, "plain_fake", ScoreConfig(device="cuda"), run_date=D1, top_k=2, model_loader=LOADER)
    message = str(err.value)
    assert message.startswith("config key score.device: cuda, but ") and "\n" not in message
    assert not wh.exists(schemas.RECOMMENDATIONS)
    assert not list((Path(wh.root) / "_tmp" / "bundles").glob("*"))  # refused before anything was staged


def test_device_cpu_writes_the_lists_auto_writes_on_a_machine_without_a_gpu(wh):
    run_score(wh, "llmesr_fake", ScoreConfig(device="cpu", user_batch=2), run_date=D1, top_k=3, model_loader=LOADER)
    run_score(wh, "llmesr_fake", ScoreConfig(device="auto", user_batch=2), run_date=D2, top_k=3, model_loader=LOADER)
    pd.testing.assert_frame_equal(_table(wh, D1), _table(wh, D2))
