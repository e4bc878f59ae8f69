"""Train one model, evaluate it (sampled + full protocols) and append one JSON line of results.

Usage (one Spark session for both stages; every row of the full-ranking tables in
benchmarks/README.md comes from one such line)::

    python benchmarks/quality.py --warehouse W --model sasrec --tag sasrec-ce \\
        --out RESULTS.jsonl --set train.loss=ce --set train.validate=full

``--set`` takes the same dotted keys as the CLI. The line holds the tag, model, version,
the config keys that differ from the defaults, the training metrics (best epoch, per-epoch
history, seconds per epoch) and the evaluation report (both protocols, segments, catalogue).
``--summary`` prints a table of the lines of ``--out`` instead; ``--markdown`` the same as markdown;
``--seeds`` the mean ± std over seeds of the runs whose tags differ only in their ``s<seed>-`` prefix;
``--select`` ranks runs by their validation figures alone (how defaults and ablation winners are chosen:
never on the test split, which each run reads once, in its ``evaluate``). Every line records which split
chose what (``chosen_on``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def _lines(path: str, tags: list[str] | None) -> list[dict]:
    """The result lines of ``path``; with ``tags``, those whose tag contains one of them."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    return [r for r in rows if any(t in r["tag"] for t in tags)] if tags else rows


def _adjustment(report: dict) -> str:
    """The exposure adjustment a report was ranked with: ``hubness 0.3``, ``popularity 0.1`` or ``0``."""
    adj = report.get("exposure_adjustment") or {"kind": "popularity", "penalty": report.get("popularity_penalty", 0.0)}
    return f"{adj['kind']} {adj['penalty']:g}" if adj["penalty"] else "0"


def _summary(path: str, tags: list[str] | None) -> None:
    rows = _lines(path, tags)
    head = (f"{'tag':42s} {'best':>4s}/{'run':>3s} {'s/ep':>5s} {'vFullN':>7s} {'vSampN':>7s} | "
            f"{'fHR10':>6s} {'fN10':>6s} {'tailHR':>6s} {'tailN':>6s} {'headHR':>6s} {'tcov':>5s} {'cov':>5s} | "
            f"{'sHR10':>6s} {'sN10':>6s} {'sTailH':>6s}")
    print(head)
    for r in rows:
        m, rep = r["train"], r["eval"]
        best = next((h for h in m["history"] if h["epoch"] == m["best_epoch"]), {})
        full, samp, cat = rep["protocols"].get("full", {}), rep["protocols"].get("sampled", {}), rep["catalog"]
        g = lambda blk, seg, k: blk.get(seg, {}).get(k, float("nan"))  # noqa: E731
        print(
            f"{r['tag'][:42]:42s} {m['best_epoch']:4d}/{m['epochs_run']:3d} {m['seconds_per_epoch']:5.1f} "
            f"{best.get('valid_full_ndcg10', float('nan')):7.4f} {best.get('valid_sampled_ndcg10', float('nan')):7.4f} | "
            f"{g(full, 'overall', 'hr@10'):6.4f} {g(full, 'overall', 'ndcg@10'):6.4f} "
            f"{g(full, 'tail_item', 'hr@10'):6.4f} {g(full, 'tail_item', 'ndcg@10'):6.4f} "
            f"{g(full, 'head_item', 'hr@10'):6.4f} {cat['tail_coverage@10']:5.3f} {cat['coverage@10']:5.3f} | "
            f"{g(samp, 'overall', 'hr@10'):6.4f} {g(samp, 'overall', 'ndcg@10'):6.4f} {g(samp, 'tail_item', 'hr@10'):6.4f}"
        )


#: Settings the markdown table names where they differ from these (the loss always; an llmesr model's
#: views always).
_SHOWN = {"loss": None, "validate": "full", "alpha": 0.1, "pca_init": True, "pca_init_scale": "raw",
          "cross_attention": True}


def _settings(model: str, hp: dict) -> str:
    shown = [f"{k}={hp[k]}" for k in _SHOWN if k in hp and (k == "loss" or hp[k] != _SHOWN[k])]
    if model.startswith("llmesr"):
        shown.insert(1, "dual view" if hp.get("semantic_view", True) else "collaborative view")
        return ", ".join(shown)
    return ", ".join(s for s in shown if s.split("=")[0] in ("loss", "validate"))


