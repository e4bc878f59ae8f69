"""benchmarks/quality.py's tables over a results file: ``--seeds`` (the README's headline tables, also
``--unadjusted``), ``--markdown`` and ``--summary``, on tiny hand-written result lines."""
from __future__ import annotations

import json

import pytest
from bench_scripts import load_script


bench = load_script("quality")

COLUMNS = ["full HR@10", "full NDCG@10", "tail-item HR@10", "tail-user NDCG@10", "tail coverage@10",
           "tail share@10", "gini@10", "sampled NDCG@10"]


def report(figures: tuple, adjustment: dict | None = None, popularity_penalty: float = 0.0) -> dict:
    """An evaluation report as ``evaluate`` writes it, with ``figures`` in the order of COLUMNS. The
    figures the seed table does not read (other segments, metrics) hold other values, so that reading
    the wrong one shows."""
    hr, ndcg, tail_hr, tail_user_ndcg, tail_cov, tail_share, gini, sampled_ndcg = figures

    def seg(hr10: float, ndcg10: float) -> dict:
        return {"hr@10": hr10, "ndcg@10": ndcg10, "mrr@10": ndcg10 / 2}

    return {
        "model": "m", "model_version": "v", "k": 10,
        "protocols": {
            "sampled": {
                "negatives": 100, "overall": seg(0.61, sampled_ndcg), "tail_item": seg(0.42, 0.21),
                "head_item": seg(0.83, 0.64), "tail_user": seg(0.55, 0.35), "head_user": seg(0.66, 0.46),
            },
            "full": {
                "overall": {**seg(hr, ndcg), "recall@20": 0.13}, "tail_item": {**seg(tail_hr, 0.017), "recall@20": 0.03},
                "head_item": {**seg(0.125, 0.071), "recall@20": 0.2},
                "tail_user": {**seg(0.077, tail_user_ndcg), "recall@20": 0.1},
                "head_user": {**seg(0.088, 0.052), "recall@20": 0.12},
            },
        },
        "catalog": {"coverage@10": 0.95, "tail_coverage@10": tail_cov, "diversity@10": 0.5, "gini@10": gini,
                    "tail_share@10": tail_share, "avg_popularity@10": 33.0},
        "exposure_adjustment": adjustment,
        "popularity_penalty": popularity_penalty,
    }


def line(tag: str, model: str, seed: int, served: dict, unadjusted: dict | None = None, **extra) -> dict:
    """A result line as ``quality.py`` appends it (the keys its tables read)."""
    trained_with = {"model": model, "loss": "sampled_softmax", "validate": "full", "seed": seed}
    if model.startswith("llmesr"):
        trained_with |= {"semantic_view": False, "alpha": 0.0, "pca_init": True, "pca_init_scale": "raw",
                         "cross_attention": True}
    return {
        "tag": tag, "model": model, "version": f"v{seed}", "warehouse": "W", "train_config_diff": {},
        "trained_with": trained_with, "overrides": [f"train.seed={seed}"],
        "train": {"model": model, "best_epoch": 12, "epochs_run": 17, "seconds_per_epoch": 15.5, "seed": seed,
                  "history": [{"epoch": 11, "valid_full_ndcg10": 0.05, "valid_sampled_ndcg10": 0.29},
                              {"epoch": 12, "valid_full_ndcg10": 0.0612, "valid_sampled_ndcg10": 0.3044}]},
        "eval": served, "variants": {}, "eval_unadjusted": unadjusted,
        "train_seconds": 100.0, "eval_seconds": 10.0, "finished": "2026-12-02T00:00:00Z", **extra,
    }


HUB = lambda p: {"kind": "hubness", "penalty": p}  # noqa: E731

