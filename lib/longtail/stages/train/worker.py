"""The training loop of one torch process (``single``, or a DDP rank under TorchDistributor).

Rank r reads only its own shards; ranks agree on a step count (all-reduce MIN) so that DDP
stays in lock-step; negatives come from a generator seeded by (seed, rank, epoch). Rank 0
validates, early-stops with patience and saves the best model. Every rank returns the
model folder's path (TorchDistributor keeps whichever process's value it sees last).
"""
from __future__ import annotations

import io
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np

from longtail.core.files import npy_bytes, read_bytes
from longtail.core.progress import write_progress
from longtail.inference.store import HUBNESS_FILE, OPTIMIZER_FILE, save_model_dir
from longtail.models.histories import pad_left
from longtail.models.optim import ItemRowsAdam, WeightAverage, clip_grad_norm, sparse_item_updates
from longtail.ranking.topk import log_popularity
from longtail.stages.train.data import (
    EpochRows,
    NegativeSampler,
    RankData,
    UserTable,
    bucketed_order,
    load_popularity,
)
from longtail.stages.train.schedule import LearningRate
from longtail.stages.train.validation import ExposureCalibration, ValidationSet, means

log = logging.getLogger("longtail.stages.train")


def train_worker(params: dict) -> str:
    """Train in one process (rank from the torchrun / barrier environment); return the model path.

    Module-level and fed plain values only, so TorchDistributor can pickle it small.

    Args:
        params: ``model``, ``version``, ``run_dir``, ``model_dir``, ``hp`` (TrainConfig as a
            dict), ``world``, ``threads``, ``n_items``, ``n_shards``, ``objective``, ``text``,
            ``llm_dim``, ``encoder``, ``train_users``, ``valid_negatives``.
    """
    import torch
    import torch.distributed as dist

    # torchrun and Spark's barrier tasks tell a process its place through these variables.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = bool(params["hp"].get("use_gpu")) and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    if rank == 0 and not params.get("driver_progress"):  # else the driver prints the epochs (core.progress)
        _show_progress()
    distributed = world > 1
    if distributed:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        return _train(params, rank, world, device, distributed)
    finally:
        if distributed:
            dist.destroy_process_group()


def _show_progress() -> None:
    # A torchrun / barrier-task process has no logging set up: show rank 0's epoch lines on
    # its stdout, which TorchDistributor streams to the driver.
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s longtail.train %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


@dataclass
class _Best:
    """Early stopping: the best validation so far and its weights."""

    patience: int
    epoch: int = 0
    ndcg: float = -1.0
    hr: float = 0.0
    state: dict | None = field(default=None, repr=False)
    #: Whether this rank keeps the best weights (rank 0 saves them; the others only follow the figures).
    keep: bool = True
    #: The Adam state at the best epoch, kept only when ``train.warm_start`` is on (the next
    #: warm start of this model resumes from it; see :func:`_carry_optimizer`).
    optimizer: object | None = field(default=None, repr=False)
    optimizer_state: dict | None = field(default=None, repr=False)

    def update(self, epoch: int, ndcg: float, hr: float, module) -> bool:
        """Record a validation; True when patience ran out."""
        if ndcg > self.ndcg:
            self.epoch, self.ndcg, self.hr = epoch, ndcg, hr
            if self.keep:
                self.state = {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}
            if self.optimizer is not None:
                from longtail.models.warm_start import optimizer_state_by_name

                self.optimizer_state = optimizer_state_by_name(self.optimizer, module)
            return False
        return epoch - self.epoch >= self.patience