def _markdown(path: str, tags: list[str] | None) -> None:
    """The lines of ``path`` as the markdown table of benchmarks/README.md."""
    rows = _lines(path, tags)
    print("| run | model | settings (loss; others where not the default) | full HR@10 | full NDCG@10 | tail-item HR@10 | head-item HR@10 "
          "| tail coverage@10 | tail share@10 | sampled HR@10 / NDCG@10 | exposure adjustment | best / run epochs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        full, samp = r["eval"]["protocols"]["full"], r["eval"]["protocols"]["sampled"]
        cat, m = r["eval"]["catalog"], r["train"]
        diff = _settings(r["model"], r["trained_with"])
        share = cat.get("tail_share@10")
        print(
            f"| {r['tag']} | `{r['model']}` | {diff or '-'} | {full['overall']['hr@10']:.4f} | {full['overall']['ndcg@10']:.4f} "
            f"| {full['tail_item']['hr@10']:.4f} | {full['head_item']['hr@10']:.4f} | {cat['tail_coverage@10']:.3f} "
            f"| {'-' if share is None else f'{share:.3f}'} | {samp['overall']['hr@10']:.4f} / {samp['overall']['ndcg@10']:.4f} "
            f"| {_adjustment(r['eval'])} | {m['best_epoch']} / {m['epochs_run']} |"
        )


#: The figures of the seed table: (column, protocol or ``catalog``, segment, metric).
_SEED_FIGURES = [
    ("full HR@10", "full", "overall", "hr@10"), ("full NDCG@10", "full", "overall", "ndcg@10"),
    ("tail-item HR@10", "full", "tail_item", "hr@10"), ("tail-user NDCG@10", "full", "tail_user", "ndcg@10"),
    ("tail coverage@10", "catalog", None, "tail_coverage@10"), ("tail share@10", "catalog", None, "tail_share@10"),
    ("gini@10", "catalog", None, "gini@10"), ("sampled NDCG@10", "sampled", "overall", "ndcg@10"),
]


def _figure(report: dict, protocol: str, segment: str | None, metric: str) -> float:
    block = report["catalog"] if protocol == "catalog" else report["protocols"][protocol][segment]
    value = block.get(metric)
    return float("nan") if value is None else float(value)


def _served_unadjusted(r: dict, report: str) -> dict | None:
    """For ``eval_unadjusted``: ``eval`` where the model was ranked without an adjustment (its chosen
    penalty was 0); the line then has no second report, its served figures are the unadjusted ones."""
    return r["eval"] if report == "eval_unadjusted" and r.get("eval") and _adjustment(r["eval"]) == "0" else None


def _seeds(path: str, tags: list[str] | None, report: str = "eval") -> None:
    """Mean ± std over seeds: lines whose tags differ only in their ``s<seed>-`` prefix form one row.
    ``report``: ``eval`` (as served) or ``eval_unadjusted`` (the same models without the adjustment)."""
    import re

    import numpy as np

    groups: dict[str, list[dict]] = {}
    for r in _lines(path, tags):
        chosen = r.get(report) or _served_unadjusted(r, report)
        if not chosen:
            continue
        groups.setdefault(re.sub(r"^s\d+-", "", r["tag"]), []).append({**r, report: chosen})
    print("| run | model | seeds | " + " | ".join(c for c, *_ in _SEED_FIGURES) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in _SEED_FIGURES) + " |")
    for name, rows in groups.items():
        cells = []
        for _, *where in _SEED_FIGURES:
            values = np.array([_figure(r[report], *where) for r in rows])
            cells.append(f"{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.4f}")
        seeds = ",".join(str(r["train"]["seed"]) for r in rows)
        label = name if report == "eval" else f"{name}, unadjusted"
        print(f"| {label} | `{rows[0]['model']}` | {seeds} | " + " | ".join(cells) + " |")


#: The figures of ``--compare``: every segment of the full protocol, the catalogue, the sampled protocol.
_COMPARE_FIGURES = [
    ("full NDCG@10", "full", "overall", "ndcg@10"), ("full HR@10", "full", "overall", "hr@10"),
    ("tail-item HR@10", "full", "tail_item", "hr@10"), ("head-item HR@10", "full", "head_item", "hr@10"),
    ("tail-user NDCG@10", "full", "tail_user", "ndcg@10"), ("head-user NDCG@10", "full", "head_user", "ndcg@10"),
    ("tail coverage@10", "catalog", None, "tail_coverage@10"), ("sampled NDCG@10", "sampled", "overall", "ndcg@10"),
]


