"""Training: discovery of what the prompt asks for, then Bradley-Terry on the routed mix with regularizers.

Routed kinds (`sparse`, `dense`, `micro`) first settle what the router reads (`router_inputs.py`; "auto"
chooses among candidate channels by validation likelihood). `sparse` then starts from a **discovery warm
start** (`_build`):

1. Fit a low-rank prompt-conditioned reward, margin = (P U) . (D V) + w0 . D, with a nuclear-norm
   penalty (`fit_context_preferences`), on what the router reads (P) and the expert inputs (D); its
   penalty, and the router input under "auto", are chosen on the validation pairs' likelihood.
2. If the prompt predicts the preference on validation pairs beyond the shared part w0 (the per-pair gain
   exceeds twice its standard error), cluster the preference codes P U into K groups (k-means), teach the
   router to predict the group, and start each expert as its group's Bradley-Terry head shrunk toward w0
   (shrinkage chosen on validation). Otherwise every expert starts as w0: a single-head model that has to
   earn any specialization on the validation loss.

Then all kinds train on (terms are means over the batch):

    bt            = softplus(-sum_k routing_k * margin_k)              Bradley-Terry on the routed mix
    sparsity      = H(router_probs) / log K                            local: each pair uses few experts
    balance       = K * sum_k f_k * P_k                                 global (Switch): all experts used
    diversity     = mean_{k != l} corr(margin_k, margin_l)^2           experts differ
    specialization= -log sum_k router_probs_k * sigmoid(margin_k)      mixture likelihood (MiCRo / EM)

(only `sparse` uses the last four; the mixture term is annealed away over `specialization_epochs`).
The kept checkpoint is the one with the lowest validation loss of the routed model, the warm start
(epoch 0) included, so training that only overfits leaves the warm start in place.

Why a warm start at all: experts that start alike receive the same gradient, and on data whose preference
reverses with the context the average gradient cancels, so a plain MoE sits at a saddle where no expert
specializes; and a pooled sentence embedding of the prompt is dominated by its topic, so a router that
reads only that memorizes questions instead of finding the instruction that decides the preference.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse

from ..embed.features import PairFeatures
from ..model.moe import ROUTED_KINDS, ModelConfig, PairOutput, SparseMoERewardModel, entropy, margins_to_loss
from ..model.router_inputs import AUTO_CANDIDATES, RouterData, fit_lexical, router_data


@dataclass
class TrainConfig:
    epochs: int = 60
    min_steps: int = 600  # small data sets get more epochs so that every model sees enough updates
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    sparsity_weight: float = 0.02
    balance_weight: float = 0.05
    diversity_weight: float = 0.05
    specialization_weight: float = 1.0
    specialization_epochs: float = 0.5  # fraction of epochs over which the mixture term anneals to 0
    # Checkpoints are chosen on the validation loss of the routed model from this fraction of the mixture
    # anneal on (0: from the warm start on, epoch 0 included); training stops after `patience` epochs
    # without a better one, but not before `min_epochs_fraction` of the schedule.
    select_after: float = 0.0
    min_epochs_fraction: float = 0.3
    # Discovery (routed kinds): penalties tried for the prompt-conditioned reward, its optimizer steps, the
    # pairs it sees at most, and the validation pairs needed to choose anything by validation likelihood.
    discovery_l2: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3)
    discovery_steps: int = 400
    discovery_max_pairs: int = 20_000
    min_validation_pairs: int = 20
    head_l2: tuple[float, ...] = (
        1e-3,
        1e-2,
        0.1,
        1.0,
    )  # shrinkage of warm-started experts toward the shared head
    cluster_init: bool = True  # warm-start experts and router from context-preference clusters
    patience: int = 10  # early stopping: epochs without a better validation loss
    seed: int = 0
    # Small matmuls gain nothing from more threads, and OpenMP threads that spin while another process
    # holds the cores slow training ~20x (measured on 2 shared cores); 0 keeps torch's default.
    num_threads: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in (
            "weight_decay",
            "sparsity_weight",
            "balance_weight",
            "diversity_weight",
            "specialization_weight",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not 0 <= self.specialization_epochs <= 1 or not 0 <= self.select_after <= 1:
            raise ValueError("specialization_epochs and select_after are fractions in [0, 1]")
        self.discovery_l2 = tuple(float(x) for x in self.discovery_l2)
        if not self.discovery_l2 or min(self.discovery_l2) <= 0:
            raise ValueError("discovery_l2 needs at least one positive penalty")

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


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class TrainResult:
    model: SparseMoERewardModel
    history: list[dict] = field(default_factory=list)  # one row per epoch; row 0 is the warm start
    best_epoch: int = 0  # the epoch whose weights were kept (0: the warm start itself)
    seconds: float = 0.0
    epochs_planned: int = 0  # the schedule (small data sets get more epochs to reach min_steps)
    discovery: dict = field(default_factory=dict)  # router input chosen, validation losses, warm start

    @property
    def final(self) -> dict:
        return self.history[self.best_epoch] if self.history else {}


# ----------------------------------------------------------------------------- loss terms


def sparsity_loss(probs: torch.Tensor) -> torch.Tensor:
    k = probs.shape[-1]
    return entropy(probs).mean() / math.log(k) if k > 1 else probs.new_zeros(())


def balance_loss(probs: torch.Tensor, routing: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer load balancing: K * sum_k (share of pairs routed to k) * (mean prob of k); 1 at best."""
    k = probs.shape[-1]
    share = F.one_hot(routing.argmax(-1), k).float().mean(0)
    return k * (share * probs.mean(0)).sum()


