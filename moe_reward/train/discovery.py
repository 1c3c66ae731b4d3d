"""Discovery: does the prompt decide which preference applies, and if it does, a warm start that routes by it.

`sparse` models start from what discovery finds; every data-driven choice in it is made so that it holds
on pairs that did not make it, and the routed start has to earn its place against one head:

1. **Router input and penalty** (`choose_router_input`): fit a low-rank prompt-conditioned reward,
   margin = (P U) . (D V) + w0 . D, on what the router reads (P) and the experts' inputs (D), with a
   nuclear-norm penalty; the candidate router input and penalty with the best *validation* likelihood are
   kept. Too few validation pairs: nothing is chosen (the first candidate), and the reason is recorded.
2. **Clusters and heads** (`_choose_clusters`, `_init_heads`): k-means on the training pairs' preference
   codes P U, the count chosen on validation with the one-standard-error rule; the router starts as the
   nearest-centroid classifier and each expert as its cluster's Bradley-Terry head shrunk toward an anchor.
3. **The decision** (`cross_validate_routing`): that configuration is fitted again from scratch on K-1 folds
   of the *training* pairs (folds keep a prompt, or the `split_by` unit, on one side) and scored on the
   held-out fold, against one Bradley-Terry head fitted on the same pairs (its penalty the best for it on
   the held-out fold: the comparison favours the single head). The routed start is kept only if its
   per-pair gain exceeds the Bonferroni-corrected bar for every router input and cluster count that was
   tried (`selection.gain_test`, cluster-robust standard error). Otherwise -- and whenever there are fewer
   than `min_discovery_pairs` training pairs or `min_validation_pairs` validation pairs -- the sparse model
   *is* the `single` baseline (every expert its head), with the reason recorded.

Why a warm start at all: experts that start alike receive the same gradient, and on data whose preference
reverses with the context the average gradient cancels, so a plain MoE sits at a saddle where no expert
specializes; and a pooled sentence embedding of the prompt is dominated by its topic, so a router that
reads only it memorizes questions instead of finding the instruction that decides the preference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse

from ..data.pairs import split_value
from ..embed.features import PairFeatures
from ..model.moe import ModelConfig, SparseMoERewardModel
from ..model.router_inputs import RouterData, router_data
from .config import TrainConfig
from .inputs import pair_diff, prepare
from .objective import AdamW, credit, one_cycle_lr, pair_losses, pair_probs
from .selection import MIN_GAIN, GainTest, gain_test, significant_gain

SINGLE_HEAD = "single head"
ROUTED = "routed"


@dataclass
class DiscoveryReport:
    """What discovery decided and why (``metrics.json`` → ``discovery``; `summary.training_story` tells it).

    Keys that do not apply are left out of the JSON, so a report reads as it did before a field existed.
    """

    pairs: int = 0  # training pairs
    router_input: str | None = None
    router_input_reason: str | None = None  # how the router input was settled
    validation_loss: dict[str, float] = field(default_factory=dict)  # context model, per "input l2=..."
    context_free_loss: float | None = None  # validation loss of the prompt-independent part w0
    l2: float | None = None  # penalty of the kept context model
    context_helps: bool | None = None  # the context model beat w0 on validation by 2 standard errors
    warm_start: str | None = None  # "clusters" (routed) or "global" (every expert the single head)
    decision: str | None = None  # "routed" or "single head"
    decision_reason: str | None = None  # one plain sentence
    cv: dict | None = None  # the cross-validated routed-vs-single test (selection.GainTest)
    counts_tried: list[int] | None = None  # cluster counts compared on validation
    clusters: int | None = None
    cluster_sizes: list[int] | None = None
    head_anchor: str | None = None
    head_l2: float | None = None
    kept_warm_start: str | None = None  # why training did not replace the warm start
    checkpoint_test: dict | None = None  # the test a later epoch had to pass to replace the warm start

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and v != {}}

    @classmethod
    def from_dict(cls, raw: dict | None) -> DiscoveryReport:
        """A saved report (older versions' keys included; unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (raw or {}).items() if k in known})

    def single_head(self, reason: str) -> None:
        self.warm_start, self.decision, self.decision_reason = "global", SINGLE_HEAD, reason


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


DENSE_PROJECTION_CELLS = 4_000_000  # a sparse block up to this many cells (16 MB) is multiplied dense


class _Projection:
    """X u and its adjoint X^T a for the standardized router features X of some rows, X = (R - mean) / scale
    column-wise. The vector channels are multiplied block by block; a large sparse lexical block stays sparse
    (X u = R (u / scale) - (mean / scale) u), a small one is multiplied dense (faster)."""

    def __init__(self, model: SparseMoERewardModel, router: RouterData, rows: np.ndarray):
        self.mean, self.scale = model.prompt_mean.detach(), model.prompt_scale.detach()
        self.blocks: list[tuple[torch.Tensor, torch.Tensor, slice]] = []  # (R block, its transpose, columns)
        start = 0
        for b in router.blocks:
            sub, sl = b[rows], slice(start, start + b.shape[1])
            start += b.shape[1]
            if sparse.issparse(sub) and sub.shape[0] * sub.shape[1] > DENSE_PROJECTION_CELLS:
                t = _sparse_tensor(sub)
                self.blocks.append((t, _sparse_tensor(sub.T), sl))
            else:
                dense = sub.toarray() if sparse.issparse(sub) else sub
                t = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
                self.blocks.append((t, t.T, sl))

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        us = u / self.scale[:, None]
        out = -(self.mean @ us)
        for t, _, sl in self.blocks:
            out = out + (torch.sparse.mm(t, us[sl]) if t.is_sparse else t @ us[sl])
        return out

    def adjoint(self, a: torch.Tensor) -> torch.Tensor:
        """X^T a ([W, r] for a of [n, r]): the gradient of sum(X u * a) with respect to u."""
        parts = [torch.sparse.mm(tt, a) if tt.is_sparse else tt @ a for _, tt, _ in self.blocks]
        return (torch.cat(parts) - self.mean[:, None] * a.sum(0)) / self.scale[:, None]


def _sparse_tensor(m) -> torch.Tensor:
    coo = m.tocoo()
    return torch.sparse_coo_tensor(
        torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64)),
        torch.from_numpy(coo.data.astype(np.float32)),
        coo.shape,
        check_invariants=False,
    ).coalesce()


