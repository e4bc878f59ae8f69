"""The learning rate over training: linear warm-up over the first steps, decay on a plateau.

``train.lr_warmup_steps`` raises the rate linearly from ``lr / steps`` to ``lr`` over that many
optimiser steps (Adam's first steps are large while its moment estimates are young);
``train.lr_decay: plateau`` multiplies it by ``train.lr_decay_factor`` whenever
``train.lr_decay_patience`` validations in a row did not beat the best, so that the epochs
before early stopping search near the best weights with smaller steps. A run that continues a
previous version (``train.warm_start``) runs the whole schedule at ``train.warm_start_lr_factor`` of
the rate: it starts at an optimum, which the full rate overshoots.

The decision to decay is rank 0's (it alone validates); the caller shares it with every rank, so
all ranks keep the same rate.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LearningRate:
    """The rate schedule of one training run; drives the optimiser's ``param_groups``.

    Inputs: the base rate, the warm-up steps (0: none), the plateau decay (``factor`` 1.0 or
    ``patience`` 0: none). Use ``step()`` before every optimiser step and ``validated(improved)``
    after every validation; ``rate`` is the current rate.
    """

    base: float
    warmup_steps: int = 0
    factor: float = 1.0
    patience: int = 0
    steps: int = 0
    scale: float = 1.0
    waited: int = 0

    @classmethod
    def from_hp(cls, hp: dict, carried: bool = False) -> "LearningRate":
        """The schedule of a run from its hyperparameters (``train`` config as a dict); ``carried``:
        the run continues a previous version, so it starts at ``warm_start_lr_factor`` of the rate."""
        plateau = hp.get("lr_decay", "none") == "plateau"
        return cls(
            base=float(hp["lr"]),
            warmup_steps=int(hp.get("lr_warmup_steps", 0)),
            factor=float(hp.get("lr_decay_factor", 1.0)) if plateau else 1.0,
            patience=int(hp.get("lr_decay_patience", 0)) if plateau else 0,
            scale=float(hp.get("warm_start_lr_factor", 1.0)) if carried else 1.0,
        )

    @property
    def base_rate(self) -> float:
        """The rate without warm-up: ``lr`` x the warm-start share x the decays so far."""
        return self.base * self.scale

    @property
    def rate(self) -> float:
        """The rate of the next step."""
        warm = min(1.0, (self.steps + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        return self.base_rate * warm

    def step(self, optimizer) -> None:
        """Set the rate of the coming optimiser step on every parameter group."""
        rate = self.rate
        for group in optimizer.param_groups:
            group["lr"] = rate
        self.steps += 1

    def wants_decay(self, improved: bool) -> bool:
        """Rank 0, after a validation: True when the plateau has lasted ``patience`` validations."""
        if improved or self.patience <= 0 or self.factor >= 1.0:
            self.waited = 0
            return False
        self.waited += 1
        return self.waited >= self.patience

    def decay(self) -> None:
        """Lower the rate by ``factor`` (every rank, once rank 0 asked for it)."""
        self.scale *= self.factor
        self.waited = 0