def _compare(path: str, base: str, candidate: str) -> list[dict]:
    """``candidate`` against ``base`` (run names as ``--seeds`` groups them), paired by seed: per figure
    both means, the change of the means and the per-seed relative gains' mean and std (n - 1); a gain
    counts as clear when its mean exceeds twice that std. Prints the table; returns its rows."""
    import re

    import numpy as np

    runs: dict[str, dict[int, dict]] = {base: {}, candidate: {}}
    for r in _lines(path, None):
        name = re.sub(r"^s\d+-", "", r["tag"])
        if name in runs and r.get("eval"):
            runs[name][int(r["train"]["seed"])] = r["eval"]
    seeds = sorted(set(runs[base]) & set(runs[candidate]))
    if not seeds:
        raise SystemExit(f"--compare: no seed has both {base!r} and {candidate!r} in {path}")
    print(f"{candidate} against {base}, seeds {','.join(map(str, seeds))} (paired by seed)\n")
    print("| figure | " + base + " | " + candidate + " | change | per-seed gain | clear (> 2 std) |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = []
    for label, *where in _COMPARE_FIGURES:
        a = np.array([_figure(runs[base][s], *where) for s in seeds])
        b = np.array([_figure(runs[candidate][s], *where) for s in seeds])
        gains = b / a - 1.0
        std = gains.std(ddof=1) if len(seeds) > 1 else float("nan")
        clear = bool(len(seeds) > 1 and gains.mean() > 2 * std)
        rows.append({"figure": label, "base": a.mean(), "candidate": b.mean(), "change": b.mean() / a.mean() - 1.0,
                     "gain_mean": gains.mean(), "gain_std": std, "clear": clear})
        print(f"| {label} | {a.mean():.4f} | {b.mean():.4f} | {b.mean() / a.mean() - 1.0:+.1%} | "
              f"{gains.mean():+.1%} ± {std:.1%} | {'yes' if clear else 'no'} |")
    return rows


#: Which split chose what, in every result line and under every seed table.
CHOSEN_ON = {
    "best_epoch": "validation split: NDCG@10 of each user's second-last item (train.validate protocol)",
    "exposure_adjustment": "validation split: the largest penalty within train.exposure_tolerance of the "
                           "unadjusted validation NDCG@10 (train.exposure_adjustment)",
    "defaults_and_ablations": "validation split: benchmarks/quality.py --select",
    "test_split": "read once per run, by its evaluate (the reported figures)",
}


def _chosen_on_note() -> str:
    return ("Chosen on the validation split: the best epoch, the served exposure adjustment and (with "
            "--select) every default and ablation winner; the test split was read once per run.")


def _validation(r: dict) -> tuple[float, float]:
    """(full NDCG@10, full HR@10) on the validation split at the run's best epoch."""
    m = r["train"]
    best = next((h for h in m["history"] if h["epoch"] == m["best_epoch"]), {})
    nan = float("nan")
    return (float(best.get("valid_full_ndcg10", m.get("valid_ndcg10", nan))),
            float(best.get("valid_full_hr10", m.get("valid_hr10", nan))))


def _select(path: str, tags: list[str] | None) -> str | None:
    """Rank runs (seed groups, as ``--seeds``) by validation full NDCG@10 alone; print the table and
    return the winner's name. No test figure is read."""
    import re

    import numpy as np

    groups: dict[str, list[dict]] = {}
    for r in _lines(path, tags):
        groups.setdefault(re.sub(r"^s\d+-", "", r["tag"]), []).append(r)
    ranked = sorted(groups.items(), key=lambda kv: -np.mean([_validation(r)[0] for r in kv[1]]))
    print("| run | model | seeds | validation full NDCG@10 | validation full HR@10 |")
    print("| --- | --- | --- | --- | --- |")
    for i, (name, rows) in enumerate(ranked):
        ndcg, hr = np.array([_validation(r) for r in rows]).T
        std = lambda a: a.std(ddof=1) if len(a) > 1 else 0.0  # noqa: E731
        label = f"**{name}** (chosen)" if i == 0 else name
        seeds = ",".join(str(r["train"]["seed"]) for r in rows)
        print(f"| {label} | `{rows[0]['model']}` | {seeds} | {ndcg.mean():.4f} ± {std(ndcg):.4f} | {hr.mean():.4f} ± {std(hr):.4f} |")
    print("\nChosen on the validation split only; no test figure was read (each run read the test split once, in its evaluate).")
    return ranked[0][0] if ranked else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse")
    parser.add_argument("--model")
    parser.add_argument("--tag")
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--version", help="evaluate this trained version only (no training)")
    parser.add_argument("--summary", nargs="*", help="print the table of --out (optionally only tags containing these)")
    parser.add_argument("--markdown", nargs="*", help="the same as a markdown table")
    parser.add_argument("--seeds", nargs="*", help="mean ± std over seeds (tags equal but for their s<seed>- prefix)")
    parser.add_argument("--unadjusted", action="store_true", help="(--seeds) the models without their exposure adjustment")
    parser.add_argument("--select", nargs="*", help="rank runs by validation figures only (no test figure read)")
    parser.add_argument("--compare", nargs=2, metavar=("BASE", "CANDIDATE"),
                        help="every segment of CANDIDATE against BASE, paired by seed, with the gains' spread")
    args = parser.parse_args(argv)
    if args.summary is not None:
        _summary(args.out, args.summary)
        return 0
    if args.markdown is not None:
        _markdown(args.out, args.markdown)
        return 0
    if args.seeds is not None:
        _seeds(args.out, args.seeds, "eval_unadjusted" if args.unadjusted else "eval")
        print(f"\n{_chosen_on_note()}")
        return 0
    if args.select is not None:
        _select(args.out, args.select)
        return 0
    if args.compare is not None:
        _compare(args.out, *args.compare)
        print(f"\n{_chosen_on_note()}")
        return 0

    from longtail.core.config import Config, load_config, to_dict
    from longtail.core.files import read_bytes
    from longtail.core.session import build_spark
    from longtail.core.tables import Warehouse
    from longtail.stages.evaluate import run_evaluate
    from longtail.stages.train import run_train

    cfg = load_config(None, [f"warehouse={args.warehouse}", *args.overrides])
    spark = build_spark(cfg.spark, delta_engine=cfg.delta.engine)
    wh = Warehouse(spark, cfg.warehouse, engine=cfg.delta.engine)
    started = time.perf_counter()
    if args.version:
        version = args.version
        path = f"{cfg.warehouse.rstrip('/')}/_models/{args.model}/{version}"
    else:
        result = run_train(wh, args.model, cfg.train, valid_negatives=cfg.evaluate.negatives)
        print(result, file=sys.stderr)
        version, path = result.version, result.path
    metrics = json.loads(read_bytes(f"{path}/metrics.json"))
    trained = time.perf_counter()
    served = cfg.score.popularity_penalty
    report = run_evaluate(wh, args.model, cfg.evaluate, version=version, hybrid=cfg.score.hybrid,
                          popularity_penalty=served)
    print(report, file=sys.stderr)
    unadjusted = None
    if served == "model" and _adjustment(report.report) != "0":  # the model as trained, unadjusted too
        unadjusted = run_evaluate(wh, args.model, cfg.evaluate, version=version, popularity_penalty=0.0).report
    default = to_dict(Config())["train"]
    # What the model was trained with (a --version run was trained by another command).
    trained_with = json.loads(read_bytes(f"{path}/config.json"))["hyperparameters"]
    diff = {k: v for k, v in trained_with.items() if default.get(k) != v}
    line = {
        "tag": args.tag or args.model,
        "model": args.model,
        "version": version,
        "warehouse": args.warehouse,
        "train_config_diff": diff,
        "trained_with": trained_with,
        "overrides": args.overrides,
        "train": metrics,
        "eval": report.report,
        # The hybrid (score.hybrid), evaluated in the same pass: blend, MMR, popularity penalty.
        "variants": report.variants,
        "eval_unadjusted": unadjusted,
        "chosen_on": CHOSEN_ON,
        "train_seconds": trained - started,
        "eval_seconds": time.perf_counter() - trained,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with open(args.out, "a") as f:
        f.write(json.dumps(line) + "\n")
    _summary(args.out, [line["tag"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
