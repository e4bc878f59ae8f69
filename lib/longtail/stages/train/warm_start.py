"""``train.warm_start``: find the previous version, check it fits, stage it in the run folder.

The driver does the looking and checking; the training processes do the remapping
(:func:`longtail.models.warm_start.carry_state`) from what this module puts in the run folder,
``<run>/warm_start/``: ``weights.pt`` and ``optimizer.pt`` (copies of the previous version's,
so a ``vacuum`` during training cannot pull them away) and ``old_rows.npy`` (for each item idx
of this run, the previous model's idx of the same item_id, 0 for a new item). The ranks read
them as they read the rest of the run folder, in every ``train.mode``.

Decisions:

- **No previous version**: train from scratch, with a progress line saying so. A nightly or
  weekly schedule with ``train.warm_start: true`` then works from its first run on, and every
  later run carries over; a user who wants certainty reads the line or ``metrics.json``
  (``warm_start: null``).
- **Another architecture**: refused (:class:`ConfigError`, one line naming every key that
  differs), before any Spark work; the text encoder is checked once the run folder names it.
- **Items**: matched by item_id (``item_ids.json`` of the previous version against today's
  ``item_stats``), never by position: ``sequences`` keeps ids stable and appends new ones,
  but the k-core may drop an item an earlier run had.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from longtail.core.errors import ConfigError, InputError
from longtail.core.files import npy_bytes, parquet_files, read_bytes, write_bytes
from longtail.core.scratch import read_parquet, write_parquet
from longtail.inference.items import ItemIndex
from longtail.inference.store import OPTIMIZER_FILE, latest_version
from longtail.models import REGISTRY, needs_text
from longtail.stages.train.prepare import FINGERPRINTS

#: What a model is built from, with the defaults the builders use for keys an older version lacks.
_ENCODER_KEYS = {"transformer": ("hidden", "layers", "heads", "max_len"), "gru": ("hidden", "layers")}
_TEXT_DEFAULTS: dict[str, Any] = {"semantic_view": True}
_DUAL_DEFAULTS: dict[str, Any] = {"cross_attention": False, "view_gate": "none", "llm_standardize": False}
_SCORE_DEFAULTS: dict[str, Any] = {"similarity": "dot", "temperature": 1.0}


@dataclass(frozen=True)
class PreviousVersion:
    """The version a warm start continues: its registered name, folder and saved config."""

    model: str
    version: str
    path: str
    config: dict


def find_previous(wh, model_name: str, hp: Mapping[str, Any],
                  progress: Callable[[str], None] | None = None) -> PreviousVersion | None:
    """The newest registered version of ``model_name`` (``hp["warm_start_version"]`` when set) if it
    has the architecture of ``hp``.

    Returns:
        The :class:`PreviousVersion`, or None (with a progress line) when there is none yet.

    Raises:
        ConfigError: the version differs in architecture (one line, every difference), or the
            named ``train.warm_start_version`` is not registered.
        InputError: its folder is incomplete (no ``config.json``).
    """
    pinned = hp.get("warm_start_version")
    found = latest_version(wh, model_name, pinned)
    if found is None and pinned:
        raise ConfigError(f"train.warm_start_version: model {model_name} has no version {pinned!r} in table "
                          "models; name a registered version or leave it null (the newest)")
    if found is None:
        _say(progress, f"train: warm start: no trained version of {model_name} in table models yet; "
                       "training from scratch")
        return None
    version, path = found
    raw = read_bytes(f"{path}/config.json", missing_ok=True)
    if raw is None:
        raise InputError(f"train.warm_start: model {model_name} version {version}: folder {path} has no "
                         "config.json (removed or incomplete); train without --warm-start")
    config = json.loads(raw)
    differences = architecture_differences(model_name, config.get("hyperparameters", {}), hp)
    if differences:
        raise ConfigError(
            f"train.warm_start: model {model_name} version {version} has another architecture "
            f"({'; '.join(differences)}); set the same values or train without --warm-start"
        )
    return PreviousVersion(model_name, version, path, config)


def architecture_differences(model_name: str, old_hp: Mapping[str, Any], hp: Mapping[str, Any]) -> list[str]:
    """``train.<key> <old> there, <new> here`` for every setting that shapes the network and differs."""
    backbone, text = REGISTRY[model_name][0], needs_text(model_name)
    defaults: dict[str, Any] = {k: None for k in _ENCODER_KEYS["gru" if backbone == "gru4rec" else "transformer"]}
    defaults.update(_SCORE_DEFAULTS)
    if text:
        defaults.update(_TEXT_DEFAULTS)
        if old_hp.get("semantic_view", True) and hp.get("semantic_view", True):
            defaults.update(_DUAL_DEFAULTS)
            if old_hp.get("cross_attention") and hp.get("cross_attention"):
                defaults["cross_residual"] = 0.0
    out = []
    for key, default in defaults.items():
        old, new = _value(old_hp, key, default), _value(hp, key, default)
        if old != new:
            out.append(f"train.{key} {old} there, {new} here")
    return out


def _value(hp: Mapping[str, Any], key: str, default: Any) -> Any:
    value = hp.get(key, default)
    return float(value) if key in ("cross_residual", "temperature") else value


def previous_fingerprints(previous: PreviousVersion | None) -> str | None:
    """The ``user_fingerprints`` folder of ``previous`` (None: no previous version, or one saved
    before versions kept them: then every user counts as changed)."""
    if previous is None:
        return None
    folder = f"{previous.path}/{FINGERPRINTS}"
    return folder if parquet_files(folder) else None


def keep_fingerprints(wh, run_dir: str, model_dir: str) -> None:
    """Copy the run's ``user_fingerprints`` into the model folder (Spark: no per-user state on the driver)."""
    write_parquet(read_parquet(wh.spark, f"{run_dir}/{FINGERPRINTS}"), f"{model_dir}/{FINGERPRINTS}")


