"""The model registry (longtail.models)."""
from __future__ import annotations

import pytest
import torch
from longtail.core.errors import LongtailError, ModelNotFoundError
from longtail.models import (
    MODEL_NAMES,
    build_model,
    check_model_name,
    needs_text,
    objective,
)


def test_names():
    assert set(MODEL_NAMES) == {
        "sasrec", "gru4rec", "bert4rec", "llmesr_sasrec", "llmesr_gru4rec", "llmesr_bert4rec",
    }
    assert needs_text("llmesr_gru4rec") and not needs_text("gru4rec")
    assert objective("llmesr_bert4rec") == "cloze" and objective("sasrec") == "next"


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ModelNotFoundError) as err:
        check_model_name("transformer9000")
    assert isinstance(err.value, LongtailError)
    assert "transformer9000" in str(err.value) and "llmesr_sasrec" in str(err.value)
    with pytest.raises(ModelNotFoundError):
        build_model("nope", 10, {})


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_has_the_interface(name, hp, seqs, batch, text):
    torch.manual_seed(0)
    model = build_model(name, 40, hp, text if needs_text(name) else None)
    users, items = model.user_vectors(seqs), model.item_vectors()
    assert users.shape[1] == items.shape[1] == hp["hidden"] * (2 if needs_text(name) else 1)
    assert (users @ items.T).shape == (3, 41)
    model.loss(batch).backward()
