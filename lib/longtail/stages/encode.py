"""``longtail encode``: LLM text embeddings of items and users, incremental, plus the PCA view.

Reads ``items``, ``user_sequences`` and ``item_stats``; writes ``item_embeddings``,
``user_embeddings``, ``item_embeddings_pca`` and the PCA map
``<warehouse>/_encoders/pca-<model>.npz`` (:mod:`longtail.encoders.pca`), which ``train`` reads.

Texts
- Item text: ``encode.item_template`` over the item columns (``categories`` joined by ", ";
  any other ``{name}`` is looked up in the ``attributes`` map). A missing or empty field drops
  itself together with the template text just before it (``". Brand: {brand}"`` vanishes when
  the brand is unknown); the first field shown loses its leading separator.
- User text: the titles of the user's last ``user_history_items`` *training* items
  (``train_item_idxs``; never the validation or test item; an item without a title is named by
  its item text, so thin catalogues get user texts too), oldest first, joined by "; ",
  cut to the last ``user_max_chars`` characters, in ``encode.user_template`` (field ``{titles}``).
  Long user texts are truncated to ``max_tokens`` from the start, so the most recent items stay.
- Empty text (no title, brand, categories, ...): the row gets a **zero vector** (no semantic
  information; cosine 0 to everything) and is counted in the report. It never fails the job.

Incremental
Each row stores ``text_hash`` = SHA-256 of the encoder signature (model name, pooling,
normalisation, max tokens, truncation side) and the text. A rerun encodes only rows whose hash
changed or that are new, copies every other row unchanged, and drops rows whose item/user is
gone. Changing the model (or pooling, ...) changes every hash, so everything is re-encoded.
With nothing to encode the model is never loaded and the table is not rewritten.
``encode.precision`` is not part of the hash: float32, bfloat16 and float16 embeddings of a text
agree to a cosine of 0.9999, so switching it (or moving to GPUs) re-encodes nothing.
"""
from __future__ import annotations

import math
import string
import time
from dataclasses import dataclass

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longtail.core import schemas
from longtail.core.config import EncodeConfig
from longtail.core.errors import ConfigError, SchemaError
from longtail.core.session import default_parallelism
from longtail.encoders import text as encoders
from longtail.encoders.pca import PcaMap, from_moments, load_pca, save_pca

#: Separator between titles in the user text.
TITLE_SEPARATOR = "; "
_SEPARATOR_CHARS = " \t\n.,;:|/-"


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class EntityCounts:
    """What happened to one embedding table."""

    total: int = 0
    encoded: int = 0
    reused: int = 0
    empty: int = 0
    removed: int = 0
    written: bool = False
    seconds: float = 0.0

    def __str__(self) -> str:
        rate = f", {self.encoded / self.seconds:.0f}/s" if self.encoded and self.seconds > 0 else ""
        extra = f", removed {self.removed}" if self.removed else ""
        return (
            f"{self.total} (encoded {self.encoded}, reused {self.reused}, empty text {self.empty}{extra}; "
            f"{self.seconds:.1f}s{rate})"
        )


@dataclass(frozen=True)
class EncodeReport:
    """Summary of one ``encode`` run (the CLI prints ``str(report)``)."""

    model: str
    dim: int
    pooling: str
    items: EntityCounts
    users: EntityCounts
    pca_dim: int
    #: Share of item-embedding variance the PCA keeps; None when the PCA was not refitted.
    pca_explained_variance: float | None
    pca_refit: bool
    seconds: float
    #: False when this run left the user texts alone (``run`` with a model that reads no similar users).
    users_encoded: bool = True

    def __str__(self) -> str:
        pca = (
            f"PCA {self.dim}->{self.pca_dim} refitted (explained variance {self.pca_explained_variance:.1%})"
            if self.pca_refit and self.pca_explained_variance is not None
            else f"PCA {self.dim}->{self.pca_dim} unchanged"
        )
        users = f"users {self.users}" if self.users_encoded else "users not encoded (only neighbors reads them)"
        return f"encode ({self.model}, dim {self.dim}, {self.pooling} pooling): items {self.items}; {users}; {pca}; {self.seconds:.1f}s"


