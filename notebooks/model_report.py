# Databricks notebook source
# MAGIC %md
# MAGIC # Model report
# MAGIC Segment metrics of every evaluated model side by side (from the `evaluation` table that
# MAGIC `longtail evaluate` writes), as tables and charts: accuracy by segment under the served (full-catalogue)
# MAGIC protocol and the paper's sampled one, tail-item accuracy under both, catalogue figures, and each model's
# MAGIC exposure by item-popularity decile. Plots are saved under `<warehouse>/_reports/plots/`.

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

# The latest evaluation of each model (the table is append-only: every evaluate run adds its rows).
evaluation = wh.read("evaluation")
newest = (
    evaluation.withColumn("at", F.max("evaluated_at").over(Window.partitionBy("model")))
    .where(F.col("evaluated_at") == F.col("at")).drop("at")
)
figures = newest.toPandas()
models = sorted(figures["model"].unique())
k = cfg.evaluate.k
print(f"models evaluated: {', '.join(models)}")

# COMMAND ----------

# MAGIC %md ## Accuracy by segment

# COMMAND ----------

segments = ["overall", "tail_item", "head_item", "tail_user", "head_user"]
for protocol in ["full", "sampled"]:
    part = figures[(figures["protocol"] == protocol) & figures["segment"].isin(segments)]
    if part.empty:
        continue
    table = part.pivot_table(index="model", columns=["segment", "metric"], values="value")
    print(f"\n{protocol} protocol")
    print(table.round(4).to_string())
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=False)
    for ax, metric in zip(axes, [f"hr@{k}", f"ndcg@{k}"]):
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

# MAGIC %md ## Catalogue: coverage, tail coverage, Gini, tail share, diversity

# COMMAND ----------

catalog = figures[(figures["protocol"] == "catalog") & (figures["segment"] == "overall")]
if not catalog.empty:
    print(catalog.pivot_table(index="model", columns="metric", values="value").round(4).to_string())
    shares = catalog[~catalog["metric"].str.startswith("avg_popularity")]  # the others are shares in [0, 1]
    table = shares.pivot_table(index="model", columns="metric", values="value")
    ax = table.plot.bar(figsize=(10, 4), rot=0, title=f"Catalogue figures of the full top-{k} lists")
    ax.figure.tight_layout()
    save_png(ax.figure, f"{plots}/catalog.png")
    plt.show()

# COMMAND ----------

# MAGIC %md ## Tail items under both protocols
# MAGIC The sampled protocol ranks the test item against 100 random (mostly tail) items; the full protocol against
# MAGIC the whole catalogue, as the nightly table does. A long-tail gain only counts where it survives the second.

# COMMAND ----------

tail = figures[(figures["segment"] == "tail_item") & (figures["metric"] == f"hr@{k}")]
if not tail.empty:
    table = tail.pivot_table(index="model", columns="protocol", values="value")
    print(table.round(4).to_string())
    ax = table.reindex(columns=[c for c in ["full", "sampled"] if c in table.columns]).plot.bar(
        figsize=(8, 4), rot=0, title=f"Tail-item HR@{k}: full catalogue vs 100 sampled negatives")
    ax.figure.tight_layout()
    save_png(ax.figure, f"{plots}/tail_items_by_protocol.png")
    plt.show()

# COMMAND ----------

# MAGIC %md ## Exposure by item popularity
# MAGIC Share of recommended slots by popularity decile of the catalogue (1 = the most popular tenth), against
# MAGIC the deciles' share of interactions: bars above the line in the later deciles mean the lists reach the tail.

# COMMAND ----------

exposure = figures[figures["protocol"] == "exposure"]
if not exposure.empty:
    slots = exposure[exposure["metric"].str.startswith("slots_decile_")]
    table = slots.assign(decile=slots["metric"].str.slice(13, 15).astype(int)).pivot_table(
        index="decile", columns="model", values="value")
    share = exposure[exposure["metric"].str.startswith("interactions_decile_")]
    interactions = share.groupby(share["metric"].str.slice(20, 22).astype(int))["value"].first()
    ax = table.plot.bar(figsize=(10, 4), rot=0, title=f"Share of top-{k} slots by item-popularity decile")
    ax.plot(range(len(interactions)), interactions.to_numpy(), "k.-", label="share of interactions")
    ax.set(xlabel="popularity decile (1 = most popular)", ylabel="share")
    ax.legend()
    ax.figure.tight_layout()
    save_png(ax.figure, f"{plots}/exposure_by_popularity_decile.png")
    plt.show()
