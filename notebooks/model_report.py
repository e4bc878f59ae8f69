# Databricks notebook source
# MAGIC %md
# MAGIC # Model report
# MAGIC Segment metrics of every evaluated model side by side (from the `evaluation` table that
# MAGIC `longtail evaluate` writes), as tables and charts. Plots are saved under `<warehouse>/_reports/plots/`.

# COMMAND ----------

import os

import matplotlib

if "DATABRICKS_RUNTIME_VERSION" not in os.environ:
    matplotlib.use("Agg")  # plain-script runs have no display
import matplotlib.pyplot as plt
import numpy as np
from pyspark.sql import Window
from pyspark.sql import functions as F

from longtail.notebook import open_warehouse, plots_folder, save_png


# Widgets on Databricks (dbutils is defined there), environment variables as a plain script.
cfg, wh = open_warehouse(globals().get("dbutils"), os.environ)
plots = plots_folder(wh)

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
    save_png(fig, f"{plots}/segments_{protocol}.png")
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
    save_png(ax.figure, f"{plots}/catalog.png")
    plt.show()