def _projector(
    model: SparseMoERewardModel, router: RouterData, rows: np.ndarray
) -> Callable[[torch.Tensor], torch.Tensor]:
    """u -> (standardized router features of `rows`) @ u (`_Projection`); with an attention channel the model
    computes the features (its queries are being fitted)."""
    if model.queries is not None:
        return lambda u: model.router_features(router.batch(rows)) @ u
    return _Projection(model, router, rows)


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
        dd, p = diff[chunks[j]], project[j]
        if isinstance(p, _Projection):  # no attention channel: the gradient written out (4x faster)
            _context_gradients(p, dd, u, v, w0, l2)
        else:
            margin = (p(u) * (dd @ v)).sum(-1) + dd @ w0
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


@torch.no_grad()
def _context_gradients(
    project: _Projection, dd: torch.Tensor, u: torch.Tensor, v: torch.Tensor, w0: torch.Tensor, l2: float
) -> None:
    """Set u.grad, v.grad, w0.grad of mean softplus(-margin) + l2 (|u|^2 + |v|^2 + |w0|^2) with
    margin_i = (X_i u) . (D_i v) + D_i . w0 (what autograd would give, without its per-step cost)."""
    pu, dv = project(u), dd @ v
    g = torch.sigmoid((pu * dv).sum(-1) + dd @ w0).sub_(1).div_(len(dd))  # d mean softplus(-m) / dm
    u.grad = project.adjoint(g[:, None] * dv).add_(u, alpha=2 * l2)
    v.grad = torch.addmm(v, dd.T, g[:, None] * pu, beta=2 * l2)
    w0.grad = torch.addmv(w0, dd.T, g, beta=2 * l2)


def kmeans(x: torch.Tensor, k: int, seed: int, n_init: int = 10) -> torch.Tensor:
    """Euclidean k-means (scikit-learn, k-means++ with `n_init` restarts); the cluster of each row."""
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    k = min(k, len(x))
    with warnings.catch_warnings():  # fewer distinct codes than clusters: some experts start empty, fine
        warnings.simplefilter("ignore", ConvergenceWarning)
        # (scikit-learn's annotations infer n_init's type from its default, "auto")
        fitted = KMeans(k, n_init=n_init, random_state=seed).fit(x.double().numpy())  # pyright: ignore[reportArgumentType]
    labels = fitted.labels_
    assert labels is not None
    return torch.from_numpy(np.asarray(labels, dtype=np.int64))


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
    weight = onehot / onehot.sum(0).clamp(min=1)  # each cluster's pairs averaged
    opt = AdamW([delta], lr=lr)
    # The loss sum_k mean_{i in k} softplus(-diff_i . head_k) + l2 |delta|^2 and its gradient written out
    # (d softplus(-m) / dm = sigmoid(m) - 1): autograd's per-step cost was most of the time.
    with torch.no_grad():
        for _ in range(steps):
            g = torch.sigmoid(diff @ (anchor + delta).T).sub_(1).mul_(weight)
            delta.grad = torch.addmm(delta, g.T, diff, beta=2 * l2)
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