# sasrec-hub over seeds 42, 43, 44: each figure is x - d, x, x + d, so its mean is x and its std (n - 1) d.
SASREC_SERVED = {
    42: (0.0802, 0.0472, 0.0395, 0.0432, 0.7800, 0.3300, 0.7900, 0.3150),
    43: (0.0812, 0.0478, 0.0415, 0.0440, 0.8200, 0.3600, 0.7400, 0.3210),
    44: (0.0822, 0.0484, 0.0435, 0.0448, 0.8600, 0.3900, 0.6900, 0.3270),
}
SASREC_UNADJUSTED = {
    42: (0.0811, 0.0474, 0.0374, 0.0433, 0.7060, 0.2900, 0.8110, 0.3250),
    43: (0.0815, 0.0479, 0.0391, 0.0442, 0.7310, 0.3080, 0.7990, 0.3290),
    44: (0.0819, 0.0484, 0.0408, 0.0451, 0.7560, 0.3260, 0.7870, 0.3330),
}
# llmesr-hub over seeds 42 and 43: with two values a and b, the std (n - 1) is |a - b| / sqrt(2).
LLMESR_SERVED = {
    42: (0.0930, 0.0540, 0.0590, 0.0515, 0.8800, 0.4400, 0.6500, 0.3500),
    43: (0.0950, 0.0546, 0.0604, 0.0519, 0.9200, 0.4600, 0.6300, 0.3580),
}
LLMESR_UNADJUSTED_42 = (0.0940, 0.0536, 0.0480, 0.0517, 0.6100, 0.2800, 0.8200, 0.3700)

ROW_SASREC = ("| sasrec-hub | `sasrec` | 42,43,44 | 0.0812 ± 0.0010 | 0.0478 ± 0.0006 | 0.0415 ± 0.0020 | "
              "0.0440 ± 0.0008 | 0.8200 ± 0.0400 | 0.3600 ± 0.0300 | 0.7400 ± 0.0500 | 0.3210 ± 0.0060 |")
# means .0940 .0543 .0597 .0517 .9000 .4500 .6400 .3540; stds .0020, .0006, .0014, .0004, .04, .02, .02, .008 / sqrt(2)
ROW_LLMESR = ("| llmesr-hub | `llmesr_sasrec` | 42,43 | 0.0940 ± 0.0014 | 0.0543 ± 0.0004 | 0.0597 ± 0.0010 | "
              "0.0517 ± 0.0003 | 0.9000 ± 0.0283 | 0.4500 ± 0.0141 | 0.6400 ± 0.0141 | 0.3540 ± 0.0057 |")
ROW_SASREC_UNADJUSTED = ("| sasrec-hub, unadjusted | `sasrec` | 42,43,44 | 0.0815 ± 0.0004 | 0.0479 ± 0.0005 | "
                         "0.0391 ± 0.0017 | 0.0442 ± 0.0009 | 0.7310 ± 0.0250 | 0.3080 ± 0.0180 | 0.7990 ± 0.0120 | "
                         "0.3290 ± 0.0040 |")
# Seed 42's unadjusted report beside seed 43's served one (chosen penalty 0: served = unadjusted).
# means .0945 .0541 .0542 .0518 .7650 .3700 .7250 .3640; stds .0010, .0010, .0124, .0002, .31, .18, .19, .012 / sqrt(2)
ROW_LLMESR_UNADJUSTED = ("| llmesr-hub, unadjusted | `llmesr_sasrec` | 42,43 | 0.0945 ± 0.0007 | 0.0541 ± 0.0007 | "
                         "0.0542 ± 0.0088 | 0.0518 ± 0.0001 | 0.7650 ± 0.2192 | 0.3700 ± 0.1273 | 0.7250 ± 0.1344 | "
                         "0.3640 ± 0.0085 |")


@pytest.fixture()
def results(tmp_path) -> str:
    """A results file: two multi-seed runs interleaved with lines of other tags."""
    lines = [
        line("s42-sasrec-hub", "sasrec", 42, report(SASREC_SERVED[42], HUB(0.1)), report(SASREC_UNADJUSTED[42])),
        line("s42-llmesr-hub", "llmesr_sasrec", 42, report(LLMESR_SERVED[42], HUB(0.3)), report(LLMESR_UNADJUSTED_42)),
        # Another run of the same model: other figures, never in a hub row.
        line("s42-sasrec-ce", "sasrec", 42, report((0.5,) * 8, popularity_penalty=0.0)),
        line("s43-sasrec-hub", "sasrec", 43, report(SASREC_SERVED[43], HUB(0.1)), report(SASREC_UNADJUSTED[43])),
        # The penalty this seed chose is 0: served unadjusted, so quality.py wrote no second report.
        line("s43-llmesr-hub", "llmesr_sasrec", 43, report(LLMESR_SERVED[43], HUB(0.0))),
        line("s44-sasrec-hub", "sasrec", 44, report(SASREC_SERVED[44], HUB(0.2)), report(SASREC_UNADJUSTED[44])),
        # Its tag contains "sasrec-hub" but is not "s<seed>-sasrec-hub": a row of its own. Evaluated with a
        # popularity penalty set by hand (no unadjusted report): no row among the unadjusted ones.
        {k: v for k, v in line("s42-sasrec-hub@served", "sasrec", 42, report((0.25,) * 8, popularity_penalty=0.1)).items()
         if k != "eval_unadjusted"},
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + "\n")  # a blank last line is skipped
    return str(path)


