"""The whole pipeline in one call: ``longtail run`` and ``longtail demo``.

Each stage prints one progress line (what it did, rows, elapsed); the end prints a summary
(segments, metrics, where the tables are). A failing stage raises :class:`StageError`
naming it, so the CLI exits non-zero with the stage in its one-line message.
"""
from __future__ import annotations

import datetime as dt
import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from longtail.core.config import Config, TrainConfig
from longtail.core.errors import LongtailError
from longtail.core.files import read_bytes
from longtail.core.tables import Warehouse


class StageError(LongtailError):
    """A pipeline stage failed; the message names the stage and the cause."""


@dataclass
class PipelineResult:
    """What ``run`` did: each stage's report and seconds, and where its outputs are."""

    warehouse: str
    model: str
    stages: list[tuple[str, Any, float]] = field(default_factory=list)
    reports: dict[str, dict] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = ["", "longtail pipeline summary", "=" * 25]
        seq = self._report("sequences")
        if seq is not None:
            lines += [str(seq), ""]
        lines += _accuracy_table(self.reports)
        lines += _catalog_lines(self.reports)
        lines.append(f"tables: {self.warehouse}/<table> (Delta); reports: {self.warehouse}/_reports/")
        lines.append("stage seconds: " + ", ".join(f"{n} {s:.1f}" for n, _, s in self.stages))
        return "\n".join(lines)

    def _report(self, stage: str) -> Any:
        return next((r for n, r, _ in self.stages if n == stage), None)


def _accuracy_table(reports: dict[str, dict]) -> list[str]:
    """HR@k/NDCG@k by segment, the served (full-catalogue) protocol first."""
    rows, k = [], 10
    for name, report in reports.items():
        k = report.get("k", k)
        for protocol in ("full", "sampled"):
            block = report.get("protocols", {}).get(protocol)
            if not block:
                continue
            cells = [name, protocol]
            for segment in ("overall", "tail_item", "head_item", "tail_user", "head_user"):
                figures = block.get(segment) or {}
                nan = float("nan")
                cells.append(f"{figures.get(f'hr@{k}', nan):.4f}/{figures.get(f'ndcg@{k}', nan):.4f}")
            rows.append(cells)
    if not rows:
        return []
    header = ["model", "protocol", "overall", "tail item", "head item", "tail user", "head user"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"HR@{k}/NDCG@{k} on the test split"]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    return lines + [""]


def _catalog_lines(reports: dict[str, dict]) -> list[str]:
    """One line per model: what its full-catalogue lists do for the long tail."""
    lines = []
    for name, report in reports.items():
        cat, k = report.get("catalog"), report.get("k", 10)
        if cat:
            div = cat.get(f"diversity@{k}")
            lines.append(
                f"{name}: coverage@{k} {cat.get(f'coverage@{k}', 0):.3f}, tail coverage@{k} "
                f"{cat.get(f'tail_coverage@{k}', 0):.3f}, gini@{k} {cat.get(f'gini@{k}', 0):.3f}, "
                f"tail share@{k} {cat.get(f'tail_share@{k}', 0):.3f}, "
                f"diversity@{k} {'n/a' if div is None else f'{div:.3f}'}"
            )
    return lines


