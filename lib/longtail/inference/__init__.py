"""Inference: everything that turns a trained model (or a baseline) into scores, shared by
``evaluate``, ``score`` and the notebooks.

- :mod:`~longtail.inference.store`: model folders and the ``models`` table; :func:`load_model`
  gives a :class:`TrainedModel` (user vectors, item vectors, items placed from text);
- :mod:`~longtail.inference.items`: the one item-idx space and the mapping between its versions;
- :mod:`~longtail.inference.catalogue`: the items that can be ranked (:func:`load_catalogue`);
- :mod:`~longtail.inference.scorers` and :mod:`~longtail.inference.baselines`: one dot-product
  interface for trained models, popularity, ALS, content similarity and their blend;
- :mod:`~longtail.inference.bundle`: scoring a batch of users inside Spark tasks (top-K for
  serving, over the whole catalogue or an index's candidates; ranks under both protocols for
  evaluation);
- :mod:`~longtail.inference.recommend`: the same lists for a few users on the driver (notebooks).
"""
from longtail.inference.bundle import (
    ScoringBundle,
    Staged,
    broadcast_bundles,
    make_bundle,
    make_index,
    spread,
    stage,
    stage_bundles,
    worker_bundles,
)
from longtail.inference.catalogue import Catalogue, load_catalogue
from longtail.inference.items import ItemIndex, read_item_index
from longtail.inference.recommend import recommend_users
from longtail.inference.scorers import (
    ModelScorer,
    Scorer,
    ScorerFactory,
    hybrid_on,
    read_user_sequences,
)
from longtail.inference.store import TrainedModel, load_model

__all__ = [
    "Catalogue", "ItemIndex", "ModelScorer", "Scorer", "ScorerFactory", "ScoringBundle", "Staged", "TrainedModel",
    "broadcast_bundles", "hybrid_on", "load_catalogue", "load_model", "make_bundle", "make_index", "read_item_index",
    "read_user_sequences", "recommend_users", "spread", "stage", "stage_bundles",
    "worker_bundles",
]
