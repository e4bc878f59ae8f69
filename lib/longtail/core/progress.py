"""Progress lines of long stages, printed as plain lines (a terminal, a log file and a notebook alike).

Training runs in other processes (torchrun children, barrier tasks on executors) whose output
the driver does not see: rank 0 writes the epoch history to ``<run_dir>/progress.json`` after each
validated epoch (:func:`write_progress`), and the driver turns new entries into lines while it
waits (:func:`epoch_lines`). The file sits next to the training data, so this works wherever the
run folder is (local disk, object store).
"""
from __future__ import annotations

import contextlib
import json
import threading
from typing import Callable, Iterator

from longtail.core import files

PROGRESS_FILE = "progress.json"


def write_progress(run_dir: str, history: list[dict]) -> None:
    """Rank 0: the epoch history so far (small: a few numbers per epoch)."""
    files.write_bytes(f"{run_dir}/{PROGRESS_FILE}", json.dumps(history).encode())


def epoch_line(entry: dict, epochs: int) -> str:
    """``epoch 3/15: loss 0.4312, valid NDCG@10 0.1234 HR@10 0.2345 (2.1 s)``."""
    parts = [f"epoch {entry.get('epoch')}/{epochs}: loss {float(entry.get('loss', float('nan'))):.4f}"]
    valid = [(k, v) for k, v in entry.items()
             if k.startswith("valid_") and not k.endswith("seconds") and isinstance(v, (int, float))]
    if valid:
        parts.append("valid " + " ".join(f"{_label(k)} {float(v):.4f}" for k, v in valid))
    seconds = entry.get("seconds")
    text = ", ".join(parts)
    return f"{text} ({float(seconds):.1f} s)" if isinstance(seconds, (int, float)) else text


def _label(key: str) -> str:
    name = key.removeprefix("valid_")
    for metric in ("ndcg", "hr", "mrr", "recall"):
        if name.startswith(metric) and name[len(metric):].isdigit():
            return f"{metric.upper()}@{name[len(metric):]}"
    return name


@contextlib.contextmanager
def epoch_lines(run_dir: str, epochs: int, emit: Callable[[str], None] | None, every: float = 1.0) -> Iterator[None]:
    """While the block runs, call ``emit`` with one line per new epoch in ``<run_dir>/progress.json``."""
    if emit is None:
        yield
        return
    done = threading.Event()
    shown = [0]

    def show() -> None:
        try:
            data = files.read_bytes(f"{run_dir}/{PROGRESS_FILE}", missing_ok=True)
            history = json.loads(data) if data else []
        except (OSError, ValueError):  # being replaced, or a transient store error: next time
            return
        for entry in history[shown[0]:]:
            emit(epoch_line(entry, epochs))
        shown[0] = max(shown[0], len(history))

    def poll() -> None:
        while not done.wait(every):
            show()

    thread = threading.Thread(target=poll, name="longtail-epochs", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)
        show()  # the last epochs