# --------------------------------------------------------------------------- entry point


def run_encode(wh, cfg: EncodeConfig, *, users: bool = True) -> EncodeReport:
    """Encode item and user texts (only what changed), then refit the PCA view when needed.

    Args:
        wh: the warehouse (``wh.spark`` is the session).
        cfg: the ``encode`` section.
        users: also encode the user texts (``user_embeddings``, read only by ``neighbors``);
            ``run`` skips them when the model reads no similar users.

    Returns:
        :class:`EncodeReport` with encoded / reused / empty counts per table.

    Raises:
        EnvironmentProblem: the model is neither bundled nor a local model directory.
        ConfigError: a bad template, pooling or size in ``cfg``.
        TableNotFoundError, SchemaError: an input table is missing or lacks a column.
    """
    started = time.perf_counter()
    _check_config(cfg)
    path = encoders.resolve_model_path(cfg.model)
    info = encoders.read_model_info(path, cfg.pooling)
    if cfg.pca_dim > info.dim:
        raise ConfigError(f"encode.pca_dim {cfg.pca_dim}: larger than the model's embedding dimension {info.dim}")
    name = encoders.model_name(cfg.model)

    items = wh.read(schemas.ITEMS)
    schemas.require_columns(items, schemas.subset(schemas.ITEMS_SCHEMA, "item_id", "title"), schemas.ITEMS)
    sequences = wh.read(schemas.USER_SEQUENCES)
    schemas.require_columns(
        sequences, schemas.subset(schemas.USER_SEQUENCES_SCHEMA, "user_id", "train_item_idxs"), schemas.USER_SEQUENCES
    )
    item_stats = wh.read(schemas.ITEM_STATS)
    schemas.require_columns(
        item_stats, schemas.subset(schemas.ITEM_STATS_SCHEMA, "item_id", "item_idx"), schemas.ITEM_STATS
    )

    item_df = item_texts(items, cfg.item_template)

    with wh.job():
        item_counts = _encode_table(
            wh, item_df, "item_id", schemas.ITEM_EMBEDDINGS, name, info, cfg, truncate_left=False
        )
        user_counts = EntityCounts()
        if users:
            user_df = user_texts(sequences, item_stats, items, cfg)
            user_counts = _encode_table(
                wh, user_df, "user_id", schemas.USER_EMBEDDINGS, name, info, cfg, truncate_left=True
            )
        explained, refit = refresh_pca(wh, cfg, name, info.dim, force=item_counts.written)
    return EncodeReport(
        model=name, dim=info.dim, pooling=info.pooling, items=item_counts, users=user_counts,
        pca_dim=cfg.pca_dim, pca_explained_variance=explained, pca_refit=refit,
        seconds=time.perf_counter() - started, users_encoded=users,
    )


def _check_config(cfg: EncodeConfig) -> None:
    for key in ("batch_size", "max_tokens", "user_history_items", "user_max_chars", "pca_dim"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"encode.{key} {getattr(cfg, key)}: must be positive")
    if cfg.max_tokens < 2:
        raise ConfigError(f"encode.max_tokens {cfg.max_tokens}: must leave room for special tokens (>= 2)")
    parse_template(cfg.item_template, "encode.item_template")
    fields = {f for _, f in parse_template(cfg.user_template, "encode.user_template")[0]}
    if fields - {"titles"}:
        raise ConfigError(
            f"encode.user_template: unknown field {{{sorted(fields - {'titles'})[0]}}}; the only field is {{titles}}"
        )


# --------------------------------------------------------------------------- texts


