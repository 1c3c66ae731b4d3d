"""What training minimizes and how: the loss terms, the optimizer and its schedule, and the per-pair
losses every data-driven choice is made on.

Terms are means over the batch:

    bt            = softplus(-sum_k routing_k * margin_k)              Bradley-Terry on the routed mix
    sparsity      = H(router_probs) / log K                            local: each pair uses few experts
    balance       = K * sum_k f_k * P_k                                 global (Switch): all experts used
    diversity     = mean_{k != l} corr(margin_k, margin_l)^2           experts differ
    specialization= -log sum_k router_probs_k * sigmoid(margin_k)      mixture likelihood (MiCRo / EM)

(only `sparse` uses the last four; the mixture term is annealed away over `specialization_epochs`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..embed.features import PairFeatures
from ..model.moe import PairOutput, SparseMoERewardModel, entropy, margins_to_loss
from ..model.router_inputs import RouterData, router_data
from .config import TrainConfig


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
    total = torch.stack([weights[k] * v for k, v in terms.items()]).sum()
    logged = {k: float(v.detach()) for k, v in terms.items()}
    # Accuracy of the batch as seen while training (noisy gating): free, unlike a full pass per epoch.
    logged["accuracy"] = float((out.prob_chosen(mixture=model.config.kind == "micro") > 0.5).float().mean())
    return total, logged


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


@torch.no_grad()
def pair_probs(
    model: SparseMoERewardModel, f: PairFeatures, router: RouterData, batch: int = 8192
) -> torch.Tensor:
    """[N] P(chosen > rejected) under the routed model (the mixture for `micro`)."""
    model.eval()
    out = []
    for s in range(0, len(f), batch):
        sl = slice(s, s + batch)
        o = model.pair(
            router.batch(sl),
            torch.from_numpy(np.ascontiguousarray(f.chosen[sl], np.float32)),
            torch.from_numpy(np.ascontiguousarray(f.rejected[sl], np.float32)),
        )
        out.append(o.prob_chosen(mixture=model.config.kind == "micro"))
    return torch.cat(out) if out else torch.zeros(0)


def pair_losses(model: SparseMoERewardModel, f: PairFeatures, router: RouterData) -> torch.Tensor:
    """[N] Bradley-Terry loss of the routed model on each pair."""
    return -torch.log(pair_probs(model, f, router).clamp(min=1e-12))


def credit(prob: torch.Tensor) -> torch.Tensor:
    """Per-pair accuracy credit: 1 when the chosen response wins, 1/2 on a tie, 0 otherwise."""
    return (prob > 0.5).float() + 0.5 * (prob == 0.5).float()
