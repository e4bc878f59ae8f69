"""The models, picked by name from a registry.

Every model is a :class:`~longtail.models.layers.SequentialRecommender` with
``user_vectors(seqs)``, ``item_vectors()``, ``loss(batch)``; LLM-ESR models also
``item_vectors_from_text(llm_embeddings)``. Build one with :func:`build_model`.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from longtail.core.errors import ModelNotFoundError
from longtail.models import bert4rec, gru4rec, llmesr, sasrec
from longtail.models.layers import SequentialRecommender
from longtail.models.llmesr import TextTables

_BACKBONES = {"sasrec": sasrec, "gru4rec": gru4rec, "bert4rec": bert4rec}

#: name -> (backbone, uses the LLM item tables)
REGISTRY: dict[str, tuple[str, bool]] = {
    "sasrec": ("sasrec", False),
    "gru4rec": ("gru4rec", False),
    "bert4rec": ("bert4rec", False),
    "llmesr_sasrec": ("sasrec", True),
    "llmesr_gru4rec": ("gru4rec", True),
    "llmesr_bert4rec": ("bert4rec", True),
}

MODEL_NAMES: tuple[str, ...] = tuple(REGISTRY)


def check_model_name(name: str) -> None:
    """Raise :class:`ModelNotFoundError` (listing the valid names) unless ``name`` is registered."""
    if name not in REGISTRY:
        raise ModelNotFoundError(f"model {name!r}: unknown; valid models: {', '.join(MODEL_NAMES)}")


def needs_text(name: str) -> bool:
    """True for models built on the LLM item embeddings (``llmesr_*``)."""
    check_model_name(name)
    return REGISTRY[name][1]


def objective(name: str) -> str:
    """``next`` or ``cloze``: how training batches for ``name`` are made."""
    check_model_name(name)
    return _BACKBONES[REGISTRY[name][0]].OBJECTIVE


def build_model(
    name: str, n_items: int, hp: Mapping[str, Any], text: TextTables | None = None
) -> SequentialRecommender:
    """A freshly initialised model.

    Args:
        name: a name in :data:`MODEL_NAMES`.
        n_items: catalogue size (item idxs 1..n_items).
        hp: hyperparameters, a :class:`~longtail.core.config.TrainConfig` as a dict
            (``hidden``, ``layers``, ``heads``, ``dropout``, ``max_len``, ``alpha``, ``cross_attention``).
        text: the LLM / PCA item tables; required for ``llmesr_*``.

    Raises:
        ModelNotFoundError: unknown name. ValueError: ``text`` missing or of the wrong shape.
    """
    backbone, uses_text = REGISTRY.get(name, (None, False))
    if backbone is None:
        check_model_name(name)
    if uses_text:
        if text is None:
            raise ValueError(f"model {name}: needs the LLM item tables")
        return llmesr.build(backbone, n_items, hp, text)
    builder: Callable[..., SequentialRecommender] = _BACKBONES[backbone].build
    return builder(n_items, hp)


__all__ = [
    "MODEL_NAMES", "REGISTRY", "SequentialRecommender", "TextTables",
    "build_model", "check_model_name", "needs_text", "objective",
]