def stage(previous: PreviousVersion, run_dir: str, prepared: Mapping[str, Any], replay: float = 1.0,
          progress: Callable[[str], None] | None = None, lr: float | None = None) -> dict:
    """Copy the previous version's weights (and Adam state) into the run folder and write the item map.

    Args:
        previous: from :func:`find_previous`.
        run_dir: the run folder :func:`~longtail.stages.train.prepare.prepare_training_data` wrote
            (its ``item_ids.json`` is this run's item index).
        prepared: what it returned (``llm_dim``, ``encoder`` of this run's LLM tables,
            ``train_users`` and ``changed_users``).
        replay: ``train.warm_start_replay``, recorded (the share of the other users each epoch trains on).
        lr: the run's base learning rate (``lr`` x ``warm_start_lr_factor``; before warm-up and decays), recorded.

    Returns:
        The ``warm_start`` entry of the training parameters and of ``metrics.json``:
        ``from_version``, ``carried_items``, ``new_items``, ``dropped_items``, ``optimizer``,
        ``train_users``, ``changed_users`` (whose training history differs from the previous
        version's, new users included; all of them when that version kept no fingerprints) and
        ``replay`` (``train.warm_start_replay``: the share of the other users each epoch trains on) and
        ``lr`` (its base rate).

    Raises:
        ConfigError: the previous version read another text encoder or LLM width.
    """
    old_config = previous.config
    if prepared.get("text"):
        for key, label in (("encoder", "text encoder"), ("llm_dim", "LLM embedding width")):
            old, new = old_config.get(key), prepared.get(key)
            if old != new:
                raise ConfigError(
                    f"train.warm_start: model {previous.model} version {previous.version} was trained on "
                    f"{label} {old}, item_embeddings now have {new}; train without --warm-start"
                )
    old_index = ItemIndex(json.loads(read_bytes(f"{previous.path}/item_ids.json")))
    new_index = ItemIndex(json.loads(read_bytes(f"{run_dir}/item_ids.json")))
    old_rows = new_index.lookup(old_index)
    folder = f"{run_dir}/warm_start"
    write_bytes(f"{folder}/old_rows.npy", npy_bytes(old_rows), atomic=False)
    write_bytes(f"{folder}/weights.pt", read_bytes(f"{previous.path}/weights.pt"), atomic=False)
    optimizer = read_bytes(f"{previous.path}/{OPTIMIZER_FILE}", missing_ok=True)
    if optimizer is not None:
        write_bytes(f"{folder}/{OPTIMIZER_FILE}", optimizer, atomic=False)
    carried = int((old_rows > 0).sum())
    replay = float(replay)
    info = {
        "from_version": previous.version, "carried_items": carried,
        "new_items": sum(1 for i, item in enumerate(new_index.ids) if i and item and not old_rows[i]),
        "dropped_items": sum(1 for i, item in enumerate(old_index.ids) if i and item) - carried,
        "optimizer": optimizer is not None,
        "train_users": int(prepared.get("train_users", 0)), "changed_users": int(prepared.get("changed_users", 0)),
        "replay": replay, "lr": lr,
    }
    _say(progress, (
        f"train: warm start from {previous.model} version {previous.version}: {carried} items carried, "
        f"{info['new_items']} new, {info['dropped_items']} no longer in item_stats; Adam state "
        f"{'resumed' if optimizer is not None else 'fresh (that version saved none)'}; "
        f"{info['changed_users']} of {info['train_users']} training users changed since, each epoch trains on "
        f"them and {replay:.0%} of the others" + (f", at learning rate {lr:g}" if lr is not None else "")
    ))
    return info


def _say(progress: Callable[[str], None] | None, line: str) -> None:
    if progress is not None:
        progress(line)
    else:
        import logging

        logging.getLogger("longtail.stages.train").info(line)


__all__ = ["PreviousVersion", "architecture_differences", "find_previous", "stage"]
