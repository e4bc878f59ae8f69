"""Text encoders without Spark: model lookup, pooling, batching, the real bundled MiniLM."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from longtail.core.errors import ConfigError, EnvironmentProblem
from longtail.encoders import text as encoders

TEXTS = [
    "Red matte lipstick, long lasting",
    "Shampoo for dry hair. Brand: Acme",
    "Crème hydratante für trockene Haut ✨ 保湿クリーム",
    "a",
]


@pytest.fixture(scope="module")
def minilm_path():
    return encoders.resolve_model_path("minilm")


@pytest.fixture(scope="module")
def direct(minilm_path):
    """all-MiniLM run plainly with transformers: one text at a time, mean pooling, L2 norm."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path), local_files_only=True)
    model = AutoModel.from_pretrained(str(minilm_path), local_files_only=True).eval()

    def embed(text: str, max_tokens: int = 128, side: str = "right") -> np.ndarray:
        tok.truncation_side = side
        enc = tok([text], return_tensors="pt", truncation=True, max_length=max_tokens)
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        vec = (hidden * m).sum(1) / m.sum(1)
        return torch.nn.functional.normalize(vec, dim=1)[0].numpy()

    return embed


# --------------------------------------------------------------------------- model lookup


def test_bundled_minilm_is_found_with_its_dimension_and_pooling(minilm_path):
    assert (minilm_path / "config.json").is_file()
    info = encoders.read_model_info(minilm_path)
    assert (info.dim, info.pooling, info.model_type) == (384, "mean", "bert")
    assert encoders.model_name("minilm") == "minilm"
    assert encoders.safe_model_name("minilm") == "minilm"


def test_missing_model_path_fails_with_a_message_naming_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(EnvironmentProblem, match="no-such-model.*not a local model directory"):
        encoders.resolve_model_path(str(missing))
    with pytest.raises(EnvironmentProblem, match="sentence-transformers/all-MiniLM-L6-v2"):
        encoders.resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EnvironmentProblem, match="no config.json"):
        encoders.resolve_model_path(str(tmp_path / "empty"))


def test_model_name_of_a_folder_is_its_absolute_path_and_file_safe(tmp_path):
    folder = tmp_path / "My Model (v2)"
    assert encoders.model_name(str(folder)) == str(folder.resolve())
    safe = encoders.safe_model_name(str(folder))
    assert safe.startswith("My_Model_v2-") and "/" not in safe and " " not in safe
    assert safe != encoders.safe_model_name(str(tmp_path / "other" / "My Model (v2)"))