def _train(params: dict, rank: int, world: int, device, distributed: bool) -> str:
    import torch

    hp = params["hp"]
    seed, n_items, max_len = int(hp["seed"]), int(params["n_items"]), int(hp["max_len"])
    cloze = params["objective"] == "cloze"
    users, data = _load_data(params, rank, world)
    module, model, item_tables = _build(params, device, distributed)
    # Fused: one pass per tensor instead of one per operation: the update of the item table is
    # 12x cheaper on one CPU core (10 ms against 121 ms per step at 200,000 items x 64), the
    # same arithmetic (benchmarks/catalogue_costs.py). Sparse item tables: row-wise (models.optim).
    optimizer = ItemRowsAdam(module.parameters(), item_tables, lr=float(hp["lr"]),
                             betas=(0.9, float(hp.get("adam_beta2", 0.999))),
                             weight_decay=float(hp["weight_decay"]), fused=True)
    params["item_updates"] = "sparse" if item_tables else "dense"
    _carry_optimizer(params, optimizer, module)
    schedule = LearningRate.from_hp(hp, carried=_carried(params))
    # A warm start trains each epoch on the changed users and a replayed share of the others.
    replay = float(hp.get("warm_start_replay", 1.0)) if _carried(params) else 1.0
    epoch_rows = EpochRows(data.changed, replay, cloze)
    per_rank, _, steps, seen_per_epoch = _schedule(epoch_rows.rows, cloze, int(hp["batch_size"]), world, device,
                                                   distributed)
    plan = _EpochPlan.build(params, data, users, device)
    decay = average_decay(float(hp.get("weight_average", 0.0)), steps)
    average = WeightAverage(module, decay) if decay > 0 else None  # validated and saved in place of the last step
    params["weight_average"] = decay
    params["precision"] = plan.precision
    if plan.bucket > 0:  # batches of similar lengths: split only where lengths pass a power of two (length_groups)
        module.loss_group_rows = max(module.loss_group_rows, per_rank)
    # Every rank builds the same seeded validation set and ranks its own share of it each epoch
    # (the figures are summed across ranks), so validation costs 1 / world of one rank's time;
    # rank 0 keeps the whole set for the exposure calibration after training.
    validation = ValidationSet.build(users, n_items, max_len, seed, int(params["valid_negatives"]),
                                     limit=hp.get("validation_users"))
    share = validation.part(rank, world)
    best = _Best(_patience(params), optimizer=optimizer if hp.get("warm_start") and rank == 0 else None,
                 keep=rank == 0)
    history: list[dict] = []
    epochs, eval_every = int(hp["epochs"]), max(1, int(hp["eval_every"]))
    epoch, stopped_early = 0, False
    for epoch in range(1, epochs + 1):
        rng = np.random.default_rng([seed, rank, epoch])
        torch.manual_seed(_mix(seed, rank, epoch))
        order = plan.order(epoch_rows.ids(rng), data, per_rank, rng)
        rate = schedule.rate  # of the epoch's first step: decays and warm starts show in metrics.json
        loss, seconds, clipped, skipped = _run_epoch(
            model, module, optimizer, data, plan, rng, order, steps, per_rank, device, schedule, average
        )
        entry = {"epoch": epoch, "loss": loss, "seconds": seconds, "clipped_steps": clipped, "skipped_steps": skipped,
                 "lr": rate}
        history.append(entry)
        if _diverged(loss, device, distributed):
            _stop_diverged(entry, best, rank, validated=(epoch - 1) // eval_every > 0)
            stopped_early = True
            break
        if epoch % eval_every == 0 or epoch == epochs:
            with average.applied() if average is not None else nullcontext():
                stop = _validate(share, best, module, entry, device, plan.validate, distributed, rank)
            if rank == 0:
                write_progress(params["run_dir"], history)  # the driver prints it (core.progress)
            if _agree(stop, device, distributed):
                stopped_early = True
                break
            if _agree(rank == 0 and schedule.wants_decay(best.epoch == epoch), device, distributed):
                schedule.decay()
                entry["lr_after"] = schedule.rate
    if rank == 0:
        _save(params, module, best, history, epoch, stopped_early, seen_per_epoch, world, validation, device)
    if distributed:
        import torch.distributed as dist

        dist.barrier()
    return params["model_dir"]


def average_decay(setting: float, steps_per_epoch: int) -> float:
    """The per-step decay of ``train.weight_average``: ``setting`` (0: off), lowered where it would
    average over more than two epochs of steps (``1 - 1 / (2 x steps)``).

    Why: the horizon of a decay is about ``1 / (1 - decay)`` steps (0.995: 200, about an epoch of Beauty
    or Sports at batch 128); on a small catalogue with a few steps per epoch that would average the
    weights of many epochs ago, from before the model learnt what it knows now.
    """
    if setting <= 0:
        return 0.0
    return min(setting, 1.0 - 1.0 / (2 * max(1, steps_per_epoch)))


def _patience(params: dict) -> int:
    """Validations without improvement before stopping: ``train.warm_start_patience`` when this run
    carried a previous version's weights, else ``train.patience``."""
    hp = params["hp"]
    carried = _carried(params) and hp.get("warm_start_patience") is not None
    return int(hp["warm_start_patience"] if carried else hp["patience"])


def _carried(params: dict) -> bool:
    """Whether this run continues a previous version (``train.warm_start`` found one and staged it)."""
    return bool(params.get("warm_start"))


def _load_data(params: dict, rank: int, world: int) -> tuple[UserTable | None, RankData]:
    """The user table (validation and distillation need it) and this rank's training rows."""
    run_dir = params["run_dir"]
    distill = bool(params["text"]) and float(params["hp"]["alpha"]) > 0
    users = UserTable.load(f"{run_dir}/users")  # every rank validates a share of the users
    data = RankData.load(f"{run_dir}/shards", rank, world, int(params["n_shards"]), users if distill else None)
    return users, data


def _build(params: dict, device, distributed: bool):
    """``(module, model, item_tables)``: the freshly initialised model, what the loop calls
    (DDP-wrapped) and the item tables updated row-wise (``train.item_updates``; empty: dense)."""
    import torch

    from longtail.models import TextTables, build_model

    text = None
    if params["text"]:
        with np.load(io.BytesIO(read_bytes(f"{params['run_dir']}/text.npz"))) as arrays:
            text = TextTables.from_arrays(arrays["llm"], arrays["pca"], arrays["pca_mean"], arrays["pca_components"])
        if params["hp"].get("view_gate") == "popularity":
            text.popularity = torch.as_tensor(load_popularity(params["run_dir"]).astype(np.float64))
    torch.manual_seed(int(params["hp"]["seed"]))
    module = build_model(params["model"], int(params["n_items"]), params["hp"], text)
    if _carried(params):  # every rank loads the same carried state (DDP checks they agree)
        module.load_state_dict(_carried_state(params, module, text))
    item_tables = module.sparse_item_tables() if _sparse_items(params, device, distributed) else []
    module = module.to(device)  # moves each parameter's data: the same Parameter objects
    if not distributed:
        return module, module, item_tables
    from torch.nn.parallel import DistributedDataParallel

    # The frozen LLM table is a buffer: synced once at init, never re-broadcast per step.
    ddp = DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False
    )
    return module, ddp, item_tables