def table(capsys, *args: str) -> list[str]:
    """The lines ``quality.py ARGS`` prints; a seed table's closing note (which split chose what,
    checked on its own below) and the blank line before it are left out."""
    assert bench.main(list(args)) == 0
    out = capsys.readouterr().out.splitlines()
    if "--seeds" in args:
        assert out[-2:] == ["", bench._chosen_on_note()]
        out = out[:-2]
    return out


HEADER = ["| run | model | seeds | " + " | ".join(COLUMNS) + " |", "| --- | --- | --- | " + " | ".join(["---"] * 8) + " |"]


def test_seeds_row_is_the_mean_and_std_over_the_seeds_of_one_run(results, capsys):
    out = table(capsys, "--out", results, "--seeds", "sasrec-hub")
    assert out[:2] == HEADER
    served = "| sasrec-hub@served | `sasrec` | 42 | " + " | ".join(["0.2500 ± 0.0000"] * 8) + " |"
    assert out[2:] == [ROW_SASREC, served]


def test_seeds_rows_keep_runs_apart_in_the_order_they_first_appear(results, capsys):
    assert table(capsys, "--out", results, "--seeds", "sasrec-hub", "llmesr-hub")[2:] == [
        ROW_SASREC, ROW_LLMESR, "| sasrec-hub@served | `sasrec` | 42 | " + " | ".join(["0.2500 ± 0.0000"] * 8) + " |",
    ]
    # No tags: every run, the other run of sasrec in a row of its own.
    rows = table(capsys, "--out", results, "--seeds")[2:]
    assert [r.split(" | ")[0] for r in rows] == ["| sasrec-hub", "| llmesr-hub", "| sasrec-ce", "| sasrec-hub@served"]
    assert rows[:2] == [ROW_SASREC, ROW_LLMESR]
    assert rows[2] == "| sasrec-ce | `sasrec` | 42 | " + " | ".join(["0.5000 ± 0.0000"] * 8) + " |"


def test_unadjusted_seed_rows_read_the_models_without_their_adjustment(results, capsys):
    out = table(capsys, "--out", results, "--seeds", "sasrec-hub", "llmesr-hub", "--unadjusted")
    assert out[:2] == HEADER
    # A seed served with penalty 0 counts with its served figures (they are the unadjusted ones); a line
    # evaluated with a penalty but without an unadjusted report has none to give.
    assert out[2:] == [ROW_SASREC_UNADJUSTED, ROW_LLMESR_UNADJUSTED]


def test_markdown_and_summary_rows_of_the_same_lines(results, capsys):
    rows = table(capsys, "--out", results, "--markdown", "s42-sasrec-hub", "s43-llmesr-hub")
    assert rows[0].startswith("| run | model | settings") and rows[0].endswith("| exposure adjustment | best / run epochs |")
    assert rows[2:] == [
        "| s42-sasrec-hub | `sasrec` | loss=sampled_softmax | 0.0802 | 0.0472 | 0.0395 | 0.1250 | 0.780 | 0.330 "
        "| 0.6100 / 0.3150 | hubness 0.1 | 12 / 17 |",
        "| s43-llmesr-hub | `llmesr_sasrec` | loss=sampled_softmax, collaborative view, alpha=0.0 | 0.0950 | 0.0546 "
        "| 0.0604 | 0.1250 | 0.920 | 0.460 | 0.6100 / 0.3580 | 0 | 12 / 17 |",
        "| s42-sasrec-hub@served | `sasrec` | loss=sampled_softmax | 0.2500 | 0.2500 | 0.2500 | 0.1250 | 0.250 | 0.250 "
        "| 0.6100 / 0.2500 | popularity 0.1 | 12 / 17 |",
    ]
    summary = table(capsys, "--out", results, "--summary", "s44-sasrec-hub")
    assert summary[0].split() == ["tag", "best/run", "s/ep", "vFullN", "vSampN", "|", "fHR10", "fN10", "tailHR", "tailN",
                                  "headHR", "tcov", "cov", "|", "sHR10", "sN10", "sTailH"]
    # best epoch 12's validation figures; full, then sampled, figures of the served report
    assert summary[1:] == [" ".join([
        f"{'s44-sasrec-hub':42s}", "  12/ 17", " 15.5", " 0.0612", " 0.3044", "|", "0.0822", "0.0484", "0.0435", "0.0170",
        "0.1250", "0.860", "0.950", "|", "0.6100", "0.3270", "0.4200",
    ])]