def diversity_loss(expert_margins: torch.Tensor) -> torch.Tensor:
    """Mean squared correlation between experts' margins over the batch (0 = decorrelated experts)."""
    k = expert_margins.shape[-1]
    if k < 2 or expert_margins.shape[0] < 3:
        return expert_margins.new_zeros(())
    z = expert_margins - expert_margins.mean(0)
    z = z / z.norm(dim=0).clamp(min=1e-6)
    corr = z.T @ z
    off = corr - torch.diag(torch.diag(corr))
    return (off**2).sum() / (k * (k - 1))


def mixture_loss(out: PairOutput) -> torch.Tensor:
    """-log P(chosen) under the mixture of per-expert BT models weighted by the router (MiCRo)."""
    log_mix = torch.logsumexp(
        torch.log(out.router_probs.clamp(min=1e-12)) + F.logsigmoid(out.expert_margins), -1
    )
    return -log_mix.mean()


def loss_terms(
    model: SparseMoERewardModel, prompt, chosen, rejected, cfg: TrainConfig, spec_weight: float, noisy: bool
) -> tuple[torch.Tensor, dict[str, float]]:
    out = model.pair(prompt, chosen, rejected, noisy=noisy)
    if model.config.kind == "micro":
        bt = mixture_loss(out)
    else:
        bt = margins_to_loss(out.margin).mean()
    terms = {"bt": bt}
    if cfg.sparsity_weight:
        terms["sparsity"] = sparsity_loss(out.router_probs)
    if cfg.balance_weight:
        terms["balance"] = balance_loss(out.router_probs, out.routing)
    if cfg.diversity_weight:
        terms["diversity"] = diversity_loss(out.expert_margins)
    if spec_weight and model.config.kind != "micro":
        terms["specialization"] = mixture_loss(out)
    weights = {
        "bt": 1.0,
        "sparsity": cfg.sparsity_weight,
        "balance": cfg.balance_weight,
        "diversity": cfg.diversity_weight,
        "specialization": spec_weight,
    }
    total = sum(weights[k] * v for k, v in terms.items())
    logged = {k: float(v.detach()) for k, v in terms.items()}
    # Accuracy of the batch as seen while training (noisy gating): free, unlike a full pass per epoch.
    logged["accuracy"] = float((out.prob_chosen(mixture=model.config.kind == "micro") > 0.5).float().mean())
    return total, logged


# ----------------------------------------------------------------------------- optimizer