def parse_template(template: str, key: str) -> tuple[list[tuple[str, str]], str]:
    """Split a ``{field}`` template into (literal before field, field) pairs and a trailing literal.

    Raises:
        ConfigError: positional ``{}`` fields, conversions or format specs, or bad braces.
    """
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"{key}: not a valid template ({exc})") from None
    segments: list[tuple[str, str]] = []
    trailing = ""
    for literal, field, spec, conversion in parts:
        if field is None:
            trailing = literal
            continue
        if not field.isidentifier():
            raise ConfigError(f"{key}: field {{{field}}} must be a column name, e.g. {{title}}")
        if spec or conversion:
            raise ConfigError(f"{key}: field {{{field}}} may not have a format spec or conversion")
        segments.append((literal, field))
    return segments, trailing


def render_template(template: str, fields: dict[str, Column], key: str) -> Column:
    """A Spark column with ``template`` filled from ``fields`` (each a non-null string column).

    Empty fields vanish with the literal just before them; the first shown field keeps only
    the label part of its literal (leading separators stripped); the trailing literal is
    kept only when some field was shown. The result is trimmed; all fields empty gives "".
    """
    segments, trailing = parse_template(template, key)
    acc: Column = F.lit("")
    for literal, name in segments:
        value = fields[name]
        label = literal.lstrip(_SEPARATOR_CHARS)
        acc = F.when(value == "", acc).otherwise(
            F.concat(acc, F.when(acc == "", F.lit(label)).otherwise(F.lit(literal)), value)
        )
    if trailing:
        acc = F.when(acc == "", acc).otherwise(F.concat(acc, F.lit(trailing)))
    return F.trim(acc)


def _clean(col: Column) -> Column:
    # Newlines and runs of spaces carry no meaning for the encoder and would break hashing stability.
    return F.trim(F.regexp_replace(F.coalesce(col.cast("string"), F.lit("")), r"\s+", " "))


def item_texts(items: DataFrame, template: str) -> DataFrame:
    """``(item_id, text)`` for every item, from ``template`` over the item columns.

    ``categories`` (array) is joined by ", " (empty entries dropped); other array columns the
    same way; a field that is not a column is read from the ``attributes`` map (missing: empty).
    """
    segments, _ = parse_template(template, "encode.item_template")
    types = {f.name: f.dataType for f in items.schema.fields}
    fields: dict[str, Column] = {}
    for _, name in segments:
        if name in types:
            col = F.col(name)
            if isinstance(types[name], T.ArrayType):
                col = F.array_join(F.filter(col.cast("array<string>"), lambda x: F.trim(x) != ""), ", ")
            fields[name] = _clean(col)
        elif "attributes" in types and isinstance(types["attributes"], T.MapType):
            fields[name] = _clean(F.element_at(F.col("attributes"), F.lit(name)))
        else:
            raise ConfigError(
                f"encode.item_template: field {{{name}}} is not a column of table {schemas.ITEMS} "
                f"({', '.join(types)}) and the table has no attributes map"
            )
    return items.select("item_id", render_template(template, fields, "encode.item_template").alias("text"))


def item_names(items: DataFrame, item_template: str) -> DataFrame:
    """``(item_id, title)``: how an item is named in a user's text: its title, or, for an item
    without one, its item text (``item_template``: brand, categories, ...).

    Why: catalogues with thin text (Sports: brand and categories, no titles) would otherwise
    give every user an empty text, a zero vector, and no similar users at all.
    """
    rendered = item_texts(items, item_template).withColumnRenamed("text", "item_text")
    title = _clean(F.col("title"))
    return items.select("item_id", title.alias("own")).join(rendered, "item_id", "left").select(
        "item_id", F.when(F.col("own") != "", F.col("own")).otherwise(F.coalesce("item_text", F.lit(""))).alias("title")
    )