def step_precision(setting: str | None, device_type: str) -> str:
    """``train.precision`` for a device: ``float32`` or ``bfloat16`` as set; ``auto``: bfloat16 where the
    device multiplies it natively (a CUDA GPU that supports it; a CPU with AMX or AVX512-BF16,
    :func:`~longtail.encoders.text.cpu_has_bf16_units`), else float32 (emulated bfloat16 is slower).
    None (models saved before the key): float32."""
    if setting in (None, "float32", "bfloat16"):
        return setting or "float32"
    import torch

    from longtail.encoders.text import cpu_has_bf16_units

    if device_type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_has_bf16_units() else "float32"


def _sparse_items(params: dict, device, distributed: bool) -> bool:
    """``train.item_updates`` resolved for this run (``auto``: :func:`~longtail.models.optim.sparse_item_updates`
    where the step builds only the rows it touches: not with ``ce``, the popularity gate or weight decay)."""
    hp = params["hp"]
    setting = hp.get("item_updates", "dense")  # models saved before the key: dense
    eligible = hp["loss"] != "ce" and hp.get("view_gate", "none") != "popularity" and not float(hp["weight_decay"])
    if setting == "auto" and not eligible:
        return False
    return sparse_item_updates(setting, int(params["n_items"]), device.type, distributed)


def _carried_state(params: dict, module, text) -> dict:
    """The previous version's weights remapped onto this run's item index (``train.warm_start``;
    the driver staged them in the run folder, :mod:`~longtail.stages.train.warm_start`)."""
    import torch

    from longtail.models.warm_start import carry_state

    folder = f"{params['run_dir']}/warm_start"
    old = torch.load(io.BytesIO(read_bytes(f"{folder}/weights.pt")), map_location="cpu", weights_only=True)
    old_rows = np.load(io.BytesIO(read_bytes(f"{folder}/old_rows.npy")))
    return carry_state(module, old, old_rows, text.llm if text is not None else None)