def test_decoder_llm_configs_pool_the_last_token(tmp_path):
    qwen = tmp_path / "qwen3-embedding"
    qwen.mkdir()
    (qwen / "config.json").write_text(json.dumps(
        {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "hidden_size": 1024,
         "max_position_embeddings": 32768}
    ))
    info = encoders.read_model_info(qwen)
    assert (info.dim, info.pooling, info.max_positions) == (1024, "last_token", 32768)
    assert encoders.read_model_info(qwen, "mean").pooling == "mean"
    # A sentence-transformers pooling config wins over the guess from the model type.
    (qwen / "modules.json").write_text(json.dumps([{"path": "1_Pool", "type": "sentence_transformers.models.Pooling"}]))
    (qwen / "1_Pool").mkdir()
    (qwen / "1_Pool" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert encoders.read_model_info(qwen).pooling == "cls"
    with pytest.raises(ConfigError, match="encode.pooling 'max'"):
        encoders.read_model_info(qwen, "max")


def test_config_without_hidden_size_is_an_environment_problem(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(EnvironmentProblem, match="no hidden size"):
        encoders.read_model_info(tmp_path)


# --------------------------------------------------------------------------- pooling


def test_pooling_handles_left_and_right_padding():
    import torch

    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(encoders.pool(hidden, right, "last_token"), torch.stack([hidden[0, 1], hidden[1, 3]]))
    assert torch.equal(encoders.pool(hidden, left, "last_token"), torch.stack([hidden[0, 3], hidden[1, 3]]))
    assert torch.equal(encoders.pool(hidden, left, "cls"), torch.stack([hidden[0, 2], hidden[1, 0]]))
    assert torch.allclose(encoders.pool(hidden, right, "mean")[0], hidden[0, :2].mean(0))
    assert torch.allclose(encoders.pool(hidden, left, "mean")[0], hidden[0, 2:].mean(0))
    with pytest.raises(ConfigError):
        encoders.pool(hidden, right, "max")


def test_gather_keeps_order_and_bounds_chunks():
    batches = [pd.Series(range(i * 3, i * 3 + 3)) for i in range(5)]
    chunks = list(encoders.gather(iter(batches), window=7))
    assert [len(c) for c in chunks] == [9, 6]
    assert pd.concat(chunks).tolist() == list(range(15))


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_batched_sorted_encoding_equals_plain_transformers(minilm_path, direct):
    enc = encoders.get_encoder(minilm_path, "cpu", "float32")
    got = enc.encode(TEXTS, batch_size=3, max_tokens=128)
    want = np.stack([direct(t) for t in TEXTS])
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_empty_text_gives_zero_vector_and_long_text_is_truncated(minilm_path, direct):
    enc = encoders.get_encoder(minilm_path, "cpu", "float32")
    long_text = " ".join(f"word{i}" for i in range(2000))
    got = enc.encode(["", "   ", None, long_text], batch_size=2, max_tokens=16)
    assert not got[:3].any()
    np.testing.assert_allclose(got[3], direct(long_text, 16), atol=1e-5)
    # Left truncation keeps the end of the text (user histories: the most recent items).
    left = enc.encode([long_text], max_tokens=16, truncate_left=True)[0]
    np.testing.assert_allclose(left, direct(long_text, 16, "left"), atol=1e-5)
    assert np.abs(left - got[3]).max() > 1e-3


@pytest.mark.slow
def test_model_is_cached_per_path_device_and_dtype(minilm_path):
    encoders.clear_cache()
    a = encoders.get_encoder(minilm_path, "cpu", "float32")
    b = encoders.get_encoder(str(minilm_path), "cpu", "float32")
    assert a is b and len(encoders._CACHE) == 1
    assert encoders.get_encoder(minilm_path, "cpu", "bfloat16") is not a and len(encoders._CACHE) == 2


def test_device_choice_outside_spark_tasks():
    import torch

    assert encoders.task_device("cpu") == "cpu"
    assert encoders.task_cpus() is None
    if torch.cuda.is_available():
        assert encoders.task_device("auto") == "cuda:0"
        assert encoders.dtype_for("cuda:0") == "float16"
    else:
        assert encoders.task_device("auto") == "cpu"
        with pytest.raises(EnvironmentProblem, match="encode.device cuda"):
            encoders.task_device("cuda")
    assert encoders.dtype_for("cpu") == ("bfloat16" if encoders.cpu_has_bf16_units() else "float32")


def test_precision_auto_picks_bfloat16_only_on_cpus_with_bfloat16_units(monkeypatch):
    monkeypatch.setattr(encoders, "cpu_has_bf16_units", lambda: True)
    assert encoders.dtype_for("cpu") == "bfloat16" and encoders.dtype_for("cuda:1") == "float16"
    monkeypatch.setattr(encoders, "cpu_has_bf16_units", lambda: False)
    assert encoders.dtype_for("cpu") == "float32"
    assert encoders.dtype_for("cpu", "bfloat16") == "bfloat16" and encoders.dtype_for("cuda:0", "float32") == "float32"
    with pytest.raises(ConfigError, match="encode.precision 'int8'"):
        encoders.dtype_for("cpu", "int8")


@pytest.mark.slow
def test_bfloat16_embeddings_agree_with_float32(minilm_path):
    fp32 = encoders.get_encoder(minilm_path, "cpu", "float32").encode(TEXTS)
    bf16_enc = encoders.get_encoder(minilm_path, "cpu", "bfloat16")
    bf16 = bf16_enc.encode(TEXTS)
    assert bf16.dtype == np.float32 and next(bf16_enc.model.parameters()).dtype.is_floating_point
    assert str(next(bf16_enc.model.parameters()).dtype) == "torch.bfloat16"
    cosine = (fp32 * bf16).sum(1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(bf16, axis=1))
    assert cosine.min() > 0.999 and np.abs(fp32 - bf16).max() > 1e-6  # really computed in bfloat16


@pytest.mark.gpu
@pytest.mark.slow
def test_half_precision_gpu_encoding_matches_cpu(minilm_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    cpu = encoders.get_encoder(minilm_path, "cpu", "float32").encode(TEXTS)
    gpu_enc = encoders.get_encoder(minilm_path, "cuda:0")
    assert gpu_enc.dtype == "float16"
    gpu = gpu_enc.encode(TEXTS)
    assert gpu.dtype == np.float32
    assert (np.sum(cpu * gpu, axis=1) > 0.999).all()
