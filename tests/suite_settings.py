"""Settings the fixtures and the deployment lanes share (a plain module: ``conftest`` is not importable
by name once several folders have one)."""
from __future__ import annotations

#: A demo small enough for the test suite: every stage runs for real, on tiny data.
DEMO_OVERRIDES = {
    "demo.users": 300,
    "demo.items": 120,
    "demo.train_epochs": 2,
    "train.hidden": 16,
    "train.max_len": 20,
    "train.batch_size": 64,
    # The default 4,096 shared negatives would be 34x this catalogue of 120 items per batch: the same
    # objective at a thirtieth of the cost.
    "train.negatives": 128,
    "encode.batch_size": 32,
    "encode.max_tokens": 32,
    "encode.pca_dim": 16,
    "neighbors.top_n": 5,
    # The distillation on, so that the suite's demo runs every stage (neighbours and user texts too).
    "train.alpha": 0.1,
    "evaluate.als_max_iter": 3,
    "evaluate.als_rank": 8,
}


#: What every process (this one, Spark's Python workers, training processes) needs to reach the server.
def s3_environment(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "longtail-test", "AWS_SECRET_ACCESS_KEY": "longtail-test",
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true",
    }