def user_texts(sequences: DataFrame, item_stats: DataFrame, items: DataFrame, cfg: EncodeConfig) -> DataFrame:
    """``(user_id, text)`` for every user in ``user_sequences``.

    The text is built from ``train_item_idxs`` only: the last ``cfg.user_history_items`` of
    them, mapped to titles through ``item_stats`` (item_idx -> item_id) and ``items``; an
    item without a title stands in by its item text (:func:`item_names`), one with neither
    is skipped; titles oldest first, joined by "; ", then the last
    ``cfg.user_max_chars`` characters, in ``cfg.user_template``.
    """
    n = int(cfg.user_history_items)
    train = F.coalesce(F.col("train_item_idxs"), F.array().cast("array<int>"))
    recent = sequences.select(
        "user_id", F.slice(train, F.greatest(F.size(train) - F.lit(n - 1), F.lit(1)), F.lit(n)).alias("recent")
    )
    exploded = recent.select("user_id", F.posexplode("recent").alias("pos", "item_idx"))
    titles = (
        exploded.join(item_stats.select("item_idx", "item_id"), "item_idx", "left")
        .join(item_names(items, cfg.item_template), "item_id", "left")
        .where(F.col("title") != "")
        .groupBy("user_id")
        .agg(F.array_sort(F.collect_list(F.struct("pos", "title"))).alias("t"))
        .select("user_id", F.array_join(F.transform("t", lambda x: x["title"]), TITLE_SEPARATOR).alias("titles"))
    )
    m = int(cfg.user_max_chars)
    joined = sequences.select("user_id").join(titles, "user_id", "left").select(
        "user_id", F.coalesce("titles", F.lit("")).alias("titles")
    )
    cut = F.when(F.length("titles") > m, F.expr(f"substring(titles, length(titles) - {m - 1}, {m})")).otherwise(
        F.col("titles")
    )
    # The cut may start mid-title; trim so the text does not start with a space or separator.
    cut = F.regexp_replace(cut, r"^[\s;]+", "")
    return joined.select(
        "user_id", render_template(cfg.user_template, {"titles": cut}, "encode.user_template").alias("text")
    )


def encoder_signature(name: str, pooling: str, normalize: bool, max_tokens: int, truncate_left: bool) -> str:
    """Everything besides the text that changes an embedding; part of ``text_hash``."""
    side = "left" if truncate_left else "right"
    return f"{name}|pooling={pooling}|normalize={normalize}|max_tokens={max_tokens}|truncate={side}"


def text_hash_column(text: Column, signature: str) -> Column:
    """SHA-256 (hex) of ``signature`` NUL ``text``."""
    return F.sha2(F.concat(F.lit(signature + "\x00"), text), 256)


# --------------------------------------------------------------------------- incremental encoding


def _encode_table(wh, texts: DataFrame, key: str, table: str, name: str, info, cfg: EncodeConfig,
                  truncate_left: bool) -> EntityCounts:
    """Bring the embedding ``table`` up to date with ``texts`` (``key``, ``text``).

    Rows whose text hash (text plus encoder settings) and model are unchanged keep their
    embedding; the rest are encoded; rows no longer in ``texts`` are dropped. With nothing
    to encode or drop the table is not rewritten (``written`` False).
    """
    started = time.perf_counter()
    signature = encoder_signature(name, info.pooling, cfg.normalize, cfg.max_tokens, truncate_left)
    joined = _join_previous(wh, texts, key, table, name, signature).persist()
    try:
        is_new = F.coalesce(F.col("_new"), F.lit(False))
        total, reused, empty, removed = _count_changes(joined, is_new)
        to_encode = total - reused
        if to_encode == 0 and removed == 0 and wh.exists(table):
            return EntityCounts(total, 0, reused, 0, 0, False, time.perf_counter() - started)
        joined_new = joined.where(is_new)
        kept = joined_new.where("_reuse").select(
            key, F.col("old_embedding").alias("embedding"), F.col("old_model").alias("model"), "text_hash"
        )
        parts = _partitions(wh.spark, to_encode, cfg.batch_size)
        spec = encoders.EncodeSpec(
            path=info.path, pooling=info.pooling, normalize=cfg.normalize, batch_size=cfg.batch_size,
            max_tokens=cfg.max_tokens, device=cfg.device, truncate_left=truncate_left, precision=cfg.precision,
        )
        fresh = _embed_rows(joined_new.where(~F.col("_reuse")), key, name, spec, parts)
        out = schemas.conform(kept.unionByName(fresh), table)
        wh.write(out, table, mode="overwrite")
    finally:
        joined.unpersist()
    return EntityCounts(total, to_encode, reused, empty, removed, True, time.perf_counter() - started)