def _subsample(n: int, limit: int, gen: torch.Generator) -> np.ndarray:
    return np.sort(torch.randperm(n, generator=gen)[:limit].numpy()) if n > limit else np.arange(n)


def _search_l2(
    name: str,
    model: SparseMoERewardModel,
    router: RouterData,
    diff: torch.Tensor,
    validation: tuple[RouterData, torch.Tensor],
    cfg: TrainConfig,
    report: DiscoveryReport,
) -> tuple[float, ContextFit]:
    """The penalty of `cfg.discovery_l2` with the best validation loss: from the grid's middle, walk up
    while it improves, else down."""
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
            assert fit.validation_loss is not None  # validation pairs were given
            scores[j] = (fit.validation_loss, fit)
            report.validation_loss[f"{name} l2={grid[j]:g}"] = round(fit.validation_loss, 6)
            if fit.context_free_loss is not None:
                report.context_free_loss = round(fit.context_free_loss, 6)
        return scores[j][0]

    j = len(grid) // 2
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
    validation: PairFeatures,
    cfg: TrainConfig,
    gen: torch.Generator,
    report: DiscoveryReport,
) -> tuple[int, ContextFit, np.ndarray]:
    """Fit the prompt-conditioned reward (`fit_context_preferences`) for every candidate router input,
    with its penalty searched on the log grid `cfg.discovery_l2` (from the middle, moving while the
    validation loss improves); keep the fit with the lowest validation loss (every loss goes into the
    report). Returns (index of the winning candidate, its fit, the training rows it read)."""
    rows = _subsample(len(train), cfg.discovery_max_pairs, gen)
    vrows = _subsample(len(validation), cfg.discovery_max_pairs, gen)
    best: tuple[float, int, ContextFit | None] = (math.inf, 0, None)
    for i, (name, model, data) in enumerate(candidates):
        val = (router_data(model, validation).subset(vrows), pair_diff(model, validation, vrows))
        score, fit = _search_l2(
            name, model, data.subset(rows), pair_diff(model, train, rows), val, cfg, report
        )
        if score < best[0] - 1e-9:
            best = (score, i, fit)
    assert best[2] is not None
    report.router_input, report.l2 = candidates[best[1]][0], best[2].l2
    if len(candidates) > 1:
        report.router_input_reason = "chosen on validation likelihood"
    return best[1], best[2], rows