class AdamW:
    """Adam with decoupled weight decay, for the few small tensors of a reward model.

    Written out instead of `torch.optim.AdamW` because torch.optim's first step imports torch._dynamo
    (and sympy): 2-5 s of start-up on every CLI call, dashboard training run and personalization fit.
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr: float | None = None) -> None:
        lr = self.lr if lr is None else lr
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            if self.weight_decay:
                p.mul_(1 - lr * self.weight_decay)
            p.addcdiv_(m / c1, (v / c2).sqrt_().add_(self.eps), value=-lr)


def one_cycle_lr(step: int, total: int, peak: float, warmup: float = 0.1) -> float:
    """Linear warm-up from peak/25 to peak over `warmup` of the steps, then cosine down to ~0."""
    up = max(1, int(total * warmup))
    if step < up:
        return peak * (0.04 + 0.96 * step / up)
    progress = min(1.0, (step - up) / max(1, total - up))
    return peak * (1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------- initialization


def fit_standardization(
    model: SparseMoERewardModel, f: PairFeatures, router: RouterData | None = None
) -> None:
    """Per-dimension mean/scale of the router's vector channels and scale of the expert inputs, fitted
    on the training features (and the token scale of the attention channel)."""
    with torch.no_grad():
        if len(f) > 1:  # over chosen and rejected rows, read in chunks (no concatenated copy)
            model.response_scale.copy_(_floor(torch.from_numpy(_column_std(f.chosen, f.rejected))))
        if router is None:
            router = RouterData([f.prompt])
        if model.prompt_mean.numel():
            mean, std = router.moments()
            model.prompt_mean.copy_(torch.from_numpy(mean))
            if len(f) > 1:
                model.prompt_scale.copy_(_floor(torch.from_numpy(std)))
        if model.queries is not None and router.tokens is not None and len(router.tokens):
            states = torch.from_numpy(router.tokens[router.mask].astype(np.float32))
            if len(states) > 1:
                model.token_scale.copy_(_floored_std(states))


def _column_std(*arrays: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Per-column sample standard deviation over the rows of several [N, D] arrays (any float dtype,
    memory-mapped or not), accumulated in float64 chunk by chunk."""
    n, total, squares = 0, 0.0, 0.0
    for a in arrays:
        for s in range(0, len(a), chunk):
            x = np.asarray(a[s : s + chunk], np.float64)
            n, total, squares = n + len(x), total + x.sum(0), squares + (x * x).sum(0)
    mean = total / n
    return np.sqrt(np.maximum((squares - n * mean * mean) / max(n - 1, 1), 0.0)).astype(np.float32)


def _floored_std(x: torch.Tensor) -> torch.Tensor:
    return _floor(x.std(0))


def _floor(std: torch.Tensor) -> torch.Tensor:
    """Floor a per-dimension std at a third of its median so near-constant dimensions are not blown up."""
    return std.clamp(min=max(float(std.median()) / 3, 1e-6))


def _codes_model(prompt_dim: int, d: int, rank: int, gen: torch.Generator):
    u = (torch.randn(prompt_dim, rank, generator=gen) * 0.1).requires_grad_()
    v = (torch.randn(d, rank, generator=gen) * 0.1).requires_grad_()
    w0 = torch.zeros(d, requires_grad=True)
    return u, v, w0


@dataclass
class ContextFit:
    """A fitted prompt-conditioned reward (see `fit_context_preferences`)."""

    codes: torch.Tensor  # [N, rank] preference code of each training pair's prompt
    u: torch.Tensor  # [R, rank] router features -> preference code
    w0: torch.Tensor  # [D] the prompt-independent part: what every prompt wants
    v: torch.Tensor  # [D, rank] preference code -> preference direction (pair i's head is w0 + V c_i)
    train_loss: float
    validation_loss: float | None  # BT loss on validation pairs (None without them)
    context_free_loss: float | None  # the same, for the prompt-independent part w0 alone
    gain_se: float | None  # standard error of the per-pair validation gain (context-free minus context loss)
    l2: float

    @property
    def context_helps(self) -> bool | None:
        """Whether the prompt predicts the preference on validation pairs beyond what every prompt shares:
        the mean per-pair gain exceeds twice its standard error (None without validation pairs)."""
        if self.validation_loss is None or self.context_free_loss is None or self.gain_se is None:
            return None
        return self.context_free_loss - self.validation_loss > 2 * self.gain_se


def _projector(
    model: SparseMoERewardModel, router: RouterData, rows: np.ndarray
) -> Callable[[torch.Tensor], torch.Tensor]:
    """u -> (standardized router features of `rows`) @ u. Vector channels are multiplied block by block
    without densifying the sparse lexical one: ((x - mean) / scale) @ u = x @ (u / scale) - (mean / scale) @ u;
    with an attention channel the model computes the features (its queries are being fitted)."""
    if model.queries is not None:
        return lambda u: model.router_features(router.batch(rows)) @ u
    mean, scale = model.prompt_mean, model.prompt_scale
    blocks, start = [], 0
    for b in router.blocks:
        sub, sl = b[rows], slice(start, start + b.shape[1])
        start += b.shape[1]
        if sparse.issparse(sub):
            coo = sub.tocoo()
            t = torch.sparse_coo_tensor(
                np.vstack([coo.row, coo.col]), coo.data.astype(np.float32), coo.shape, check_invariants=False
            ).coalesce()
        else:
            t = torch.from_numpy(np.ascontiguousarray(sub, dtype=np.float32))
        blocks.append((t, sl))

    def project(u: torch.Tensor) -> torch.Tensor:
        us = u / scale[:, None]
        out = -(mean @ us)
        for t, sl in blocks:
            out = out + (torch.sparse.mm(t, us[sl]) if t.is_sparse else t @ us[sl])
        return out

    return project