def _join_previous(wh, texts: DataFrame, key: str, table: str, name: str, signature: str) -> DataFrame:
    """The texts next to the rows of ``table`` that are already there.

    Returns:
        ``key``, ``text``, ``text_hash``, ``_new`` (true for a row of ``texts``),
        ``old_embedding``, ``old_model``, ``old_hash`` (null without an old row) and
        ``_reuse`` (the old embedding is still right: same text hash and model).

    Raises:
        SchemaError: ``table`` exists but lacks a contract column.
    """
    new = texts.select(
        key, "text", text_hash_column(F.col("text"), signature).alias("text_hash"), F.lit(True).alias("_new")
    )
    if not wh.exists(table):
        joined = new.select("*", *[F.lit(None).cast(t).alias(c) for c, t in
                                   (("old_embedding", "array<float>"), ("old_model", "string"), ("old_hash", "string"))])
        return joined.withColumn("_reuse", F.lit(False))
    old = wh.read(table)
    schemas.require_columns(old, schemas.SCHEMAS[table], table)
    old = old.select(
        key, F.col("embedding").alias("old_embedding"), F.col("model").alias("old_model"),
        F.col("text_hash").alias("old_hash"),
    )
    # Full join: rows only in the old table are the removed ones (counted, then dropped).
    joined = new.join(old, key, "full")
    reuse = F.coalesce(
        F.col("_new") & (F.col("old_hash") == F.col("text_hash")) & (F.col("old_model") == F.lit(name)),
        F.lit(False),
    )
    return joined.withColumn("_reuse", reuse)


def _count_changes(joined: DataFrame, is_new: Column) -> tuple[int, int, int, int]:
    """``(total, reused, empty, removed)`` rows of a :func:`_join_previous` frame (one job).

    ``empty`` counts the rows to encode whose text is empty.
    """
    row = joined.agg(
        F.sum(is_new.cast("long")).alias("total"),
        F.sum(F.col("_reuse").cast("long")).alias("reused"),
        F.sum((is_new & ~F.col("_reuse") & (F.col("text") == "")).cast("long")).alias("empty"),
        F.sum((~is_new).cast("long")).alias("removed"),
    ).first()
    return int(row["total"] or 0), int(row["reused"] or 0), int(row["empty"] or 0), int(row["removed"] or 0)


def _embed_rows(rows: DataFrame, key: str, name: str, spec, parts: int) -> DataFrame:
    """``key``, ``embedding``, ``model`` (``name``) and ``text_hash`` of ``rows`` encoded with ``spec``."""
    embed = encoders.embed_texts_udf(spec)
    return (
        rows.select(key, "text", "text_hash")
        .repartition(parts)
        # Similar lengths end up in the same Arrow batches; the UDF sorts by tokens too.
        .sortWithinPartitions(F.length("text"))
        .select(key, embed(F.col("text")).alias("embedding"), F.lit(name).alias("model"), "text_hash")
    )


def _partitions(spark, rows: int, batch_size: int) -> int:
    slots = default_parallelism(spark)  # a classic session and Spark Connect alike
    # One partition per task slot: each worker loads the model once and sorts a large window.
    return max(1, min(slots, math.ceil(rows / max(batch_size, 1))))


# --------------------------------------------------------------------------- PCA


def refresh_pca(wh, cfg: EncodeConfig, name: str, dim: int, force: bool) -> tuple[float | None, bool]:
    """Refit the PCA of ``item_embeddings`` when they changed (``force``) or the saved map does not
    match them: writes ``item_embeddings_pca`` and the map of encoder ``name`` (``dim``-wide
    embeddings to ``cfg.pca_dim``). Returns ``(explained variance or None, refitted)``."""
    version = wh.version(schemas.ITEM_EMBEDDINGS)
    if not force and wh.exists(schemas.ITEM_EMBEDDINGS_PCA):
        saved = load_pca(wh.root, cfg.model)
        if saved is not None and saved.item_embeddings_version == version and saved.model == name \
                and saved.components.shape == (cfg.pca_dim, dim):
            return None, False
    embeddings = wh.read(schemas.ITEM_EMBEDDINGS).select("item_id", "embedding")
    mean, components, explained = fit_pca(embeddings, dim, cfg.pca_dim)
    projected = project(embeddings, mean, components).select("item_id", "embedding", F.lit(name).alias("model"))
    wh.write(schemas.conform(projected, schemas.ITEM_EMBEDDINGS_PCA), schemas.ITEM_EMBEDDINGS_PCA, mode="overwrite")
    save_pca(wh.root, PcaMap(mean, components, explained, name, version))
    return explained, True