def _carry_optimizer(params: dict, optimizer, module) -> None:
    """Resume Adam from the previous version's state when it saved one.

    Why: the saved moments are the per-parameter step sizes the model converged with. A fresh
    Adam divides its young moments by their bias correction, so its first steps move every
    weight by about the full ``lr`` whatever its gradient's scale, a push away from the optimum
    the model starts at; resumed, training continues with the step sizes it ended with. The
    effect is small: on a tiny SASRec continued for 30 steps after 600 (5 seeds) resuming made
    no difference at lr 1e-3 and lowered the held-out loss a little at lr 1e-2 (1.641 against
    1.645). It costs a copy of Adam's two moments at each new best epoch on rank 0 and an
    ``optimizer.pt`` twice the weights' size, both only with ``train.warm_start`` on. A version
    trained without it saved no Adam state: Adam then starts fresh (the weights still carry over).
    """
    info = params.get("warm_start")
    if not info or not info.get("optimizer"):
        return
    import torch

    from longtail.models.warm_start import carry_optimizer

    folder = f"{params['run_dir']}/warm_start"
    old = torch.load(io.BytesIO(read_bytes(f"{folder}/optimizer.pt")), map_location="cpu", weights_only=True)
    old_rows = np.load(io.BytesIO(read_bytes(f"{folder}/old_rows.npy")))
    carry_optimizer(optimizer, module, old, old_rows)