def fit_context_preferences(
    model: SparseMoERewardModel,
    router: RouterData,
    diff: torch.Tensor,
    gen: torch.Generator,
    rank: int = 16,
    steps: int = 600,
    lr: float = 0.02,
    l2: float = 3e-3,
    validation: tuple[RouterData, torch.Tensor] | None = None,
    batch: int = 4096,
) -> ContextFit:
    """A low-rank, prompt-conditioned linear reward: margin_i = (P_i U) . (D_i V) + w0 . D_i, fitted with BT,
    where P_i is what the model's router reads of prompt i (standardized channels; attention queries are
    fitted along) and D_i the standardized chosen-minus-rejected expert input.

    Each pair's *preference code* P_i U says what its prompt asks for, in the few directions that change the
    preference. The penalty l2 * (|U|^2 + |V|^2 + |w0|^2) is a nuclear-norm penalty on U V^T, so the fit
    keeps few preference directions, each switched by prompt features that predict it across many pairs (a
    cue such as "keep it short"), rather than memorizing prompts by topic. Full batch up to `batch` pairs.
    """
    n, d = diff.shape
    extra = [model.queries] if model.queries is not None else []
    with torch.no_grad():
        width = model.router_features(router.batch(np.arange(min(n, 2)))).shape[1]
    u, v, w0 = _codes_model(width, d, rank, gen)
    opt = AdamW([u, v, w0, *extra], lr=lr)
    order = np.arange(n) if n <= batch else torch.randperm(n, generator=gen).numpy()
    chunks = np.array_split(order, math.ceil(n / batch))
    project = [_projector(model, router, c) for c in chunks]  # what the router reads, times U
    for step in range(steps):
        j = step % len(chunks)
        dd = diff[chunks[j]]
        margin = (project[j](u) * (dd @ v)).sum(-1) + dd @ w0
        penalty = (u**2).sum() + (v**2).sum() + (w0**2).sum()  # not the queries: where to look is free
        loss = F.softplus(-margin).mean() + l2 * penalty
        opt.zero_grad()
        loss.backward()
        opt.step(one_cycle_lr(step, steps, lr))

    @torch.no_grad()
    def losses(data: RouterData, dd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes, with_context, free = [], [], []
        for s in range(0, len(dd), batch):
            rows = np.arange(s, min(s + batch, len(dd)))
            c = _projector(model, data, rows)(u)
            codes.append(c)
            base = dd[rows] @ w0
            with_context.append(F.softplus(-((c * (dd[rows] @ v)).sum(-1) + base)))
            free.append(F.softplus(-base))
        return torch.cat(codes), torch.cat(with_context), torch.cat(free)

    codes, train_losses, _ = losses(router, diff)
    val_loss = free_loss = gain_se = None
    if validation is not None and len(validation[1]):
        _, ctx, free = losses(*validation)
        val_loss, free_loss = float(ctx.mean()), float(free.mean())
        gain = free - ctx
        gain_se = float(gain.std() / len(gain) ** 0.5) if len(gain) > 1 else math.inf
    return ContextFit(
        codes,
        u.detach().clone(),
        w0.detach().clone(),
        v.detach().clone(),
        float(train_losses.mean()),
        val_loss,
        free_loss,
        gain_se,
        l2,
    )


def kmeans(x: torch.Tensor, k: int, seed: int, n_init: int = 10) -> torch.Tensor:
    """Euclidean k-means (scikit-learn, k-means++ with `n_init` restarts); the cluster of each row."""
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    k = min(k, len(x))
    with warnings.catch_warnings():  # fewer distinct codes than clusters: some experts start empty, fine
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = KMeans(k, n_init=n_init, random_state=seed).fit(x.double().numpy()).labels_
    return torch.from_numpy(labels.astype(np.int64))


def fit_bt_heads(
    diff: torch.Tensor,
    assign: torch.Tensor,
    k: int,
    anchor: torch.Tensor,
    l2: float,
    steps: int = 200,
    lr: float = 0.05,
) -> torch.Tensor:
    """One Bradley-Terry head per cluster [k, D], fitted on the cluster's pairs and shrunk toward `anchor`
    ([D] for all clusters, or [k, D] one per cluster): penalty l2 * |head_k - anchor_k|^2. A small cluster
    stays near its anchor instead of memorizing its few pairs."""
    delta = torch.zeros(k, diff.shape[1], requires_grad=True)
    onehot = F.one_hot(assign, k).float()
    counts = onehot.sum(0).clamp(min=1)
    opt = AdamW([delta], lr=lr)
    for _ in range(steps):
        heads = anchor + delta
        loss = ((onehot * F.softplus(-(diff @ heads.T))).sum(0) / counts).sum() + l2 * (delta**2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (anchor + delta).detach()


def cluster_anchors(fit: ContextFit, assign: torch.Tensor, k: int) -> torch.Tensor:
    """[k, D] what the context model predicts for each cluster: w0 + V (mean code of its pairs); w0 for
    an empty cluster."""
    anchors = fit.w0.expand(k, -1).clone()
    for j in range(k):
        members = fit.codes[assign == j]
        if len(members):
            anchors[j] += fit.v @ members.mean(0)
    return anchors


def router_from_centroids(
    model: SparseMoERewardModel, u: torch.Tensor, codes: torch.Tensor, assign: torch.Tensor
) -> None:
    """Route each prompt to the nearest cluster centroid in preference-code space: with code c = x U
    (x the router features) and centroids C_k, -|c - C_k|^2 / tau = (2 c . C_k - |C_k|^2) / tau + const,
    a linear router W = 2 C U^T / tau, b = -|C|^2 / tau. It reads exactly the prompt features the
    context model found predictive (a cue, not the topic), so it routes unseen prompts as the clusters
    split the training ones; tau is the mean squared distance of codes to their centroid."""
    k = model.num_experts
    centroids = torch.zeros(k, codes.shape[1])
    for j in range(k):
        members = codes[assign == j]
        centroids[j] = members.mean(0) if len(members) else codes.mean(0)
    tau = float(((codes - centroids[assign]) ** 2).sum(-1).mean().clamp(min=1e-6))
    with torch.no_grad():
        model.router.weight.copy_(2 * centroids @ u.T / tau)
        model.router.bias.copy_(-(centroids**2).sum(-1) / tau)
        empty = torch.bincount(assign, minlength=k) == 0
        model.router.bias[empty] = -1e4 / tau  # an empty cluster receives nothing until training moves it


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
    diff = _diff(model, features).double()  # float32 storage whatever the features', double for the SVD
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


# ----------------------------------------------------------------------------- router input and discovery


def _rows(a: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a[idx], np.float32))


def _diff(model: SparseMoERewardModel, f: PairFeatures, rows: np.ndarray | None = None) -> torch.Tensor:
    c, r = (f.chosen, f.rejected) if rows is None else (f.chosen[rows], f.rejected[rows])
    return torch.from_numpy(np.ascontiguousarray(c - r, np.float32)) / model.response_scale


def _subsample(n: int, limit: int, gen: torch.Generator) -> np.ndarray:
    return np.sort(torch.randperm(n, generator=gen)[:limit].numpy()) if n > limit else np.arange(n)


def _prepare(
    model_config: ModelConfig, channels: str, train: PairFeatures, vocabulary: list[str], idf: np.ndarray
) -> tuple[SparseMoERewardModel, RouterData]:
    """A model reading `channels`, with its lexical vocabulary and standardization fitted on `train`."""
    mcfg = replace(
        model_config,
        router_input=channels,
        lexical_vocabulary=list(vocabulary) if "lexical" in channels.split("+") else [],
    )
    model = SparseMoERewardModel(mcfg)
    if "lexical" in channels.split("+"):
        model.lexical_idf.copy_(torch.from_numpy(idf))
    data = router_data(model, train)
    fit_standardization(model, train, data)
    return model, data


def _search_l2(
    name: str,
    model: SparseMoERewardModel,
    router: RouterData,
    diff: torch.Tensor,
    validation: tuple[RouterData, torch.Tensor] | None,
    cfg: TrainConfig,
    report: dict,
) -> tuple[float, ContextFit]:
    """The penalty of `cfg.discovery_l2` with the best validation loss: from the grid's middle, walk up
    while it improves, else down (without validation: the middle)."""
    grid = sorted(cfg.discovery_l2)
    scores: dict[int, tuple[float, ContextFit]] = {}

    def score_at(j: int) -> float:
        if j not in scores:
            fit = fit_context_preferences(
                model,
                router,
                diff,
                torch.Generator().manual_seed(cfg.seed),
                l2=grid[j],
                steps=cfg.discovery_steps,
                validation=validation,
            )
            score = fit.validation_loss if fit.validation_loss is not None else fit.train_loss
            scores[j] = (score, fit)
            report["validation_loss"][f"{name} l2={grid[j]:g}"] = round(score, 6)
            if fit.context_free_loss is not None:
                report["context_free_loss"] = round(fit.context_free_loss, 6)
        return scores[j][0]

    j = len(grid) // 2
    if validation is not None:
        for step in (1, -1):
            moved = False
            while 0 <= j + step < len(grid) and score_at(j + step) < score_at(j) - 1e-6:
                j, moved = j + step, True
            if moved:
                break
    return score_at(j), scores[j][1]


def choose_router_input(
    candidates: list[tuple[str, SparseMoERewardModel, RouterData]],
    train: PairFeatures,
    validation: PairFeatures | None,
    cfg: TrainConfig,
    gen: torch.Generator,
) -> tuple[int, ContextFit | None, dict]:
    """Fit the prompt-conditioned reward (`fit_context_preferences`) for every candidate router input,
    with its penalty searched on the log grid `cfg.discovery_l2` (from the middle, moving while the
    validation loss improves); keep the fit with the lowest validation loss. Without enough validation
    pairs there is nothing to choose on: the first candidate and the grid's middle penalty are used.
    Returns (index of the winning candidate, its fit, a report of every validation loss)."""
    report: dict = {"validation_loss": {}, "context_free_loss": None, "l2": None, "pairs": len(train)}
    enough = validation is not None and len(validation) >= cfg.min_validation_pairs
    if not enough:
        candidates = candidates[:1]
    rows = _subsample(len(train), cfg.discovery_max_pairs, gen)
    best: tuple[float, int, ContextFit | None] = (math.inf, 0, None)
    for i, (name, model, data) in enumerate(candidates):
        sub, diff = data.subset(rows), _diff(model, train, rows)
        val = None
        if enough:
            vrows = _subsample(len(validation), cfg.discovery_max_pairs, gen)
            val = (router_data(model, validation).subset(vrows), _diff(model, validation, vrows))
        score, fit = _search_l2(name, model, sub, diff, val, cfg, report)
        if score < best[0] - 1e-9:
            best = (score, i, fit)
    winner = best[2]
    report["router_input"] = candidates[best[1]][0]
    report["l2"] = None if winner is None else winner.l2
    report["rows"] = rows.tolist() if len(rows) < len(train) else None
    return best[1], winner, report


# ----------------------------------------------------------------------------- training loop


@torch.no_grad()
def validation_metrics(
    model: SparseMoERewardModel, f: PairFeatures, batch: int = 8192, router: RouterData | None = None
) -> dict[str, float]:
    model.eval()
    router = router if router is not None else router_data(model, f)
    losses, correct = [], []
    for s in range(0, len(f), batch):
        sl = slice(s, s + batch)
        out = model.pair(
            router.batch(sl),
            torch.from_numpy(np.ascontiguousarray(f.chosen[sl], np.float32)),
            torch.from_numpy(np.ascontiguousarray(f.rejected[sl], np.float32)),
        )
        prob = out.prob_chosen(mixture=model.config.kind == "micro")
        losses.append(-torch.log(prob.clamp(min=1e-12)))
        correct.append(prob > 0.5)
    return {"loss": float(torch.cat(losses).mean()), "accuracy": float(torch.cat(correct).float().mean())}


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


def _build(
    model_config: ModelConfig,
    train: PairFeatures,
    validation: PairFeatures | None,
    cfg: TrainConfig,
    gen: torch.Generator,
) -> tuple[SparseMoERewardModel, RouterData, dict]:
    """The model to train: its router input resolved ("auto" -> the candidate with the best validation
    likelihood), standardization fitted, and -- for kinds that use it -- the discovery warm start."""
    routed = model_config.kind in ROUTED_KINDS
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
    candidates = [(c, *_prepare(model_config, c, train, vocabulary, idf)) for c in wanted]
    report: dict = {"router_input": candidates[0][0]}
    discover = routed and cfg.cluster_init and model_config.num_experts > 1
    fit = None
    if routed and (len(candidates) > 1 or discover):
        chosen, fit, report = choose_router_input(candidates, train, validation, cfg, gen)
        candidates = [candidates[chosen]]
    _, model, data = candidates[0]
    if model_config.kind == "drm":
        fit_drm_basis(model, train)
    if discover and fit is not None:
        rows = np.asarray(report.pop("rows")) if report.get("rows") is not None else np.arange(len(train))
        report["context_helps"] = fit.context_helps
        if fit.context_helps is False:
            # The prompt does not predict the preference (on validation pairs) beyond what every prompt
            # shares: every expert starts as the single-head model trained the same way (the `single`
            # baseline), and training has to earn any specialization on the validation loss.
            report["warm_start"] = "global"
            _start_as_single_head(model, train, validation, cfg)
        else:
            report["warm_start"] = "clusters"
            diff = _diff(model, train, rows)
            assign = _choose_clusters(model, fit, diff, validation, cfg)
            report["clusters"] = int(assign.max()) + 1
            report["cluster_sizes"] = np.bincount(assign.numpy(), minlength=model.num_experts).tolist()
            router_from_centroids(model, fit.u, fit.codes, assign)
            if not model.config.hidden_dim:
                anchors = {
                    "context model": cluster_anchors(fit, assign, model.num_experts),
                    "shared head": fit.w0,
                }
                report["head_anchor"], report["head_l2"] = _init_heads(
                    model, diff, assign, anchors, validation, cfg
                )
            _keep_clusters_only_if_better(model, train, validation, cfg, report)
    report.pop("rows", None)
    return model, data, report


def _keep_clusters_only_if_better(
    model: SparseMoERewardModel,
    train: PairFeatures,
    validation: PairFeatures | None,
    cfg: TrainConfig,
    report: dict,
) -> None:
    """The prompt predicted the preference, but the routed warm start is only an approximation of that
    prediction: keep it only if its validation loss beats the single-head start (every expert the trained
    `single` head) by more than one standard error of the per-pair gain; otherwise start from the single
    head, so that sparse does not lose to one head where the clusters do not carry over to new prompts."""
    if validation is None or len(validation) < cfg.min_validation_pairs:
        return
    val_router = router_data(model, validation)
    clustered = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cluster_losses = pair_losses(model, validation, val_router)
    _start_as_single_head(model, train, validation, cfg)
    gain = pair_losses(model, validation, val_router) - cluster_losses
    if significant_gain(gain):
        model.load_state_dict(clustered)
        return
    report["warm_start"] = "global"
    report["clusters_rejected"] = (
        f"the routed warm start's validation loss {float(cluster_losses.mean()):.4f} did "
        f"not beat the single head's {float(cluster_losses.mean() + gain.mean()):.4f} by "
        "more than one standard error"
    )


def _start_as_single_head(
    model: SparseMoERewardModel, train: PairFeatures, validation: PairFeatures | None, cfg: TrainConfig
) -> None:
    """Copy a trained single Bradley-Terry head (same data, schedule and checkpoint rule as `single`) into
    every expert: the routed model then starts as that model, whatever the routing."""
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
        for name in ("epochs", "min_steps", "batch_size", "lr", "seed", "patience", "num_threads")
    }
    single = _train(train, validation, single_cfg, TrainConfig.for_kind("single", **overrides), None).model
    with torch.no_grad():
        for name, param in single.named_parameters():
            if name in ("head", "hidden", "hidden_bias"):
                getattr(model, name).copy_(param.detach().expand_as(getattr(model, name)))


