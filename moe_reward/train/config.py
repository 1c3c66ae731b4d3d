"""How a model is trained: `TrainConfig`, validated where a user value enters (CLI flags, the dashboard's
form, an experiment's config), with defaults per model kind (`TrainConfig.for_kind`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

MAX_EPOCHS = 10_000
MAX_STEPS = 10_000_000
MAX_BATCH = 1 << 20


@dataclass
class TrainConfig:
    """Training schedule, loss weights and the data-driven choices of discovery.

    Args:
        epochs: passes over the training pairs (raised on small data to reach `min_steps`).
        min_steps: optimizer steps every model gets at least: small data sets get more epochs.
        batch_size: pairs per optimizer step.
        lr: peak learning rate of the one-cycle schedule.
        weight_decay: decoupled weight decay (AdamW).
        sparsity_weight: weight of the local sparsity term (entropy of each pair's routing); sparse only.
        balance_weight: weight of the global balance term (Switch load balancing); sparse only.
        diversity_weight: weight of the expert diversity term (decorrelated margins); sparse only.
        specialization_weight: weight of the mixture-likelihood term, annealed to 0 over
            `specialization_epochs` of the schedule; sparse only.
        specialization_epochs: fraction of the schedule over which the mixture term anneals.
        select_after: checkpoints are chosen from this fraction of the mixture anneal on (0: every epoch).
        min_epochs_fraction: early stopping never ends training before this fraction of the schedule.
        discovery_l2: penalties tried for the prompt-conditioned reward of discovery.
        discovery_steps: optimizer steps of one fit of the prompt-conditioned reward.
        discovery_max_pairs: training pairs discovery reads at most (a seeded sample beyond).
        min_validation_pairs: fewer validation pairs than this and nothing is chosen on validation: the
            router input is the first candidate and the sparse model stays a single head (the reason is
            recorded).
        min_discovery_pairs: fewer training pairs than this and the sparse model stays a single head.
        discovery_folds: at most this many cross-validation folds over the training and validation pairs
            test whether routing generalizes (grouped like the train/test split, see `split_by`; fewer on
            large data, see `discovery.cv_folds`).
        discovery_alpha: one-sided level of that test, before the correction for the candidates tried.
        split_by: the field that keeps related pairs on one side of a cross-validation fold, as
            `data.split_pairs` does for the train/test split (None: the prompt).
        head_l2: shrinkage of warm-started experts toward their anchor (searched on validation).
        cluster_init: warm-start experts and router from context-preference clusters (sparse).
        patience: early stopping: epochs without a better validation loss.
        seed: seed of initialization, batch order and gating noise.
        num_threads: torch threads while training (0: torch's default). Small matmuls gain nothing from
            more threads, and OpenMP threads that spin while another process holds the cores slow training
            ~20x (measured on 2 shared cores).
    """

    epochs: int = 60
    min_steps: int = 600
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    sparsity_weight: float = 0.02
    balance_weight: float = 0.05
    diversity_weight: float = 0.05
    specialization_weight: float = 1.0
    specialization_epochs: float = 0.5
    select_after: float = 0.0
    min_epochs_fraction: float = 0.3
    discovery_l2: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3)
    discovery_steps: int = 400
    discovery_max_pairs: int = 20_000
    min_validation_pairs: int = 20
    min_discovery_pairs: int = 100
    discovery_folds: int = 10
    discovery_alpha: float = 0.05
    split_by: str | None = None
    head_l2: tuple[float, ...] = (1e-3, 1e-2, 0.1, 1.0)
    cluster_init: bool = True
    patience: int = 10
    seed: int = 0
    num_threads: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{f.name} must be an integer, got {value!r}")
            if f.type == "bool" and not isinstance(value, bool):
                raise ValueError(f"{f.name} must be true or false, got {value!r}")
            if f.type == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ValueError(f"{f.name} must be a finite number, got {value!r}")
                setattr(self, f.name, float(value))
        ranges = {
            "epochs": (1, MAX_EPOCHS),
            "min_steps": (0, MAX_STEPS),
            "batch_size": (1, MAX_BATCH),
            "discovery_steps": (1, 100_000),
            "discovery_max_pairs": (2, 100_000_000),
            "min_validation_pairs": (2, 100_000_000),
            "min_discovery_pairs": (2, 100_000_000),
            "discovery_folds": (4, 20),
            "patience": (1, MAX_EPOCHS),
            "num_threads": (0, 1024),
            "seed": (0, 2**63 - 1),
        }
        for name, (lo, hi) in ranges.items():
            if not lo <= getattr(self, name) <= hi:
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {getattr(self, name)}")
        if not 0 < self.lr <= 10:
            raise ValueError(f"lr must be in (0, 10], got {self.lr}")
        for name in (
            "weight_decay",
            "sparsity_weight",
            "balance_weight",
            "diversity_weight",
            "specialization_weight",
        ):
            if not 0 <= getattr(self, name) <= 1e3:
                raise ValueError(f"{name} must be in [0, 1000], got {getattr(self, name)}")
        for name in ("specialization_epochs", "select_after", "min_epochs_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a fraction in [0, 1], got {getattr(self, name)}")
        if not 0 < self.discovery_alpha < 0.5:
            raise ValueError(f"discovery_alpha must be in (0, 0.5), got {self.discovery_alpha}")
        for name in ("discovery_l2", "head_l2"):
            grid = tuple(getattr(self, name))
            if not grid or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and 0 < x <= 1e6
                for x in grid
            ):
                raise ValueError(f"{name} needs at least one penalty, each in (0, 1e6], got {grid!r}")
            setattr(self, name, tuple(float(x) for x in grid))
        if self.split_by is not None and not (isinstance(self.split_by, str) and self.split_by.strip()):
            raise ValueError(f"split_by must be a field name or None, got {self.split_by!r}")

    @classmethod
    def for_kind(cls, kind: str, **overrides) -> TrainConfig:
        """Defaults per model kind: only `sparse` uses the three regularizers and the mixture warm-up;
        `dense` is the vanilla MoE baseline (plain BT), `micro` trains on the mixture likelihood only."""
        base: dict = {}
        if kind in ("dense", "single", "drm"):
            base = dict(
                sparsity_weight=0.0,
                balance_weight=0.0,
                diversity_weight=0.0,
                specialization_weight=0.0,
                cluster_init=False,
            )
        elif kind == "micro":
            base = dict(sparsity_weight=0.0, balance_weight=0.0, diversity_weight=0.0)
        return cls(**{**base, **overrides})
