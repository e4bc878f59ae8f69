# Databricks notebook source
# MAGIC %md
# MAGIC # Model report
# MAGIC Segment metrics of every evaluated model side by side (from the `evaluation` table that
# MAGIC `longtail evaluate` writes), as tables and charts. Plots are saved under `<warehouse>/_reports/plots/`.

# COMMAND ----------

import os
from io import BytesIO

import matplotlib

if "DATABRICKS_RUNTIME_VERSION" not in os.environ:
    matplotlib.use("Agg")  # plain-script runs have no display
import matplotlib.pyplot as plt
import numpy as np
from pyspark.sql import Window
from pyspark.sql import functions as F

from longtail import files
from longtail.config import load_config
from longtail.session import build_spark
from longtail.tables import Warehouse


def parameter(name: str, default: str | None) -> str | None:
    """A Databricks widget value when there is one, else the environment variable, else the default."""
    try:
        dbutils.widgets.text(name, default or "")  # noqa: F821 - defined on Databricks
        return dbutils.widgets.get(name) or default  # noqa: F821
    except NameError:
        return os.environ.get(name, default)


overrides = [f"warehouse={w}"] if (w := parameter("LONGTAIL_WAREHOUSE", None)) else []
cfg = load_config(parameter("LONGTAIL_CONF", None), overrides)
wh = Warehouse(build_spark(cfg.spark), cfg.warehouse, engine=cfg.delta.engine)
plots = f"{wh.root}/_reports/plots"


def save_png(fig, name: str) -> None:
    """Save a figure next to the tables (a local folder or object store alike)."""
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    files.write_bytes(f"{plots}/{name}", buffer.getvalue())

# COMMAND ----------

# The latest evaluation of each model.
evaluation = wh.read("evaluation")
newest = (
    evaluation.withColumn("at", F.max("evaluated_at").over(Window.partitionBy("model")))
    .where(F.col("evaluated_at") == F.col("at")).drop("at")
)
figures = newest.toPandas()
models = sorted(figures["model"].unique())
print(f"models evaluated: {', '.join(models)}")

# COMMAND ----------

# MAGIC %md ## Accuracy by segment

# COMMAND ----------

segments = ["overall", "tail_item", "head_item", "tail_user", "head_user"]
for protocol in ["sampled", "full"]:
    part = figures[(figures["protocol"] == protocol) & figures["segment"].isin(segments)]
    if part.empty:
        continue
    table = part.pivot_table(index="model", columns=["segment", "metric"], values="value")
    print(f"\n{protocol} protocol")
    print(table.round(4).to_string())
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=False)
    for ax, metric in zip(axes, ["hr@10", "ndcg@10"]):
        width = 0.8 / max(len(models), 1)
        x = np.arange(len(segments))
        for i, model in enumerate(models):
            rows = part[(part["model"] == model) & (part["metric"] == metric)].set_index("segment")
            ax.bar(x + i * width, [rows["value"].get(s, np.nan) for s in segments], width, label=model)
        ax.set_xticks(x + width * (len(models) - 1) / 2, segments, rotation=15)
        ax.set(title=f"{metric.upper()} ({protocol})")
    axes[0].legend()
    fig.tight_layout()
    save_png(fig, f"segments_{protocol}.png")
    plt.show()

# COMMAND ----------

# MAGIC %md ## Catalogue: coverage, tail coverage, diversity

# COMMAND ----------

catalog = figures[figures["protocol"] == "catalog"]
if not catalog.empty:
    table = catalog.pivot_table(index="model", columns="metric", values="value")
    print(table.round(4).to_string())
    ax = table.plot.bar(figsize=(8, 4), rot=0, title="Catalogue figures of the full top-10 lists")
    ax.figure.tight_layout()
    save_png(ax.figure, "catalog.png")
    plt.show()