MIN_GAIN = 1e-3  # nats per validation pair: a smaller gain does not buy more clusters


def significant_gain(gain: torch.Tensor, floor: float = 0.0) -> bool:
    """Whether per-pair validation gains (the simpler model's loss minus the other's) favour the other
    model: their mean exceeds one standard error, and `floor` (nats per pair). Choosing the number of
    clusters uses MIN_GAIN as the floor: on easy validation pairs every loss is near 0, and a consistent
    gain of 1e-6 nats would otherwise split a criterion between experts."""
    if len(gain) < 2:
        return False
    return float(gain.mean()) > max(float(gain.std()) / len(gain) ** 0.5, floor)


CLUSTER_COUNTS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def _choose_clusters(
    model: SparseMoERewardModel,
    fit: ContextFit,
    diff: torch.Tensor,
    validation: PairFeatures | None,
    cfg: TrainConfig,
) -> torch.Tensor:
    """How many groups of preference codes to start experts from: the count (K, or fewer from
    `CLUSTER_COUNTS`) whose warm-started routed model has the lowest validation loss. With more experts
    than criteria, K clusters split a criterion arbitrarily between experts; fewer clusters keep one
    expert per criterion and start the others, unused, as the shared head. Ties (within one standard
    error) go to fewer clusters. K without validation pairs."""
    k = model.num_experts
    counts = sorted({c for c in CLUSTER_COUNTS if c < k} | {k})
    if (
        model.config.hidden_dim
        or validation is None
        or len(validation) < cfg.min_validation_pairs
        or len(counts) == 1
    ):
        return kmeans(fit.codes, k, cfg.seed)
    val_router = router_data(model, validation)
    l2 = sorted(cfg.head_l2)[len(cfg.head_l2) // 2]
    tried: list[tuple[torch.Tensor, torch.Tensor]] = []  # (assignment, per-pair validation losses)
    for c in counts:
        assign = kmeans(fit.codes, c, cfg.seed)
        router_from_centroids(model, fit.u, fit.codes, assign)
        heads = fit_bt_heads(diff, assign, k, cluster_anchors(fit, assign, k), l2)
        with torch.no_grad():
            model.head.copy_(heads)
        tried.append((assign, pair_losses(model, validation, val_router)))
    # One-standard-error rule: the fewest clusters whose validation loss is within one standard error
    # (of the per-pair difference), or within MIN_GAIN, of the best count's.
    best = min(range(len(tried)), key=lambda i: float(tried[i][1].mean()))
    for assign, losses in tried:
        if not significant_gain(losses - tried[best][1], MIN_GAIN):
            return assign
    return tried[best][0]


@torch.no_grad()
def pair_losses(
    model: SparseMoERewardModel, f: PairFeatures, router: RouterData, batch: int = 8192
) -> torch.Tensor:
    """[N] Bradley-Terry loss of the routed model on each pair."""
    model.eval()
    out = []
    for s in range(0, len(f), batch):
        sl = slice(s, s + batch)
        o = model.pair(
            router.batch(sl),
            torch.from_numpy(np.ascontiguousarray(f.chosen[sl], np.float32)),
            torch.from_numpy(np.ascontiguousarray(f.rejected[sl], np.float32)),
        )
        out.append(-torch.log(o.prob_chosen(mixture=model.config.kind == "micro").clamp(min=1e-12)))
    return torch.cat(out) if out else torch.zeros(0)


def _init_heads(
    model: SparseMoERewardModel,
    diff: torch.Tensor,
    assign: torch.Tensor,
    anchors: dict[str, torch.Tensor],
    validation: PairFeatures | None,
    cfg: TrainConfig,
) -> tuple[str, float]:
    """Start each expert as its cluster's head, shrunk toward an anchor: the context model's prediction for
    the cluster (w0 + V times its mean code, which pools what all clusters share: a reversed preference is
    learnt from both sides) or the shared head w0. The anchor and the penalty of `cfg.head_l2` are those that
    give the routed model the lowest validation loss (the first anchor and the middle penalty without
    validation pairs). Returns the anchor's name and the penalty used."""
    grid = sorted(cfg.head_l2)
    names = list(anchors)
    if validation is None or len(validation) < cfg.min_validation_pairs:
        grid, names = [grid[len(grid) // 2]], names[:1]
    val_router = router_data(model, validation) if len(grid) * len(names) > 1 else None
    best: tuple[float, str, float, torch.Tensor | None] = (math.inf, names[0], grid[0], None)
    for name in names:
        for l2 in grid:
            heads = fit_bt_heads(diff, assign, model.num_experts, anchors[name], l2)
            with torch.no_grad():
                model.head.copy_(heads)
            loss = (
                validation_metrics(model, validation, router=val_router)["loss"]
                if val_router is not None
                else 0.0
            )
            if loss < best[0]:
                best = (loss, name, l2, heads)
    with torch.no_grad():
        model.head.copy_(best[3])
    return best[1], best[2]


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

    def evaluate_epoch(epoch: int, row: dict) -> float:
        if val_router is not None:
            row.update(
                {f"val_{k}": v for k, v in validation_metrics(model, validation, router=val_router).items()}
            )
        return row.get("val_loss", row.get("train_loss", math.inf))

    # The warm start is a candidate checkpoint too (epoch 0): training must improve on it to replace it.
    start_row: dict = {"epoch": 0}
    score = evaluate_epoch(0, start_row) if val_router is not None else math.inf
    history.append(start_row)
    warm = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best = (score, 0, warm)
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
                model, router.batch(idx), _rows(c, idx), _rows(r, idx), cfg, spec_w, noisy=True
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
        score = evaluate_epoch(epoch, row)
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
    if report.get("warm_start") and best[1] and val_router is not None:
        # A discovery warm start is kept unless training beats it by more than one standard error of the
        # per-pair validation gain: a smaller gain is noise, and the warm start is the simpler model.
        trained = pair_losses(model, validation, val_router)
        model.load_state_dict(warm)
        gain = pair_losses(model, validation, val_router) - trained
        if significant_gain(gain):
            model.load_state_dict(best[2])
        else:
            report["kept_warm_start"] = (
                f"epoch {best[1]} was better by {float(gain.mean()):.4f}, within one standard error"
            )
            best = (best[0], 0, warm)
    model.eval()
    return TrainResult(
        model,
        history,
        best_epoch=best[1],
        seconds=time.perf_counter() - start,
        epochs_planned=epochs,
        discovery=report,
    )
