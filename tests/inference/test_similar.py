"""Similar items, the pure maths (no Spark): sources, blend, hubness adjustment, availability, retrieval."""
from __future__ import annotations

import numpy as np
import pytest
from longtail.core.errors import InputError
from longtail.inference.similar import build_views, check_list_length, make_index

N = 10  # idx 0 padding; 1..8 known to the model; 9 text-only


def _vectors(seed: int = 0):
    rng = np.random.default_rng(seed)
    # Two clusters (1-4, 5-8); item 1 a hub: close to both clusters' centres.
    centres = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    collab = np.zeros((N, 3), dtype=np.float32)
    for i in range(2, 9):
        collab[i] = centres[0 if i <= 4 else 1] + 0.3 * rng.normal(size=3)
    collab[1] = [1.0, 1.0, 0.05]
    has_collab = np.zeros(N, dtype=bool)
    has_collab[1:9] = True
    semantic = np.zeros((N, 4), dtype=np.float32)
    semantic[1:] = rng.normal(size=(N - 1, 4))
    semantic[9] = semantic[6] + 0.05  # the text-only item reads like item 6
    has_semantic = np.zeros(N, dtype=bool)
    has_semantic[1:] = True
    return (collab, has_collab), (semantic, has_semantic)


def _lists(view, k=3, index=None):
    idxs = np.nonzero(view.rows)[0]
    scores, items = view.top_k(idxs, k, item_chunk=4, index=index, candidates=1)
    return dict(zip(idxs.tolist(), items.tolist())), dict(zip(idxs.tolist(), scores.tolist()))


def test_lists_never_hold_the_item_itself_or_an_unavailable_item_and_stay_at_k():
    collab, semantic = _vectors()
    blocked = np.zeros(N, dtype=bool)
    blocked[[2, 9]] = True
    for view in build_views(["collaborative", "semantic", "blend"], collab, semantic, blocked, penalty=0.5):
        lists, scores = _lists(view)
        for item, neighbours in lists.items():
            assert item not in neighbours and not {0, 2, 9} & set(neighbours), (view.source, item)
            assert len(set(neighbours)) == 3
            assert np.all(np.diff(scores[item]) <= 1e-6)
        # Unavailable items still get their own list (a product page of an item out of stock).
        assert 2 in lists


def test_text_only_items_get_and_are_semantic_and_blend_neighbours_not_collaborative():
    collab, semantic = _vectors()
    views = {v.source: v for v in build_views(
        ["collaborative", "semantic", "blend"], collab, semantic, np.zeros(N, dtype=bool), penalty=0.0)}
    c_lists, _ = _lists(views["collaborative"])
    assert 9 not in c_lists and all(9 not in n for n in c_lists.values())
    s_lists, _ = _lists(views["semantic"])
    assert s_lists[9][0] == 6 and s_lists[6][0] == 9
    b_lists, _ = _lists(views["blend"], k=8)
    # Item 9 has no collaborative part: its blend list is its semantic order.
    s_full, _ = _lists(views["semantic"], k=8)
    assert b_lists[9] == s_full[9]
    assert any(9 in n for n in b_lists.values())


def test_blend_is_the_weighted_sum_of_per_query_z_scored_cosines():
    collab, semantic = _vectors()
    view = build_views(["blend"], collab, semantic, np.zeros(N, dtype=bool), weights=(1.0, 2.0), penalty=0.0)[0]
    q = 3
    score = (view.query_vectors(np.array([q])) @ view.items.T).numpy()[0]

    def z(pair):
        v, has = pair
        u = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        cos = u @ u[q]
        return (cos - cos[has & (np.arange(N) > 0)].mean()) / cos[has & (np.arange(N) > 0)].std()

    expected = 1.0 * z(collab) + 2.0 * z(semantic)
    np.testing.assert_allclose(score[1:], expected[1:], rtol=1e-4, atol=1e-4)


def test_the_hubness_penalty_moves_the_hub_out_of_most_lists():
    # Items 2..8 share one direction h beside their own; item 1 is h itself: every item's nearest.
    vectors = np.zeros((N, 8), dtype=np.float32)
    for i in range(2, 9):
        vectors[i, i - 2] = 1.0 + 0.01 * i
        vectors[i, 7] = 1.0
    vectors[1, 7] = 1.0
    has = np.zeros(N, dtype=bool)
    has[1:9] = True
    plain = build_views(["collaborative"], (vectors, has), None, np.zeros(N, dtype=bool), penalty=0.0)[0]
    adjusted = build_views(["collaborative"], (vectors, has), None, np.zeros(N, dtype=bool), penalty=2.0)[0]
    hub_in = lambda view: sum(1 in n for i, n in _lists(view, k=2)[0].items() if i != 1)  # noqa: E731
    assert hub_in(plain) == 7
    assert hub_in(adjusted) == 0
    hub = -adjusted.items[:, -1]
    assert hub[1] == pytest.approx(1 / np.sqrt(2), rel=0.05) and hub[1] == hub.max()  # the mean of its 7 cosines


