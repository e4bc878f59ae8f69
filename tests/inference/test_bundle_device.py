"""Where a scoring task scores: the GPU Spark assigned it, else the CPU (fake task contexts here)."""
from __future__ import annotations

import numpy as np
import pyspark
import pytest
import torch
from longtail.core.errors import EnvironmentProblem, InputError
from longtail.inference import bundle as bundle_module
from longtail.inference.bundle import ScoringBundle, check_device, stage, task_device, worker_bundles
from longtail.models.histories import pad_histories
from pyspark.resource import ResourceInformation
from tiny_scorers import MeanOfHistory

N, D = 300, 6


class FakeTask:
    """What ``TaskContext.get()`` returns inside a Spark task, with the resources given."""

    def __init__(self, gpus: list[str] | None) -> None:
        self.gpus = gpus

    def resources(self):
        return {} if self.gpus is None else {"gpu": ResourceInformation("gpu", self.gpus)}

    def cpus(self) -> int:
        return 1


@pytest.fixture()
def in_task(monkeypatch):
    """``in_task(gpus, cuda_devices)``: the running task gets ``gpus`` (None: no GPU resource) on
    a machine where torch sees ``cuda_devices`` CUDA devices (0: no CUDA)."""
    threads = torch.get_num_threads()

    def enter(gpus: list[str] | None, cuda_devices: int) -> None:
        monkeypatch.setattr(pyspark.TaskContext, "get", classmethod(lambda cls: FakeTask(gpus)))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_devices > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_devices)

    yield enter
    torch.set_num_threads(threads)  # worker_bundles set the task's cores


@pytest.mark.parametrize(
    "gpus,cuda_devices,want",
    [
        (["1"], 2, "cuda:1"),  # the task's GPU
        (["3"], 1, "cuda:0"),  # an executor isolated to its GPU sees it as 0
        (["1"], 0, "cpu"),  # assigned, but CUDA does not work in this process
        (None, 2, "cpu"),  # CUDA present, no GPU assigned to the task: the CPU
    ],
)
def test_task_device_is_the_gpu_spark_assigned(in_task, gpus, cuda_devices, want):
    in_task(gpus, cuda_devices)
    assert task_device() == want
    assert task_device("cpu") == "cpu"


def test_task_device_outside_a_task_is_the_cpu_and_settings_are_checked(monkeypatch):
    monkeypatch.setattr(pyspark.TaskContext, "get", classmethod(lambda cls: None))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert task_device() == "cpu"
    with pytest.raises(EnvironmentProblem, match="config key score.device: cuda, but this task has no GPU") as err:
        task_device("cuda")
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="config key score.device: scoring device 'tpu'"):
        task_device("tpu")


class FakeSession:
    """What ``check_device`` reads of a session: its Spark properties."""

    def __init__(self, **conf: str) -> None:
        self.conf = self
        self.values = {k.replace("_", "."): v for k, v in conf.items()}

    def get(self, key: str, default=None):
        return self.values.get(key, default)


@pytest.mark.parametrize(
    "conf,cuda,why",
    [
        ({"spark_master": "local[2]"}, False, "spark.task.resource.gpu.amount is not set"),
        ({"spark_master": "yarn"}, True, "spark.task.resource.gpu.amount is not set"),
        ({"spark_master": "local[2]", "spark_task_resource_gpu_amount": "1"}, False, "no CUDA device on this machine"),
    ],
)
def test_cuda_that_no_task_can_get_stops_on_the_driver_with_one_line_naming_the_key(monkeypatch, conf, cuda, why):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    with pytest.raises(EnvironmentProblem) as err:
        check_device(FakeSession(**conf), "cuda")
    message = str(err.value)
    assert message.startswith("config key score.device: cuda, but ") and why in message
    assert "score.device: auto or cpu" in message and "\n" not in message


def test_auto_and_cpu_pass_the_driver_check_anywhere_and_cuda_passes_where_tasks_get_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    no_gpus = FakeSession(spark_master="local[2]")
    check_device(no_gpus, "auto")
    check_device(no_gpus, "cpu")
    # Remote GPU executors: the driver has no CUDA, the tasks check theirs (task_device).
    check_device(FakeSession(spark_master="yarn", spark_task_resource_gpu_amount="0.25"), "cuda")
    with pytest.raises(InputError, match="config key score.device: scoring device 'gpu'"):
        check_device(no_gpus, "gpu")


def _bundle() -> ScoringBundle:
    items = torch.from_numpy(np.random.default_rng(1).normal(size=(N, D)).astype(np.float32))
    return ScoringBundle(
        scorer=MeanOfHistory(items), items=items.numpy(), excluded=np.array([0, 11, 12], dtype=np.int64),
        unit_embeddings=None, tail=np.zeros(N, dtype=bool), item_ids=[f"i{i}" for i in range(N)],
    )


def _users(n_users=30):
    rng = np.random.default_rng(0)
    histories = [list(rng.choice(np.arange(1, N), size=rng.integers(1, 20), replace=False)) for _ in range(n_users)]
    return pad_histories(histories), torch.from_numpy(rng.integers(1, N, n_users))


def test_a_task_without_a_gpu_scores_on_the_cpu_with_unchanged_results(in_task, tmp_path):
    reference = _bundle()  # never through worker_bundles: the driver's CPU bundle
    histories, targets = _users()
    want = reference.top_k(histories, 10, item_chunk=64)
    want_ranks = reference.ranks(histories, targets, torch.stack([targets, targets + 1], 1), 10, 50, 64)

    staged = stage(str(tmp_path), [_bundle()])
    in_task(None, 2)  # CUDA on the machine, none assigned to the task
    (bundle,) = worker_bundles(staged.token, staged)
    assert bundle.device == "cpu"
    got = bundle.top_k(histories, 10, item_chunk=64)
    assert all(torch.equal(w, g) for w, g in zip(want, got))
    got_ranks = bundle.ranks(histories, targets, torch.stack([targets, targets + 1], 1), 10, 50, 64)
    assert all(np.array_equal(w, g) for w, g in zip(want_ranks, got_ranks))
    assert not bundle._device_items  # no copy of the item matrix was made

    in_task(["1"], 2)  # the next task of this worker got GPU 1
    assert worker_bundles(staged.token, staged)[0].device == "cuda:1"
    staged.unpersist()
    bundle_module._STAGED.pop(staged.token, None)


@pytest.mark.gpu
def test_a_bundle_on_the_gpu_serves_the_cpu_lists():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    cpu, gpu = _bundle(), _bundle()
    gpu.device = "cuda:0"
    histories, targets = _users()
    want, got = cpu.top_k(histories, 10, item_chunk=64), gpu.top_k(histories, 10, item_chunk=64)
    assert got[1].device.type == "cpu" and torch.equal(want[1], got[1])
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    candidates = torch.stack([targets, targets + 1], 1)
    want_ranks = cpu.ranks(histories, targets, candidates, 10, 50, 64)
    got_ranks = gpu.ranks(histories, targets, candidates, 10, 50, 64)
    assert np.array_equal(want_ranks[2], got_ranks[2]) and np.array_equal(want_ranks[1], got_ranks[1])
    pytest.importorskip("faiss")
    index = bundle_module.make_index(cpu)  # a flat index: the exact lists, from candidates on the GPU
    got = gpu.top_k(histories, 10, item_chunk=64, index=index, candidates=40)
    assert torch.equal(want[1], got[1])