def fit_pca(embeddings: DataFrame, dim: int, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """PCA of the ``embedding`` column, computed distributedly.

    Each partition sums its rows and their outer products (E x E, float64); the driver adds
    the partial sums, forms the covariance and takes its top-``k`` eigenvectors. Sign
    convention: each component's largest-magnitude entry is positive.

    Returns:
        ``(mean (E,), components (k, E), explained variance ratio)``, float32 arrays.

    Raises:
        SchemaError: an embedding is null or not of length ``dim``.
        ConfigError: fewer than two rows.
    """
    def partial_sums(batches):
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        n, s, g = 0, np.zeros(dim, dtype=np.float64), np.zeros((dim, dim), dtype=np.float64)
        for batch in batches:
            col = batch.column(0)
            if not len(col):
                continue
            lengths = pc.list_value_length(col)
            if col.null_count or pc.min(lengths).as_py() != dim or pc.max(lengths).as_py() != dim:
                raise ValueError(f"embedding length differs from {dim} or is null")
            x = pc.list_flatten(col).to_numpy(zero_copy_only=False).reshape(len(col), dim).astype(np.float64)
            n += len(col)
            s += x.sum(0)
            g += x.T @ x
        yield pa.RecordBatch.from_pydict(
            {"n": [n], "s": [s.tobytes()], "g": [g.tobytes()]},
            schema=pa.schema([("n", pa.int64()), ("s", pa.binary()), ("g", pa.binary())]),
        )

    try:
        parts = embeddings.select("embedding").mapInArrow(partial_sums, "n long, s binary, g binary").collect()
    except Exception as exc:  # noqa: BLE001 - surface the data problem, not the Py4J trace
        if "embedding length differs" in str(exc):
            raise SchemaError(f"table {schemas.ITEM_EMBEDDINGS}: column 'embedding' has null or non-{dim}-long rows") from None
        raise
    n = sum(int(r["n"]) for r in parts)
    if n < 2:
        raise ConfigError(f"encode.pca_dim: PCA needs at least two item embeddings, have {n}")
    s = sum(np.frombuffer(r["s"], dtype=np.float64) for r in parts)
    g = sum(np.frombuffer(r["g"], dtype=np.float64).reshape(dim, dim) for r in parts)
    return from_moments(n, s, g, k)


def project(embeddings: DataFrame, mean: np.ndarray, components: np.ndarray) -> DataFrame:
    """``(item_id, embedding)`` with each embedding replaced by ``(x - mean) @ components.T``."""
    mean = np.asarray(mean, dtype=np.float32)
    comps = np.asarray(components, dtype=np.float32)
    dim, k = comps.shape[1], comps.shape[0]

    def apply(batches):
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        from longtail.encoders.pca import project_rows

        for batch in batches:
            col = batch.column("embedding")
            x = pc.list_flatten(col).to_numpy(zero_copy_only=False).reshape(len(col), dim)
            y = project_rows(x, mean, comps)
            values = pa.array(y.reshape(-1), type=pa.float32())
            offsets = pa.array(np.arange(0, len(col) * k + 1, k, dtype=np.int32))
            yield pa.RecordBatch.from_arrays(
                [batch.column("item_id"), pa.ListArray.from_arrays(offsets, values)], names=["item_id", "embedding"]
            )

    return embeddings.select("item_id", "embedding").mapInArrow(apply, "item_id string, embedding array<float>")