def run_pipeline(
    wh: Warehouse,
    cfg: Config,
    run_date: dt.date | None = None,
    baselines: tuple[str, ...] = ("popularity",),
    out: TextIO = sys.stderr,
) -> PipelineResult:
    """Run sequences, encode, neighbors, train, similar-items, evaluate, score on what ``ingest`` loaded.

    Args:
        wh: the warehouse (carries the SparkSession).
        cfg: the whole config; each stage gets its own section.
        run_date: partition of ``recommendations`` to write (default: today).
        baselines: baselines evaluated beside the trained model, for the summary.
        out: where progress lines go.

    Returns:
        The stage reports and a printable summary.

    Raises:
        StageError: naming the stage that failed; earlier stages' tables stay written.
    """
    from longtail.stages.encode import run_encode
    from longtail.stages.evaluate import run_evaluate
    from longtail.stages.neighbors import run_neighbors
    from longtail.stages.score import run_score
    from longtail.stages.sequences import run_sequences
    from longtail.stages.similar_items import run_similar_items
    from longtail.stages.train import run_train

    model = cfg.train.model
    run_date = run_date or dt.date.today()
    result = PipelineResult(warehouse=wh.root, model=model)
    reads_neighbors = reads_similar_users(cfg.train)
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("sequences", lambda: run_sequences(wh, cfg.sequences)),
        ("encode", lambda: run_encode(wh, cfg.encode, users=reads_neighbors)),
        ("neighbors", lambda: run_neighbors(wh, cfg.neighbors)),
        ("train", lambda: run_train(wh, model, cfg.train, valid_negatives=cfg.evaluate.negatives,
                                    tracking=cfg.tracking, progress=_detail(out))),
        # Before evaluate: the report's item-to-item figures read its table.
        ("similar-items", lambda: run_similar_items(
            wh, model, cfg.similar_items, run_date=run_date, availability=cfg.availability.table)),
        ("evaluate", lambda: run_evaluate(
            wh, model, cfg.evaluate, hybrid=cfg.score.hybrid, tracking=cfg.tracking,
            popularity_penalty=cfg.score.popularity_penalty,
        )),
        *[(f"evaluate {b}", (lambda b=b: run_evaluate(wh, b, cfg.evaluate))) for b in baselines],
        ("score", lambda: run_score(
            wh, model, cfg.score, run_date=run_date, top_k=cfg.score.top_k,
            als_cfg=cfg.evaluate, availability=cfg.availability.table)),
    ]
    if not reads_neighbors:
        # No neighbours needed; the item texts still feed the PCA view, new items and diversity figures.
        steps = [s for s in steps if s[0] != "neighbors"]
    if not cfg.similar_items.enabled:
        steps = [s for s in steps if s[0] != "similar-items"]
    for i, (name, step) in enumerate(steps, 1):
        report, seconds = _stage(f"[{i}/{len(steps)}] {name}", step, out)
        result.stages.append((name, report, seconds))
        if name.startswith("evaluate"):
            result.reports[name.removeprefix("evaluate").strip() or model] = _report_dict(wh, report)
    return result


def reads_similar_users(train: TrainConfig) -> bool:
    """Whether training reads ``similar_users``: only the distillation of an LLM-ESR model
    (``alpha`` > 0) does, and user texts feed nothing else. ``run`` skips the user texts and
    ``neighbors`` otherwise (on Beauty the user texts are four fifths of the encode time)."""
    return train.model.startswith("llmesr_") and train.alpha > 0


def run_demo(wh: Warehouse, cfg: Config, out: TextIO = sys.stderr) -> PipelineResult:
    """Write the synthetic long-tail catalogue (``demo`` section) into the warehouse, then ``run``."""
    from longtail.synthetic import write_catalogue

    _stage("[0] synthetic catalogue", lambda: write_catalogue(wh, cfg.demo), out)
    demo_cfg = cfg.replace(**{"train.epochs": min(cfg.train.epochs, cfg.demo.train_epochs)})
    return run_pipeline(wh, demo_cfg, out=out)


def _detail(out: TextIO) -> Callable[[str], None]:
    """A stage's own progress (train epochs), indented under its stage line."""
    return lambda line: print(f"      {line}", file=out, flush=True)


def _stage(label: str, step: Callable[[], Any], out: TextIO) -> tuple[Any, float]:
    name = label.split("] ", 1)[-1]
    print(f"{label}: running", file=out, flush=True)
    started = time.perf_counter()
    try:
        report = step()
    except LongtailError as exc:
        raise StageError(f"stage {name} failed: {exc}") from exc
    except Exception as exc:  # a bug, not bad input: keep the trace for whoever debugs it
        traceback.print_exc(file=out)
        raise StageError(f"stage {name} failed: {type(exc).__name__}: {exc}") from exc
    seconds = time.perf_counter() - started
    first = str(report).strip().splitlines()[0] if report is not None and str(report).strip() else "done"
    print(f"{label}: {first} ({seconds:.1f}s)", file=out, flush=True)
    return report, seconds


def _report_dict(wh: Warehouse, report: Any) -> dict:
    as_dict = getattr(report, "as_dict", None)
    if callable(as_dict):
        return as_dict()
    path = getattr(report, "path", None)
    data = read_bytes(path, missing_ok=True) if path else None
    return json.loads(data) if data else {}
