# Databricks notebook source
# MAGIC %md
# MAGIC # Long-tail analysis
# MAGIC How concentrated is demand? The item popularity curve, the cumulative share of interactions, and the
# MAGIC head/tail segments that `longtail sequences` wrote (`item_stats`, `user_stats`).
# MAGIC Plots are shown and saved as PNG files under `<warehouse>/_reports/plots/`.

# COMMAND ----------

import os

import matplotlib

if "DATABRICKS_RUNTIME_VERSION" not in os.environ:
    matplotlib.use("Agg")  # plain-script runs have no display
import matplotlib.pyplot as plt
import numpy as np

from longtail.notebook import open_warehouse, plots_folder, save_png


# Widgets on Databricks (dbutils is defined there), environment variables as a plain script.
cfg, wh = open_warehouse(globals().get("dbutils"), os.environ)
plots = plots_folder(wh)

# COMMAND ----------

item_stats = wh.read("item_stats").toPandas()
user_stats = wh.read("user_stats").toPandas()
popularity = np.sort(item_stats["popularity"].to_numpy())[::-1]
lengths = np.sort(user_stats["length"].to_numpy())[::-1]
print(f"{len(item_stats)} items, {len(user_stats)} users, {int(popularity.sum())} training interactions")

# COMMAND ----------

# MAGIC %md ## Popularity curve and cumulative share

# COMMAND ----------

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
head = item_stats["segment"].eq("head").sum()
axes[0].loglog(np.arange(1, len(popularity) + 1), np.maximum(popularity, 0.5))
axes[0].axvline(head, color="tab:red", linestyle="--", label=f"head/tail cut ({head} head items)")
axes[0].set(xlabel="item rank", ylabel="training interactions", title="Item popularity (log-log)")
axes[0].legend()
share = np.cumsum(popularity) / max(popularity.sum(), 1)
axes[1].plot(np.arange(1, len(share) + 1) / len(share), share)
axes[1].plot([0, 1], [0, 1], color="grey", linestyle=":")
axes[1].set(xlabel="share of items (most popular first)", ylabel="share of interactions",
            title="Cumulative share of interactions")
fig.tight_layout()
save_png(fig, f"{plots}/popularity_curve.png")
plt.show()

# COMMAND ----------

# MAGIC %md ## Head and tail shares

# COMMAND ----------

item_head = item_stats["segment"].eq("head")
user_head = user_stats["segment"].eq("head")
shares = {
    "items": (item_head.mean(), 1 - item_head.mean()),
    "interactions on items": (
        item_stats.loc[item_head, "popularity"].sum() / max(item_stats["popularity"].sum(), 1),
        item_stats.loc[~item_head, "popularity"].sum() / max(item_stats["popularity"].sum(), 1),
    ),
    "users": (user_head.mean(), 1 - user_head.mean()),
    "interactions by users": (
        user_stats.loc[user_head, "length"].sum() / max(user_stats["length"].sum(), 1),
        user_stats.loc[~user_head, "length"].sum() / max(user_stats["length"].sum(), 1),
    ),
}
for name, (h, t) in shares.items():
    print(f"{name:>24}: head {h:6.1%}  tail {t:6.1%}")

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
labels = list(shares)
axes[0].barh(labels, [shares[k][0] for k in labels], label="head")
axes[0].barh(labels, [shares[k][1] for k in labels], left=[shares[k][0] for k in labels], label="tail")
axes[0].set(xlim=(0, 1), title="Head and tail shares")
axes[0].legend()
axes[1].hist(lengths, bins=min(50, max(5, len(np.unique(lengths)))), log=True)
axes[1].set(xlabel="history length", ylabel="users (log)", title="User history lengths")
fig.tight_layout()
save_png(fig, f"{plots}/head_tail_shares.png")
plt.show()
