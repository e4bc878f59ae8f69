"""``longtail [--conf FILE] [--set KEY=VALUE ...] COMMAND [OPTIONS]``: parse, then call the package.

The CLI only parses arguments, builds and checks the config (before Spark starts), the
SparkSession and the warehouse, and calls one stage function. Exit status:

- 0: done;
- 2: something the user must fix: bad input or settings (a file, table, column, config key or
  option) or a missing piece of the environment (Java, task slots, a local model folder): one
  line on stderr naming it;
- 4: another writer changed a table this job read or writes (a conflict): one line; nothing of
  the conflicting write was committed, and rerunning the command succeeds;
- 1: a bug in longtail (also when a pipeline stage wraps one): the trace, then one line saying so.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
import time
import traceback
from typing import Callable, Sequence

from longtail.core.errors import ConflictError, LongtailError

EXIT_INPUT, EXIT_CONFLICT, EXIT_BUG = 2, 4, 1


def build_parser() -> argparse.ArgumentParser:
    """The ``longtail`` argument parser: global ``--conf``/``--set``, one subcommand per stage."""
    parser = argparse.ArgumentParser(
        prog="longtail", description="Long-tail sequential recommendation (LLM-ESR) on Apache Spark."
    )
    parser.add_argument("--conf", help="YAML config (default: the embedded conf/local.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key by dotted path, e.g. --set train.epochs=5 (repeatable)",
    )
    # The same options after the command, so `spark-submit jobs/<command>.py --conf F` works.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--conf", dest="conf_after", help=argparse.SUPPRESS)
    common.add_argument("--set", dest="overrides_after", action="append", default=[], help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    add("demo", "write a synthetic long-tail catalogue, then run the pipeline")
    p = add("ingest", "load raw files into interactions, items (and users)")
    p.add_argument("--format", required=True, choices=["amazon", "movielens", "files"])
    p.add_argument("--interactions", required=True, help="interactions file or folder")
    p.add_argument("--items", help="item metadata file")
    p.add_argument("--users", help="user file")
    add("sequences", "filter, map ids, build sequences, split, segment")
    p = add("encode", "LLM text embeddings for items and users (incremental)")
    p.add_argument(
        "--users", action=argparse.BooleanOptionalAction, default=None,
        help="also encode the user texts, which only `neighbors` reads (default: encode.users in the config)",
    )
    add("neighbors", "top-N similar users from the user embeddings")
    p = add("train", "train one model")
    p.add_argument("--model", help="model name (default: train.model in the config)")
    p.add_argument(
        "--warm-start", action=argparse.BooleanOptionalAction, default=None,
        help="start from the latest version of the model: weights, item rows by item_id, Adam state "
             "(default: train.warm_start in the config; from scratch when there is no version yet)",
    )
    p = add("evaluate", "test-split metrics overall and by segment")
    p.add_argument("--model", help="trained model name, or a baseline: popularity, als")
    p.add_argument("--model-version", help="version to evaluate (default: the latest)")
    p = add("score", "top-K recommendations for every user")
    p.add_argument("--model", help="model name (default: train.model in the config)")
    p.add_argument("--model-version", help="version to score with (default: the latest)")
    p.add_argument("--run-date", type=_date, help="partition to write, YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--top-k", type=int, help="K (default: score.top_k in the config)")
    p = add("similar-items", "top-K similar items of every item (collaborative, semantic, blend)")
    p.add_argument("--model", help="trained model name (default: train.model in the config)")
    p.add_argument("--model-version", help="version to use (default: the latest)")
    p.add_argument("--run-date", type=_date, help="partition to write, YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--top-k", type=int, help="K (default: similar_items.top_k in the config)")
    add("run", "sequences, encode, neighbors, train, similar-items, evaluate, score in order")
    p = add("vacuum", "delete files no table version or kept model needs (vacuum.retention_hours)")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    return parser


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--run-date {text!r}: expected YYYY-MM-DD") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``longtail`` console script and of every ``jobs/*.py``."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        _run(args)
    except LongtailError as exc:
        cause = _cause(exc)
        if not isinstance(cause, LongtailError):  # a stage wrapped a bug (pipeline): still a bug
            print(f"longtail {args.command}: internal error (a bug in longtail, not in your input): "
                  f"{_one_line(exc)}", file=sys.stderr)
            return EXIT_BUG
        print(f"longtail {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_CONFLICT if isinstance(cause, ConflictError) else EXIT_INPUT
    except KeyboardInterrupt:
        print(f"longtail {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: keep the trace, but never as "bad input"
        traceback.print_exc()
        print(f"longtail {args.command}: internal error (a bug in longtail, not in your input): "
              f"{type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BUG
    return 0


def _cause(exc: BaseException) -> BaseException:
    """The innermost exception a chain of longtail errors wraps (``raise ... from``)."""
    while isinstance(exc, LongtailError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    notes = [" ".join(n.split()) for n in getattr(exc, "__notes__", [])]
    return "; ".join([text, *notes]) if notes else text


def _run(args: argparse.Namespace) -> None:
    from longtail.core.config import load_config
    from longtail.core.session import spark_for_job
    from longtail.core.tables import Warehouse

    cfg = load_config(args.conf_after or args.conf, [*args.overrides, *args.overrides_after])
    _check_options(cfg, args)  # before Spark starts
    # The first progress line comes before Spark's own start-up output.
    print(f"longtail {args.command}: starting Spark ({_where(cfg.spark)}); warehouse {cfg.warehouse}",
          file=sys.stderr, flush=True)
    with spark_for_job(cfg.spark, delta_engine=cfg.delta.engine) as spark:
        wh = Warehouse(spark, cfg.warehouse, engine=cfg.delta.engine)
        started = time.perf_counter()
        result = _STAGES[args.command](spark, wh, cfg, args)
        if result is not None:
            print(result)
        print(f"longtail {args.command}: done in {time.perf_counter() - started:.1f}s", file=sys.stderr)


def _check_options(cfg, args: argparse.Namespace) -> None:
    """Command options that config validation cannot see: K bounds, the model's settings.

    Raises:
        InputError, ConfigError: naming the option or key.
    """
    from longtail.core.config import MAX_K, check_model
    from longtail.core.errors import InputError

    top_k = getattr(args, "top_k", None)
    if top_k is not None and not 1 <= top_k <= MAX_K:
        raise InputError(f"--top-k {top_k}: must be between 1 and {MAX_K}")
    model = getattr(args, "model", None)
    if args.command in ("train", "evaluate", "score", "similar-items"):
        check_model(cfg, model or cfg.train.model)


def _where(spark_cfg) -> str:
    if spark_cfg.remote:
        return f"Spark Connect {spark_cfg.remote}"
    return spark_cfg.master or "the session spark-submit or the notebook built"


def _lines(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# Stage modules import lazily: `longtail --help` and config errors stay fast.


def _ingest(spark, wh, cfg, a):
    from longtail.stages.ingest import run_ingest

    return run_ingest(spark, wh, a.format, a.interactions, a.items, a.users, cfg.ingest)


def _sequences(spark, wh, cfg, a):
    from longtail.stages.sequences import run_sequences

    return run_sequences(wh, cfg.sequences)


def _encode(spark, wh, cfg, a):
    from longtail.stages.encode import run_encode

    return run_encode(wh, cfg.encode, users=cfg.encode.users if a.users is None else a.users)


def _neighbors(spark, wh, cfg, a):
    from longtail.stages.neighbors import run_neighbors

    return run_neighbors(wh, cfg.neighbors)


def _train(spark, wh, cfg, a):
    from longtail.stages.train import run_train

    model = cfg.train.model if a.model is None else a.model
    train_cfg = cfg.train if a.warm_start is None else dataclasses.replace(cfg.train, warm_start=a.warm_start)
    return run_train(wh, model, train_cfg, valid_negatives=cfg.evaluate.negatives, tracking=cfg.tracking,
                     progress=_lines)


def _evaluate(spark, wh, cfg, a):
    from longtail.stages.evaluate import run_evaluate

    return run_evaluate(
        wh, a.model or cfg.train.model, cfg.evaluate, version=a.model_version, hybrid=cfg.score.hybrid,
        tracking=cfg.tracking, popularity_penalty=cfg.score.popularity_penalty,
    )


def _score(spark, wh, cfg, a):
    from longtail.stages.score import run_score

    # run_date None: run_score's default (today, UTC); top_k None: score.top_k.
    return run_score(
        wh, a.model or cfg.train.model, cfg.score, version=a.model_version,
        run_date=a.run_date, top_k=a.top_k, als_cfg=cfg.evaluate, availability=cfg.availability.table,
    )


def _similar_items(spark, wh, cfg, a):
    from longtail.stages.similar_items import run_similar_items

    return run_similar_items(
        wh, a.model or cfg.train.model, cfg.similar_items, version=a.model_version, run_date=a.run_date,
        top_k=a.top_k, availability=cfg.availability.table,
    )


def _pipeline(spark, wh, cfg, a):
    from longtail.pipeline import run_pipeline

    return run_pipeline(wh, cfg)


def _demo(spark, wh, cfg, a):
    from longtail.pipeline import run_demo

    return run_demo(wh, cfg)


def _vacuum(spark, wh, cfg, a):
    from longtail.core.vacuum import run_vacuum

    return run_vacuum(wh, cfg.vacuum, dry_run=a.dry_run)


_STAGES: dict[str, Callable] = {
    "vacuum": _vacuum, "demo": _demo, "ingest": _ingest, "sequences": _sequences, "encode": _encode, "neighbors": _neighbors,
    "train": _train, "evaluate": _evaluate, "score": _score, "similar-items": _similar_items, "run": _pipeline,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