def context_fit_without_validation(
    model: SparseMoERewardModel,
    data: RouterData,
    train: PairFeatures,
    cfg: TrainConfig,
    gen: torch.Generator,
    report: DiscoveryReport,
) -> tuple[ContextFit, np.ndarray]:
    """With too few validation pairs to choose a penalty: the context model at the grid's middle penalty
    (the cross-validated test still decides whether a routed start generalizes)."""
    rows = _subsample(len(train), cfg.discovery_max_pairs, gen)
    grid = sorted(cfg.discovery_l2)
    fit = fit_context_preferences(
        model,
        data.subset(rows),
        pair_diff(model, train, rows),
        torch.Generator().manual_seed(cfg.seed),
        l2=grid[len(grid) // 2],
        steps=cfg.discovery_steps,
    )
    report.l2 = fit.l2
    return fit, rows


CLUSTER_COUNTS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def cluster_counts(k: int) -> list[int]:
    """The cluster counts discovery compares for K experts: K and the counts of `CLUSTER_COUNTS` below it."""
    return sorted({c for c in CLUSTER_COUNTS if c < k} | {k})


def _choose_clusters(
    model: SparseMoERewardModel,
    fit: ContextFit,
    diff: torch.Tensor,
    validation: PairFeatures | None,
    cfg: TrainConfig,
) -> tuple[torch.Tensor, list[int]]:
    """How many groups of preference codes to start experts from: the count (K, or fewer from
    `CLUSTER_COUNTS`) whose warm-started routed model has the lowest validation loss. With more experts
    than criteria, K clusters split a criterion arbitrarily between experts; fewer clusters keep one
    expert per criterion and start the others, unused, as the shared head. Ties (within one standard
    error, or `MIN_GAIN`) go to fewer clusters. K without validation pairs. Returns the assignment and the
    counts compared."""
    k = model.num_experts
    counts = cluster_counts(k)
    if model.config.hidden_dim or len(counts) == 1 or validation is None:
        return kmeans(fit.codes, k, cfg.seed), [k]
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
    best = min(range(len(tried)), key=lambda i: float(tried[i][1].mean()))
    for assign, losses in tried:
        if not significant_gain(losses - tried[best][1], MIN_GAIN):
            return assign, counts
    return tried[best][0], counts


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
    give the routed model the lowest validation loss (without validation pairs: the first anchor and the
    grid's middle penalty). Returns the anchor's name and the penalty used."""
    grid, names = sorted(cfg.head_l2), list(anchors)
    if validation is None:
        grid, names = [grid[len(grid) // 2]], names[:1]
    val_router = router_data(model, validation) if validation is not None else None
    best: tuple[float, str, float, torch.Tensor] | None = None
    for name in names:
        anchor = anchors[name]
        for l2 in grid:
            heads = fit_bt_heads(diff, assign, model.num_experts, anchor, l2)
            with torch.no_grad():
                model.head.copy_(heads)
            loss = 0.0
            if val_router is not None and validation is not None:
                loss = float(pair_losses(model, validation, val_router).mean())
            if best is None or loss < best[0]:
                best = (loss, name, l2, heads)
    assert best is not None  # the grid and the anchors are never empty
    with torch.no_grad():
        model.head.copy_(best[3])
    return best[1], best[2]


def head_anchors(fit: ContextFit, assign: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    return {"context model": cluster_anchors(fit, assign, k), "shared head": fit.w0}


def split_units(features: PairFeatures, by: str | None) -> np.ndarray:
    """[N] the unit each pair belongs to for a split or a fold (its prompt, or the `by` field's value)."""
    return np.array([str(split_value(p, by)) for p in features.pairs], dtype=object)


def _folds(units: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds that keep every unit on one side, units shuffled by `seed`, sizes balanced."""
    names, inverse = np.unique(units, return_inverse=True)
    n = min(n_folds, len(names))
    if n < 2:
        return []
    order = np.random.default_rng(seed).permutation(len(names))
    sizes = np.bincount(inverse, minlength=len(names))
    fold_of, load = np.zeros(len(names), np.int64), np.zeros(n)
    for u in sorted(order, key=lambda u: -sizes[u]):  # largest units first, each to the lightest fold
        f = int(np.argmin(load))
        fold_of[u], load[f] = f, load[f] + sizes[u]
    pair_fold = fold_of[inverse]
    return [(np.flatnonzero(pair_fold != f), np.flatnonzero(pair_fold == f)) for f in range(n)]


CV_BUDGET = 15_000  # folds x pairs: many folds on small data (each fit sees nearly all of it), few on large


def cv_folds(n_pairs: int, cfg: TrainConfig) -> int:
    """How many folds the routed-vs-single test uses: up to `cfg.discovery_folds` on small data, where a fit
    on (K-1)/K of the pairs must stay close to the final fit, down to 4 on large data, where it already is."""
    return int(min(cfg.discovery_folds, max(4, CV_BUDGET // max(n_pairs, 1))))


@dataclass
class RoutedStart:
    """The configuration of a routed warm start, as discovery chose it on validation."""

    channels: str
    l2: float
    clusters: int
    anchor: str
    head_l2: float


def cross_validate_routing(
    model_config: ModelConfig,
    start: RoutedStart,
    train: PairFeatures,
    vocabulary: list[str],
    idf: np.ndarray,
    cfg: TrainConfig,
    candidates: int,
) -> GainTest:
    """Whether the routed warm start `start` generalizes: refit it from scratch on K-1 folds of the training
    pairs and score it on the held-out fold against one Bradley-Terry head fitted on the same pairs (its
    penalty the best of `cfg.head_l2` on the held-out fold itself: the comparison leans toward the single
    head). The gain is in accuracy (per-pair credit: 1 right, 1/2 tie, 0 wrong), which is what a routed
    model must not pay, and which a few confidently wrong pairs cannot swamp the way they swamp a log loss.
    The per-pair gains of all folds are tested with `selection.gain_test` (units: the folds' units,
    `candidates`: the configurations discovery compared on validation before picking this one)."""
    if len(train) > cfg.discovery_max_pairs:  # a seeded sample of whole units beyond the pair budget
        names = np.unique(split_units(train, cfg.split_by))
        order = np.random.default_rng(cfg.seed).permutation(len(names))
        unit_of = split_units(train, cfg.split_by)
        keep: set = set()
        count = 0
        sizes = dict(zip(*np.unique(unit_of, return_counts=True), strict=True))
        for i in order:
            if count >= cfg.discovery_max_pairs:
                break
            keep.add(names[i])
            count += sizes[names[i]]
        train = train.subset([i for i, u in enumerate(unit_of) if u in keep])
    units = split_units(train, cfg.split_by)
    folds = _folds(units, cv_folds(len(train), cfg), cfg.seed)
    gains = np.zeros(len(train))
    k = model_config.num_experts
    cfg_model = replace(model_config, hidden_dim=0)  # routing is what is tested: linear heads
    for fold, (fit_idx, held_idx) in enumerate(folds):
        sub, held = train.subset(fit_idx), train.subset(held_idx)
        model, data = prepare(cfg_model, start.channels, sub, vocabulary, idf)
        diff = pair_diff(model, sub)
        gen = torch.Generator().manual_seed(cfg.seed + 1000 * (fold + 1))
        fit = fit_context_preferences(model, data, diff, gen, l2=start.l2, steps=cfg.discovery_steps)
        assign = kmeans(fit.codes, start.clusters, cfg.seed)
        router_from_centroids(model, fit.u, fit.codes, assign)
        heads = fit_bt_heads(diff, assign, k, head_anchors(fit, assign, k)[start.anchor], start.head_l2)
        with torch.no_grad():
            model.head.copy_(heads)
        routed = credit(pair_probs(model, held, router_data(model, held)))
        held_diff = pair_diff(model, held)
        zeros = torch.zeros(len(diff), dtype=torch.long)
        single = max(
            (
                credit(
                    torch.sigmoid(held_diff @ fit_bt_heads(diff, zeros, 1, torch.zeros(diff.shape[1]), l2)[0])
                )
                for l2 in sorted(cfg.head_l2)
            ),
            key=lambda c: float(c.mean()),
        )
        gains[held_idx] = (routed - single).numpy()
    return gain_test(gains, units, candidates=candidates, alpha=cfg.discovery_alpha)


def routed_warm_start(
    model: SparseMoERewardModel,
    fit: ContextFit,
    rows: np.ndarray,
    train: PairFeatures,
    validation: PairFeatures | None,
    vocabulary: list[str],
    idf: np.ndarray,
    cfg: TrainConfig,
    report: DiscoveryReport,
    inputs_tried: int,
) -> bool:
    """Steps 2 and 3 of discovery (module docstring) on a model whose router input and standardization are
    settled and whose context model is `fit`: set the routed warm start, then keep it only if it generalizes
    (`cross_validate_routing`). Returns whether it was kept; the report says what was done and why."""
    diff = pair_diff(model, train, rows)
    assign, counts = _choose_clusters(model, fit, diff, validation, cfg)
    report.counts_tried = counts
    report.clusters = int(assign.max()) + 1
    report.cluster_sizes = np.bincount(assign.numpy(), minlength=model.num_experts).tolist()
    router_from_centroids(model, fit.u, fit.codes, assign)
    anchor, head_l2 = "context model", sorted(cfg.head_l2)[len(cfg.head_l2) // 2]
    if not model.config.hidden_dim:  # (MLP heads train from their initialization)
        anchor, head_l2 = _init_heads(
            model, diff, assign, head_anchors(fit, assign, model.num_experts), validation, cfg
        )
        report.head_anchor, report.head_l2 = anchor, head_l2
    assert report.router_input is not None and report.l2 is not None
    start = RoutedStart(report.router_input, report.l2, report.clusters, anchor, head_l2)
    pool = train if validation is None else PairFeatures.concat([train, validation])
    test = cross_validate_routing(model.config, start, pool, vocabulary, idf, cfg, inputs_tried * len(counts))
    report.cv = test.to_dict()
    if not test.significant:
        report.single_head(
            "the routed start was not more accurate than one head on held-out folds of the training pairs "
            f"({test.describe(unit='accuracy')})"
        )
        return False
    report.warm_start, report.decision = "clusters", ROUTED
    report.decision_reason = (
        f"the routed start was more accurate than one head on held-out folds of the training pairs "
        f"({test.describe(unit='accuracy')})"
    )
    return True