def test_a_flat_candidate_index_gives_the_exact_lists():
    pytest.importorskip("faiss", reason="faiss (the ann extra) is not installed")
    collab, semantic = _vectors()
    blocked = np.zeros(N, dtype=bool)
    blocked[5] = True
    for view in build_views(["collaborative", "semantic", "blend"], collab, semantic, blocked, penalty=0.5):
        exact, exact_scores = _lists(view)
        ann, ann_scores = _lists(view, index=make_index(view))
        assert ann == exact, view.source
        for i in exact:
            np.testing.assert_allclose(ann_scores[i], exact_scores[i], rtol=1e-5, atol=1e-5)


def test_missing_vectors_and_too_large_k_are_one_line_errors():
    collab, _ = _vectors()
    with pytest.raises(InputError, match=r"similar_items.sources: semantic has no item vectors .*longtail encode"):
        build_views(["semantic"], collab, None, np.zeros(N, dtype=bool))
    views = build_views(["collaborative"], collab, None, np.zeros(N, dtype=bool), penalty=0.0)
    check_list_length(views, 7)
    with pytest.raises(InputError, match=r"similar_items.top_k: 8 is more than the 7 other items source collaborative"):
        check_list_length(views, 8)


def _planted(rng, n: int = 41):
    """Items 1..20 and their partners 21..40 (the validation pairs (q, q + 20)); random vectors."""
    collab = rng.normal(size=(n, 6)).astype(np.float32)
    text = rng.normal(size=(n, 32)).astype(np.float32)
    has = np.ones(n, dtype=bool)
    has[0] = False
    pairs = np.stack([np.arange(1, 21), np.arange(21, 41)], axis=1)
    return collab, text, has, pairs


def _choose(collab, text, has, pairs, penalty=0.5, k=1, blocked=None):
    from longtail.inference.similar import choose_blend, source_views

    blocked = np.zeros(len(has), dtype=bool) if blocked is None else blocked
    singles = source_views(["blend"], (collab, has), (text, has), blocked, penalty=penalty, hubness_queries=50)
    tail = np.zeros(len(has), dtype=bool)
    tail[31:] = True  # half the partners are tail items
    return singles, choose_blend(singles, pairs, tail, k=k, tail_queries=40)


def test_auto_picks_the_semantic_end_when_only_the_text_knows_the_next_item():
    collab, text, has, pairs = _planted(np.random.default_rng(3))
    text[21:41] = text[1:21] + 0.01  # the partner reads like the query; the model placed it anywhere
    _, choice = _choose(collab, text, has, pairs)
    f = choice.figures
    assert f[1.0]["hr"] == 1.0 and f[0.0]["hr"] < 0.5
    assert f[choice.share]["hr"] == max(x["hr"] for x in f.values())
    assert f[choice.share]["hr"] >= max(f[0.0]["hr"], f[1.0]["hr"])  # never below either source
    # Every share that holds all the pairs ties on HR: of those, the most tail items.
    perfect = [s for s, x in f.items() if x["hr"] == 1.0]
    assert f[choice.share]["tail_share"] == max(f[s]["tail_share"] for s in perfect)
    assert choice.pairs == 20 and choice.tail_pairs == 10


def test_a_tolerance_trades_a_little_hr_for_tail_items_and_0_never_does():
    collab, text, has, pairs = _planted(np.random.default_rng(6))
    text[21:31] = text[1:11] + 0.3  # half the pairs through the text, half through the model
    collab[31:41] = collab[11:21] + 0.3
    _, strict = _choose(collab, text, has, pairs, k=3)
    from longtail.inference.similar import choose_blend, source_views

    singles = source_views(["blend"], (collab, has), (text, has), np.zeros(len(has), dtype=bool), penalty=0.5,
                           hubness_queries=50)
    tail = np.zeros(len(has), dtype=bool)
    tail[31:] = True
    loose = choose_blend(singles, pairs, tail, k=3, tail_queries=40, hr_tolerance=0.5)
    f = strict.figures
    best = max(x["hr"] for x in f.values())
    assert f[strict.share]["hr"] == best
    allowed = [s for s, x in loose.figures.items() if x["hr"] >= 0.5 * best]
    assert loose.figures[loose.share]["hr"] >= 0.5 * best
    assert loose.figures[loose.share]["tail_share"] == max(loose.figures[s]["tail_share"] for s in allowed)
    assert loose.figures[loose.share]["tail_share"] >= f[strict.share]["tail_share"]