def test_select_ranks_by_validation_alone_and_never_reads_the_test_split(tmp_path, capsys):
    """The run with the better validation NDCG@10 wins although its test figures are worse, and a
    line without test figures at all is ranked the same: --select reads the validation split only."""

    def with_validation(tag, seed, valid_ndcg, test_ndcg):
        r = line(tag, "llmesr_sasrec", seed, report((0.09, test_ndcg, 0.05, 0.05, 0.9, 0.4, 0.6, 0.35)))
        r["train"]["history"][1] |= {"valid_full_ndcg10": valid_ndcg, "valid_full_hr10": 2 * valid_ndcg}
        return r

    lines = [with_validation("s42-a", 42, 0.070, 0.050), with_validation("s43-a", 43, 0.072, 0.051),
             with_validation("s42-b", 42, 0.069, 0.060), with_validation("s43-b", 43, 0.069, 0.061)]
    lines[0].pop("eval")  # the test figures are never needed
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert bench._select(str(path), None) == "a"
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "| **a** (chosen) | `llmesr_sasrec` | 42,43 | 0.0710 ± 0.0014 | 0.1420 ± 0.0028 |"
    assert out[3] == "| b | `llmesr_sasrec` | 42,43 | 0.0690 ± 0.0000 | 0.1380 ± 0.0000 |"
    assert "no test figure was read" in out[-1]


def test_every_line_and_seed_table_says_which_split_chose_what(results, capsys):
    assert bench.main(["--out", results, "--seeds", "sasrec-hub"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("Chosen on the validation split: the best epoch, the served exposure adjustment")
    assert set(bench.CHOSEN_ON) == {"best_epoch", "exposure_adjustment", "defaults_and_ablations", "test_split"}
    assert all(v.startswith("validation split") for k, v in bench.CHOSEN_ON.items() if k != "test_split")


def test_compare_pairs_the_seeds_and_says_which_gains_are_clear(tmp_path, capsys):
    """Per-seed gains of b over a: full NDCG +10%, +20%, +30% (mean 20%, std 10%: clear, 20 > 2 x 10);
    tail-item HR +10%, -10%, +30% (mean 10%, std 20%: not clear). A seed only one run has is left out."""
    base = {42: 0.0400, 43: 0.0500, 44: 0.0600}
    gains = {42: (0.1, 0.1), 43: (0.2, -0.1), 44: (0.3, 0.3)}
    lines = []
    for seed, ndcg in base.items():
        lines.append(line(f"s{seed}-a", "sasrec", seed, report((0.08, ndcg, 0.05, 0.04, 0.8, 0.3, 0.7, 0.3))))
        g_ndcg, g_tail = gains[seed]
        lines.append(line(f"s{seed}-b", "llmesr_sasrec", seed,
                          report((0.08, ndcg * (1 + g_ndcg), 0.05 * (1 + g_tail), 0.04, 0.8, 0.3, 0.7, 0.3))))
    lines.append(line("s45-b", "llmesr_sasrec", 45, report((0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5))))
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    rows = {r["figure"]: r for r in bench._compare(str(path), "a", "b")}
    assert capsys.readouterr().out.startswith("b against a, seeds 42,43,44 (paired by seed)")
    ndcg = rows["full NDCG@10"]
    assert ndcg["gain_mean"] == pytest.approx(0.2) and ndcg["gain_std"] == pytest.approx(0.1) and ndcg["clear"]
    assert ndcg["base"] == pytest.approx(0.05) and ndcg["candidate"] == pytest.approx((0.044 + 0.06 + 0.078) / 3)
    tail = rows["tail-item HR@10"]
    assert tail["gain_mean"] == pytest.approx(0.1) and tail["gain_std"] == pytest.approx(0.2) and not tail["clear"]
    assert rows["full HR@10"]["gain_mean"] == pytest.approx(0.0) and not rows["full HR@10"]["clear"]
    with pytest.raises(SystemExit, match="no seed has both"):
        bench._compare(str(path), "a", "c")
