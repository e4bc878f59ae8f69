# Databricks notebook source
# MAGIC %md
# MAGIC # longtail quickstart
# MAGIC Runs the whole pipeline (on a synthetic long-tail catalogue when the warehouse holds no data yet), then
# MAGIC queries the `recommendations` table the way a warehouse consumer would.
# MAGIC
# MAGIC Parameters (Databricks widgets, or environment variables when run as a plain script):
# MAGIC `LONGTAIL_CONF` (config file, default: the embedded `conf/local.yaml`), `LONGTAIL_WAREHOUSE`.

# COMMAND ----------

import os

from longtail.notebook import open_warehouse


# Widgets on Databricks (dbutils is defined there), environment variables as a plain script.
cfg, wh = open_warehouse(globals().get("dbutils"), os.environ)
spark = wh.spark
print(f"warehouse: {wh.root} ({wh.engine})")

# COMMAND ----------

# MAGIC %md ## Run the pipeline
# MAGIC `demo` writes the synthetic catalogue first; on real data, `ingest` then `run` do the same.

# COMMAND ----------

from longtail.pipeline import run_demo, run_pipeline

if wh.exists("recommendations"):
    print("recommendations already written: skipping the pipeline run")
elif wh.exists("interactions"):
    print(run_pipeline(wh, cfg))
else:
    print(run_demo(wh, cfg))

# COMMAND ----------

# MAGIC %md ## Query the recommendations
# MAGIC One partition per `run_date`, exactly K rows per user, ranks 1..K, never an item the user already has.

# COMMAND ----------

from pyspark.sql import functions as F

recs = wh.read("recommendations")
latest = recs.agg(F.max("run_date")).first()[0]
today = recs.where(F.col("run_date") == latest)
print(f"run_date {latest}: {today.select('user_id').distinct().count()} users")
today.groupBy("rank").count().orderBy("rank").show()

# COMMAND ----------

user = today.select("user_id").orderBy("user_id").first()["user_id"]
items = wh.read("items").select("item_id", "title")
history = (
    wh.read("interactions").where(F.col("user_id") == user).join(items, "item_id")
    .orderBy(F.col("ts").desc()).select("ts", "title")
)
print(f"user {user}, most recent first:")
history.show(10, truncate=60)
print("recommended:")
today.where(F.col("user_id") == user).join(items, "item_id").join(
    wh.read("item_stats").select("item_id", "segment"), "item_id", "left"
).orderBy("rank").select("rank", "title", "segment", "score").show(truncate=60)

# COMMAND ----------

# MAGIC %md ## Similar items
# MAGIC `similar_items`: per item, the top K of each source (`collaborative`, `semantic`, `blend`), never the item
# MAGIC itself, never an unavailable item. What a product page of the user's last item would show:

# COMMAND ----------

if wh.exists("similar_items"):
    similar = wh.read("similar_items")
    last_date = similar.agg(F.max("run_date")).first()[0]
    last_item = wh.read("interactions").where(F.col("user_id") == user).orderBy(F.col("ts").desc()).first()["item_id"]
    (
        similar.where((F.col("run_date") == last_date) & (F.col("item_id") == last_item))
        .join(items.withColumnRenamed("item_id", "similar_item_id"), "similar_item_id")
        .orderBy("source", "rank").select("source", "rank", "title", "score").show(30, truncate=50)
    )

# COMMAND ----------

# MAGIC %md ## Ask the model directly
# MAGIC `longtail.inference` is the interface `evaluate` and `score` use: load the trained model, or rank the
# MAGIC catalogue for a few users on the driver (the same lists the nightly job writes, nothing written).

# COMMAND ----------

from longtail.inference import load_model, recommend_users

model = load_model(wh, cfg.train.model)
print(f"{model.name} {model.version}: {model.item_vectors().shape[0] - 1} items, reads the last {model.max_len}")
print(recommend_users(wh, cfg.train.model, [user], k=5).merge(items.toPandas(), on="item_id")[["rank", "title", "score"]])

# COMMAND ----------

wh.read("recommendation_runs").orderBy(F.col("started_at").desc()).show(5, truncate=False)