def _schedule(n: int, cloze: bool, batch_size: int, world: int, device, distributed: bool) -> tuple[int, int, int, int]:
    """``(rows per rank per step, rows per epoch, steps, sequences seen per epoch by all ranks)``.

    The global batch is ``batch_size`` whatever the number of processes; ranks run the
    smallest step count among them so that DDP stays in lock-step.
    """
    import torch

    per_rank = max(1, math.ceil(batch_size / world))
    rows = n * (2 if cloze else 1)  # cloze: every row once masked at random, once at its last item
    steps = math.ceil(rows / per_rank)
    seen = min(rows, steps * per_rank)
    if distributed:
        import torch.distributed as dist

        t = torch.tensor([steps], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        steps = int(t.item())
        t = torch.tensor([min(rows, steps * per_rank)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        seen = int(t.item())
    return per_rank, rows, steps, seen


@dataclass
class _EpochPlan:
    """What the loop does besides the plain steps: the objective's extra batch arrays, the
    distillation teachers' schedule, length bucketing and the validation protocol(s)."""

    hp: dict
    n_items: int
    cloze: bool
    loss: str
    validate: str
    teachers: str
    bucket: int
    sampler: NegativeSampler | None = None
    users: UserTable | None = None
    #: Rows of the user table that some training row distils from (``teachers: epoch``).
    teacher_rows: np.ndarray | None = None
    #: The steps' arithmetic, ``train.precision`` resolved for this rank's device.
    precision: str = "float32"

    @classmethod
    def build(cls, params: dict, data: RankData, users: UserTable | None, device) -> _EpochPlan:
        hp, n_items = params["hp"], int(params["n_items"])  # hp: every TrainConfig key
        plan = cls(hp, n_items, params["objective"] == "cloze", hp["loss"], hp["validate"], hp["teachers"],
                   int(hp["length_buckets"]), users=users, precision=step_precision(hp.get("precision"), device.type))
        if plan.loss == "sampled_softmax":
            draw = hp["negative_sampling"]
            popularity = load_popularity(params["run_dir"]) if draw == "popularity" else None
            plan.sampler = NegativeSampler(n_items, int(hp["negatives"]), draw, popularity, bool(hp["logq"]))
        if data.neighbors is not None and plan.teachers == "epoch":
            plan.teacher_rows = np.unique(data.neighbors[data.neighbors >= 0])
        return plan

    def order(self, shuffled: np.ndarray, data: RankData, per_rank: int, rng) -> np.ndarray:
        """The epoch's row order: the shuffle, length-bucketed when ``length_buckets`` is set."""
        if self.bucket <= 0:
            return shuffled
        return bucketed_order(shuffled, data.lengths(shuffled), per_rank, self.bucket, rng)

    def teacher_cache(self, module, device):
        """``[users, D]`` distillation targets from the weights at the epoch's start (rows no one
        distils from stay zero), or None when teachers are encoded per step."""
        if self.teacher_rows is None:
            return None
        import torch

        rows, users, max_len = self.teacher_rows, self.users, int(self.hp["max_len"])
        seqs = pad_left(users.train_values, users.train_offsets, rows, max_len, drop_last=not self.cloze)
        reps = module.teacher_reps(torch.from_numpy(seqs).to(device))
        out = torch.zeros((users.user_idx.size, reps.shape[1]), dtype=reps.dtype, device=reps.device)
        out[torch.from_numpy(rows).to(reps.device)] = reps
        return out


def _run_epoch(model, module, optimizer, data: RankData, plan: _EpochPlan, rng, order, steps: int, per_rank: int,
               device, schedule: LearningRate, average: WeightAverage | None = None) -> tuple[float, float, int, int]:
    """One pass over this rank's rows in ``order``; returns ``(mean loss of the finite steps, seconds,
    clipped steps, skipped steps)``; a step whose gradient is not finite is skipped. ``average``:
    updated after every optimiser step (``train.weight_average``)."""
    import torch

    model.train()
    total = torch.zeros((), device=device)
    started = time.perf_counter()
    teacher = plan.teacher_cache(module, device)
    hp = plan.hp
    clip, clipped, skipped, counted = float(hp["grad_clip"]), 0, 0, 0
    low_precision = plan.precision == "bfloat16"
    for step in range(steps):
        ids = order[step * per_rank : (step + 1) * per_rank]
        batch = data.batch(ids, rng, plan.n_items, int(hp["max_len"]), plan.cloze, float(hp["bert_mask_prob"]),
                           plan.sampler, plan.loss, plan.teachers)
        batch = {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
        if teacher is not None:
            batch["teacher"] = teacher
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=low_precision):
            loss = model(batch)
        loss.backward()
        # The gradient norm is the same on every rank (DDP all-reduced it), so every rank skips a
        # step with a non-finite gradient alike; one such step would otherwise turn every weight NaN.
        norm = clip_grad_norm(model.parameters(), clip if clip > 0 else float("inf"))
        if not bool(torch.isfinite(norm)):
            skipped += 1
            continue
        clipped += bool(clip > 0 and norm > clip)
        schedule.step(optimizer)
        optimizer.step()
        if average is not None:
            average.update()
        if bool(torch.isfinite(loss)):
            total += loss.detach()
            counted += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if skipped:
        log.warning("%d of %d steps had a non-finite gradient and were skipped", skipped, steps)
    mean = float(total.item()) / counted if counted else float("nan")  # no finite step at all: diverged
    return mean, time.perf_counter() - started, clipped, skipped


def _validate(share: ValidationSet, best: _Best, module, entry: dict, device, select: str, distributed: bool,
              rank: int) -> bool:
    """Every rank: validate this rank's share of the users, add up the ranks' sums, record the
    figures in ``entry`` and ``best``; True when training should stop (the same on every rank).

    ``select`` is the protocol that picks the model (``train.validate``); with ``full`` the
    sampled figures are recorded beside it (nearly free once the users are encoded).
    """
    started = time.perf_counter()
    protocols = ("sampled", "full") if select == "full" else ("sampled",)
    figures = means(_summed(share.totals(module, device, protocols=protocols), device, distributed))
    ndcg, hr = figures[select]
    entry.update({"valid_ndcg10": ndcg, "valid_hr10": hr, "valid_seconds": time.perf_counter() - started})
    for protocol, (n, h) in figures.items():
        entry[f"valid_{protocol}_ndcg10"], entry[f"valid_{protocol}_hr10"] = n, h
    if rank == 0:
        log.info(
            "epoch %d: loss %.4f, %.1fs training, valid NDCG@10 %.4f HR@10 %.4f (%s)%s",
            entry["epoch"], entry["loss"], entry["seconds"], ndcg, hr, select,
            "".join(f"; {p} {v[0]:.4f}/{v[1]:.4f}" for p, v in figures.items() if p != select),
        )
    return best.update(entry["epoch"], ndcg, hr, module)


def _summed(totals: dict[str, np.ndarray], device, distributed: bool) -> dict[str, np.ndarray]:
    """The ranks' validation sums added up (every rank gets them); as they are in one process."""
    if not distributed:
        return totals
    import torch
    import torch.distributed as dist

    names = sorted(totals)
    flat = torch.tensor(np.concatenate([totals[n] for n in names]), dtype=torch.float64, device=device)
    dist.all_reduce(flat)
    values = flat.cpu().numpy()
    return {n: values[3 * i : 3 * i + 3] for i, n in enumerate(names)}


def _diverged(loss: float, device, distributed: bool) -> bool:
    """Whether any rank's epoch loss is not finite (the weights are lost to NaN/inf from here on)."""
    bad = not math.isfinite(loss)
    if not distributed:
        return bad
    import torch
    import torch.distributed as dist

    flag = torch.tensor([int(bad)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _stop_diverged(entry: dict, best: _Best, rank: int, validated: bool) -> None:
    """Stop training on a non-finite loss, keeping the best validated weights; every rank raises
    alike when no epoch was validated yet (``validated``: the same on every rank)."""
    entry["diverged"] = True
    if not validated:
        raise RuntimeError(
            f"train: the training loss became {entry['loss']} in epoch {entry['epoch']}, before any validation; "
            "lower train.lr or set train.grad_clip"
        )
    if rank == 0:
        log.warning("epoch %d: the training loss is %s; training stops, the best epoch (%d) is kept",
                    entry["epoch"], entry["loss"], best.epoch)


def _agree(stop: bool, device, distributed: bool) -> bool:
    """Rank 0's stop decision, shared with every rank."""
    if not distributed:
        return stop
    import torch
    import torch.distributed as dist

    flag = torch.tensor([int(stop)], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def _save(params: dict, module, best: _Best, history: list[dict], epochs_run: int, stopped_early: bool,
          seen_per_epoch: int, world: int, validation: ValidationSet, device) -> None:
    """Rank 0: put the best weights back, choose the serving popularity penalty, write the model folder."""
    module.load_state_dict(best.state)
    exposure = _calibrate_exposure(params, module, validation, device)
    seconds = float(np.mean([e["seconds"] for e in history])) if history else 0.0
    metrics = {
        "model": params["model"], "version": params["version"],
        "best_epoch": best.epoch, "valid_ndcg10": best.ndcg, "valid_hr10": best.hr,
        "epochs_run": epochs_run, "stopped_early": stopped_early,
        "seconds_per_epoch": seconds,
        "sequences_per_second": seen_per_epoch / seconds if seconds > 0 else 0.0,
        "sequences_per_epoch": seen_per_epoch, "processes": world, "seed": int(params["hp"]["seed"]),
        "validation_users": validation.n, "validation_negatives": validation.negatives.shape[1],
        "validation_protocol": params["hp"]["validate"],
        "exposure_calibration": exposure.as_dict() if exposure else None,
        "warm_start": params.get("warm_start"),
        "item_updates": params.get("item_updates", "dense"),
        "precision": params.get("precision", "float32"),
        "weight_average": params.get("weight_average", 0.0),
        "history": history,
    }
    config = {
        "model": params["model"], "version": params["version"], "n_items": int(params["n_items"]),
        "llm_dim": int(params.get("llm_dim") or 0), "encoder": params.get("encoder"),
        "objective": params["objective"], "max_len": int(params["hp"]["max_len"]),
        "hyperparameters": params["hp"],
        # What ``score.popularity_penalty: model`` serves the model with (``exposure_adjustment``;
        # ``popularity_penalty`` is its popularity part, for readers of the older key).
        "exposure_adjustment": {"kind": exposure.kind, "penalty": exposure.penalty} if exposure else None,
        "popularity_penalty": exposure.penalty if exposure and exposure.kind == "popularity" else 0.0,
    }
    extra = {}
    if exposure and exposure.kind == "hubness":
        extra[HUBNESS_FILE] = npy_bytes(exposure.bias)
    if best.optimizer_state is not None:  # what the next warm start of this model resumes Adam from
        import torch

        buf = io.BytesIO()
        torch.save(best.optimizer_state, buf)
        extra[OPTIMIZER_FILE] = buf.getvalue()
    item_ids = read_bytes(f"{params['run_dir']}/item_ids.json")
    save_model_dir(params["model_dir"], module, config, item_ids, metrics, extra_files=extra)


def _calibrate_exposure(params: dict, module, validation: ValidationSet, device) -> ExposureCalibration | None:
    """Rank 0: the exposure adjustment the model is served with (``train.exposure_adjustment`` and
    ``train.exposure_tolerance``; None when the tolerance is 0)."""
    tolerance = float(params["hp"].get("exposure_tolerance", 0.0))
    if tolerance <= 0:
        return None
    started = time.perf_counter()
    kind = str(params["hp"].get("exposure_adjustment", "popularity"))
    exposure = validation.calibrate_exposure(module, log_popularity(load_popularity(params["run_dir"])), tolerance,
                                             device, kind=kind)
    log.info(
        "%s penalty %.2f chosen on validation (NDCG@10 within %.1f%%): %s; %.1fs",
        kind, exposure.penalty, 100 * tolerance,
        ", ".join(f"{g['penalty']:g}: {g['ndcg10']:.4f}" for g in exposure.grid), time.perf_counter() - started,
    )
    return exposure


def _mix(*values: int) -> int:
    return int(np.random.SeedSequence(list(values)).generate_state(1)[0])
