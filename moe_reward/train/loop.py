"""Training: settle what the router reads, start from discovery (`sparse`), then Bradley-Terry on the routed
mix with regularizers (`objective.py`), and keep the checkpoint that holds on validation pairs.

- Routed kinds (`sparse`, `dense`, `micro`) under ``router_input="auto"`` choose their router input on
  validation likelihood (`discovery.choose_router_input`); with fewer than `min_validation_pairs`
  validation pairs nothing is chosen (the first candidate) and the reason is recorded.
- `sparse` starts from discovery (`discovery.py`): a routed warm start that must beat one head on
  held-out folds of the training pairs, or else the model *is* the `single` baseline (every expert its
  head, the router uniform) and is not trained further: it never pays accuracy for experts that are not
  there.
- Checkpoints: a warm start (epoch 0) is replaced by a later epoch only if that epoch's per-pair
  validation gain passes `selection.gain_test` with the Bonferroni bar for the number of epochs compared;
  kinds trained from their initialization keep the epoch with the lowest validation loss (never the
  initialization itself). A kept checkpoint whose validation loss is not below a constant predictor's
  (log 2) is *untrained* (`TrainResult.untrained`), and says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..embed.features import PairFeatures
from ..model.moe import ROUTED_KINDS, ModelConfig, SparseMoERewardModel
from ..model.router_inputs import AUTO_CANDIDATES, RouterData, fit_lexical, router_data
from .config import TrainConfig
from .discovery import (
    DiscoveryReport,
    choose_router_input,
    context_fit_without_validation,
    routed_warm_start,
    split_units,
)
from .inputs import pair_diff, prepare, rows_float32
from .objective import AdamW, credit, loss_terms, one_cycle_lr, pair_losses, pair_probs, validation_metrics
from .selection import gain_test

CONSTANT_LOSS = math.log(2)  # BT loss of a model that scores both responses alike


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class TrainResult:
    model: SparseMoERewardModel
    history: list[dict] = field(default_factory=list)  # one row per epoch; row 0 is the start
    best_epoch: int = 0  # the epoch whose weights were kept (0: the start itself)
    seconds: float = 0.0
    epochs_planned: int = 0  # the schedule (small data sets get more epochs to reach min_steps)
    discovery: DiscoveryReport = field(default_factory=DiscoveryReport)
    untrained: str | None = None  # why the kept checkpoint is no better than a constant (None: it is)

    @property
    def final(self) -> dict:
        return self.history[self.best_epoch] if self.history else {}


# ----------------------------------------------------------------------------- DRM basis


def fit_drm_basis(model: SparseMoERewardModel, features: PairFeatures) -> None:
    """DRM: K frozen heads over chosen - rejected *as the heads see it* (divided by `response_scale`).

    Head 0 is the mean difference, the direction every pair shares, scaled by the Bradley-Terry fit along it
    (a one-dimensional logistic regression on the training pairs, lightly penalized so that separable data
    stays bounded): alone it does at least as well as a constant on its training pairs, and the mixing
    weights can always fall back on it. Heads 1..K-1 are the top principal directions of the differences
    with that direction taken out, each oriented to agree with the labels and scaled to unit margin spread
    (what personalization mixes; zero heads when the data has fewer directions).

    (Before: every head was a principal direction of the *centred* differences, which leave out the shared
    direction, at unit spread, which the mixing weights (summing to 1) cannot shrink: on a reversal set
    DRM's best validation loss was 0.723, worse than a constant's 0.693.)"""
    diff = pair_diff(model, features).double()  # float32 storage whatever the features', double for the SVD
    k, d = model.num_experts, diff.shape[1]
    heads = torch.zeros(k, d, dtype=torch.float64)
    mean = diff.mean(0)
    rest = diff
    first = 0
    if float(mean.norm()) > 1e-8:
        u = mean / mean.norm()
        heads[0] = u * _bt_scale(diff @ u)
        rest = diff - (diff @ u)[:, None] * u
        first = 1
    if k > first and len(diff) > 1:
        _, sv, v = torch.linalg.svd(rest - rest.mean(0), full_matrices=False)
        keep = [i for i in range(len(sv)) if float(sv[i]) > 1e-6 * float(sv[0])][: k - first]
        if keep:
            basis = v[keep]
            proj = diff @ basis.T
            sign = torch.where(proj.mean(0) >= 0, 1.0, -1.0)
            spread = proj.std(0)
            spread = spread.clamp(min=max(1e-3 * float(spread.max()), 1e-6))  # near-empty directions: bounded
            heads[first : first + len(keep)] = basis * (sign / spread)[:, None]
    with torch.no_grad():
        model.head.copy_(heads.to(model.head.dtype))


def _bt_scale(p: torch.Tensor, penalty: float = 1e-3, max_scale: float = 1e3) -> float:
    """argmin over c >= 0 of mean(softplus(-c p)) + penalty * c^2 * mean(p^2): the Bradley-Terry scale of a
    fixed direction whose training margins are `p` (Newton's method on a convex function of one variable)."""
    second = float((p * p).mean())
    if second < 1e-24:
        return 0.0
    c = 0.0
    for _ in range(100):
        s = torch.sigmoid(-c * p)
        grad = float(-(p * s).mean()) + 2 * penalty * c * second
        hess = float((p * p * s * (1 - s)).mean()) + 2 * penalty * second
        step = grad / hess
        c = min(max(c - step, 0.0), max_scale)
        if abs(step) < 1e-9 * max(c, 1.0):
            break
    return c


# ----------------------------------------------------------------------------- building the model to train


def _build(
    model_config: ModelConfig,
    train: PairFeatures,
    validation: PairFeatures | None,
    cfg: TrainConfig,
    gen: torch.Generator,
) -> tuple[SparseMoERewardModel, RouterData, DiscoveryReport]:
    """The model to train: its router input resolved ("auto" -> the candidate with the best validation
    likelihood), standardization fitted, and -- for `sparse` -- the discovery warm start or the decision
    that it stays one head (`report.decision`)."""
    report = DiscoveryReport(pairs=len(train))
    routed = model_config.kind in ROUTED_KINDS
    n_val = 0 if validation is None else len(validation)
    enough_validation = validation is not None and n_val >= cfg.min_validation_pairs
    wanted = (
        list(AUTO_CANDIDATES)
        if routed and model_config.router_input == "auto"
        else [model_config.router_input]
    )
    vocabulary: list[str] = []
    idf = np.zeros(0, np.float32)
    if any("lexical" in c.split("+") for c in wanted):
        vocabulary, idf = fit_lexical([p.prompt for p in train.pairs])
        if len(vocabulary) < 2:
            if wanted == [model_config.router_input]:
                raise ValueError(
                    "the lexical router input needs prompts that share words (no word or word pair "
                    "occurs in 2 training prompts)"
                )
            wanted = [c for c in wanted if "lexical" not in c.split("+")]
    if len(wanted) > 1 and not enough_validation:
        report.router_input_reason = (
            f"only {n_val} validation pairs (fewer than {cfg.min_validation_pairs}): nothing was chosen on "
            f"validation, the first candidate ({wanted[0]}) was used"
        )
        wanted = wanted[:1]
    candidates = [(c, *prepare(model_config, c, train, vocabulary, idf)) for c in wanted]
    report.router_input = candidates[0][0]
    discover = model_config.kind == "sparse" and cfg.cluster_init and model_config.num_experts > 1
    too_few = _too_few_to_discover(len(train), cfg) if discover else None
    fit = None
    rows = np.arange(len(train))
    if routed and enough_validation and (len(candidates) > 1 or (discover and too_few is None)):
        assert validation is not None
        chosen, fit, rows = choose_router_input(candidates, train, validation, cfg, gen, report)
        candidates = [candidates[chosen]]
    _, model, data = candidates[0]
    if discover and too_few is None and fit is None:  # nothing to choose on: the grid's middle penalty
        fit, rows = context_fit_without_validation(model, data, train, cfg, gen, report)
    if model_config.kind == "drm":
        fit_drm_basis(model, train)
    if discover:
        if too_few is not None:
            report.single_head(too_few)
        else:
            assert fit is not None
            report.context_helps = fit.context_helps
            if fit.context_helps is False:
                free = f" (validation loss {fit.validation_loss:.4f} vs {fit.context_free_loss:.4f} context-free)"
                report.single_head(
                    "the prompt did not predict the preference on validation pairs beyond what every prompt "
                    "shares" + free
                )
            else:
                inputs_tried = len(candidates) if not enough_validation else len(wanted)
                routed_warm_start(
                    model,
                    fit,
                    rows,
                    train,
                    validation if enough_validation else None,
                    vocabulary,
                    idf,
                    cfg,
                    report,
                    inputs_tried,
                )
    return model, data, report


def _too_few_to_discover(n_train: int, cfg: TrainConfig) -> str | None:
    """Why there is too little data to look for experts at all (None: enough)."""
    if n_train < cfg.min_discovery_pairs:
        return (
            f"only {n_train} training pairs (fewer than {cfg.min_discovery_pairs}): too few to find experts "
            "that generalize"
        )
    return None


def _as_single_head(
    model: SparseMoERewardModel,
    train: PairFeatures,
    validation: PairFeatures | None,
    cfg: TrainConfig,
    progress: Callable[[int, int, dict], None] | None = None,
) -> TrainResult:
    """Train the `single` baseline (same data, schedule, seed and checkpoint rule) and make `model` that
    model: every expert its head, the router uniform. Returns the single model's training result."""
    single_cfg = replace(
        model.config,
        kind="single",
        num_experts=1,
        top_k=1,
        router_input="pooled",
        lexical_vocabulary=[],
        expert_names=[],
    )
    overrides = {
        name: getattr(cfg, name)
        for name in ("epochs", "min_steps", "batch_size", "lr", "seed", "patience", "num_threads", "split_by")
    }
    single = _train(train, validation, single_cfg, TrainConfig.for_kind("single", **overrides), progress)
    with torch.no_grad():
        for name, param in single.model.named_parameters():
            if name in ("head", "hidden", "hidden_bias"):
                getattr(model, name).copy_(param.detach().expand_as(getattr(model, name)))
        model.response_scale.copy_(single.model.response_scale)
        model.router.weight.zero_()
        model.router.bias.zero_()
    return single


# ----------------------------------------------------------------------------- the training loop


def _train(
    train: PairFeatures,
    validation: PairFeatures | None,
    model_config: ModelConfig,
    cfg: TrainConfig,
    progress: Callable[[int, int, dict], None] | None,
) -> TrainResult:
    if len(train) < 2:
        raise ValueError(f"need at least 2 training pairs, got {len(train)}")
    if model_config.input_dim != train.dim:
        raise ValueError(f"model input_dim={model_config.input_dim} but features are {train.dim}-d")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    model, router, report = _build(model_config, train, validation, cfg, gen)
    if report.warm_start == "global":  # the sparse model is the single baseline: nothing more to train
        single = _as_single_head(model, train, validation, cfg, progress)
        return TrainResult(
            model.eval(),
            single.history,
            single.best_epoch,
            time.perf_counter() - start,
            single.epochs_planned,
            report,
            single.untrained,
        )
    val_router = router_data(model, validation) if validation is not None and len(validation) else None
    # Features stay as stored (float16 at scale) and are converted to float32 one batch at a time.
    c, r = train.chosen, train.rejected
    params = [q for q in model.parameters() if q.requires_grad]
    opt = AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(train)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    anneal_steps = max(1, int(cfg.specialization_epochs * epochs * steps_per_epoch))
    history: list[dict] = []
    warm_started = report.warm_start == "clusters"

    def evaluate_epoch(row: dict) -> float:
        if val_router is not None and validation is not None:
            row.update(
                {f"val_{k}": v for k, v in validation_metrics(model, validation, router=val_router).items()}
            )
        return row.get("val_loss", row.get("train_loss", math.inf))

    # Epoch 0 is the start: a warm start is a candidate checkpoint (training must beat it to replace it);
    # an initialization is not (a model that never trained is not a model).
    start_row: dict = {"epoch": 0}
    score = evaluate_epoch(start_row) if val_router is not None else math.inf
    history.append(start_row)
    warm = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best = (score if warm_started else math.inf, 0, warm)
    step = 0
    select_from = cfg.select_after * anneal_steps if cfg.specialization_weight else 0
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(n, generator=gen).numpy()
        sums: dict[str, float] = {}
        for s in range(0, n, cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            spec_w = cfg.specialization_weight * max(0.0, 1.0 - step / anneal_steps)
            total, terms = loss_terms(
                model, router.batch(idx), rows_float32(c, idx), rows_float32(r, idx), cfg, spec_w, noisy=True
            )
            if not torch.isfinite(total):
                raise TrainingDiverged(
                    f"loss became {float(total.detach())} at epoch {epoch}, step {step}: lower the learning rate "
                    f"(now {cfg.lr}) or check the features for NaN/inf values"
                )
            opt.zero_grad()
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step(one_cycle_lr(step, epochs * steps_per_epoch, cfg.lr))
            step += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
        row = {"epoch": epoch, **{f"train_{k}": v / n for k, v in sums.items()}}
        row["train_loss"] = row["train_bt"]
        score = evaluate_epoch(row)
        history.append(row)
        if progress:
            progress(epoch, epochs, row)
        if step < select_from:
            continue
        if score < best[0] - 1e-5:
            best = (score, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
        elif epoch - best[1] >= max(cfg.patience, epochs // 10) and epoch >= epochs * cfg.min_epochs_fraction:
            break
    model.load_state_dict(best[2])
    if warm_started and best[1] and val_router is not None and validation is not None:
        # The warm start is kept unless training beats it by more than the bar for the number of epochs
        # compared (each epoch was a candidate): a smaller gain is noise, and the warm start is simpler.
        trained = pair_losses(model, validation, val_router)
        model.load_state_dict(warm)
        test = gain_test(
            pair_losses(model, validation, val_router) - trained,
            split_units(validation, cfg.split_by),
            candidates=len(history) - 1,
        )
        report.checkpoint_test = test.to_dict()
        if test.significant:
            model.load_state_dict(best[2])
        else:
            report.kept_warm_start = (
                f"epoch {best[1]} was better on validation, but not beyond the bar ({test.describe()})"
            )
            best = (best[0], 0, warm)
    model.eval()
    result = TrainResult(model, history, best[1], time.perf_counter() - start, epochs, report)
    probs = (
        pair_probs(model, validation, val_router)
        if val_router is not None and validation is not None
        else None
    )
    units = split_units(validation, cfg.split_by) if probs is not None and validation is not None else None
    result.untrained = untrained_reason(result, probs, units)
    return result


def untrained_reason(result: TrainResult, probs: torch.Tensor | None, units: np.ndarray | None) -> str | None:
    """Why a kept checkpoint is no better than a constant predictor (None when it is): on the validation
    pairs (`probs`: the kept checkpoint's P(chosen)), neither its loss is significantly below log 2 nor its
    accuracy significantly above 1/2 -- the loss and accuracy of scoring both responses alike (one-sided,
    5%, units as the split's); without validation pairs, its training loss is not below log 2."""
    if probs is not None and len(probs):
        losses = -torch.log(probs.clamp(min=1e-12))
        by_loss = gain_test(CONSTANT_LOSS - losses, units)
        by_accuracy = gain_test(credit(probs) - 0.5, units)
        if by_loss.significant or by_accuracy.significant:
            return None
        return (
            f"the kept checkpoint (epoch {result.best_epoch}) is no better than scoring both responses alike on "
            f"{len(probs)} validation pairs: loss {float(losses.mean()):.4f} vs {CONSTANT_LOSS:.4f}, accuracy "
            f"{float(credit(probs).mean()):.3f} vs 0.5, neither beyond one-sided 5% chance; nothing it learnt is "
            "shown to hold"
        )
    loss = result.final.get("train_loss")
    if loss is None or loss < CONSTANT_LOSS - 1e-4:
        return None
    return (
        f"the kept checkpoint (epoch {result.best_epoch}) has training loss {loss:.4f}, not below the "
        f"{CONSTANT_LOSS:.4f} of a model that scores both responses alike"
    )


def train_model(
    train: PairFeatures,
    validation: PairFeatures | None,
    model_config: ModelConfig,
    config: TrainConfig | None = None,
    progress: Callable[[int, int, dict], None] | None = None,
) -> TrainResult:
    """Train one model on cached features. `progress(epoch, epochs, metrics)` is called after each epoch
    (the CLI's tqdm bar and the dashboard's st.progress both drive off it)."""
    cfg = config or TrainConfig.for_kind(model_config.kind)
    previous_threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(train, validation, model_config, cfg, progress)
    finally:
        torch.set_num_threads(previous_threads)