def test_auto_picks_the_collaborative_end_when_only_the_model_knows_the_next_item():
    collab, text, has, pairs = _planted(np.random.default_rng(4))
    collab[21:41] = collab[1:21] + 0.01  # the model knows the pairs; the text is noise
    _, choice = _choose(collab, text, has, pairs)
    f = choice.figures
    assert f[0.0]["hr"] == 1.0 and f[1.0]["hr"] < 0.5
    assert f[choice.share]["hr"] == 1.0 and choice.share < 1.0
    assert choice.weights == (1.0 - choice.share, choice.share)


def test_the_choice_scores_the_lists_the_table_writes():
    from longtail.inference.similar import blend_view

    collab, text, has, pairs = _planted(np.random.default_rng(5))
    text[21:31] = text[1:11] + 0.3  # half the pairs through the text, half through the model
    collab[31:41] = collab[11:21] + 0.3
    blocked = np.zeros(len(has), dtype=bool)
    blocked[[25, 35]] = True  # an unavailable partner is a miss in the table, so in the choice too
    singles, choice = _choose(collab, text, has, pairs, k=3, blocked=blocked)
    for share, figures in choice.figures.items():
        view = blend_view(singles, (1 - share, share))
        _, items = view.top_k(pairs[:, 0], 3, item_chunk=8)
        assert figures["hr"] == pytest.approx((items == pairs[:, 1:2]).any(axis=1).mean()), share
    assert choice.figures[choice.share]["hr"] >= max(choice.figures[0.0]["hr"], choice.figures[1.0]["hr"])


def test_a_blend_weight_of_0_or_1_is_exactly_that_source():
    collab, semantic = _vectors()
    blocked = np.zeros(N, dtype=bool)
    views = {v.source: v for v in build_views(["collaborative", "semantic"], collab, semantic, blocked)}
    for weights, source in (((1.0, 0.0), "collaborative"), ((0.0, 2.0), "semantic")):
        blend = build_views(["blend"], collab, semantic, blocked, weights=weights)[0]
        assert blend.source == "blend"
        assert _lists(blend) == _lists(views[source])


def test_a_query_only_one_source_knows_is_ranked_by_that_source_in_the_blend():
    collab, semantic = _vectors()
    blend = build_views(["blend"], collab, semantic, np.zeros(N, dtype=bool), weights=(1.0, 1.0), penalty=0.5)[0]
    single = build_views(["semantic"], collab, semantic, np.zeros(N, dtype=bool), penalty=0.5)[0]
    # Item 9 is text-only: its collaborative part is 0 (not a ranking by low hubness).
    assert _lists(blend, k=8)[0][9] == _lists(single, k=8)[0][9]


def test_without_a_semantic_source_or_pairs_there_is_nothing_to_choose():
    from longtail.inference.similar import choose_blend, source_views

    collab, text, has, pairs = _planted(np.random.default_rng(6))
    only = source_views(["blend"], (collab, has), None, np.zeros(len(has), dtype=bool))
    assert set(only) == {"collaborative"}
    assert choose_blend(only, pairs, np.zeros(len(has), dtype=bool)) is None
    both = source_views(["blend"], (collab, has), (text, has), np.zeros(len(has), dtype=bool))
    assert choose_blend(both, pairs[:0], np.zeros(len(has), dtype=bool)) is None



def test_auto_nprobe_tunes_each_view_on_its_own_items_lists():
    pytest.importorskip("faiss", reason="faiss (the ann extra) is not installed")
    rng = np.random.default_rng(8)
    n = 500
    collab = (rng.normal(size=(n, 6)).astype(np.float32), np.r_[False, np.ones(n - 1, dtype=bool)])
    semantic = (rng.normal(size=(n, 5)).astype(np.float32), np.r_[False, np.ones(n - 1, dtype=bool)])
    for view in build_views(["collaborative", "semantic", "blend"], collab, semantic, np.zeros(n, dtype=bool)):
        index = make_index(view, nlist=8, nprobe="auto", tune_items=1000, target_recall=1.0, candidates=12)
        assert index.kind == "ivf" and index.tuning["queries"] == n - 1 and index.tuning["recall_at_10"] == 1.0
        exact, _ = _lists(view, k=10)
        ann, _ = _lists(view, k=10, index=index)
        assert ann == exact, view.source  # measured on every item's own list: exact on all of them
        sample = make_index(view, nlist=8, nprobe="auto", tune_items=200, target_recall=0.9, candidates=12)
        assert sample.tuning["queries"] == 200 and sample.tuning["recall_at_10"] >= 0.9
