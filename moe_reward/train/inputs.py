"""What a model reads while it trains: standardization fitted on the training features, the experts'
chosen-minus-rejected differences, and a fresh model for one candidate router input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..core.numeric import column_std
from ..embed.features import PairFeatures
from ..model.moe import ModelConfig, SparseMoERewardModel
from ..model.router_inputs import RouterData, router_data


def fit_standardization(
    model: SparseMoERewardModel, f: PairFeatures, router: RouterData | None = None
) -> None:
    """Per-dimension mean/scale of the router's vector channels and scale of the expert inputs, fitted
    on the training features (and the token scale of the attention channel)."""
    with torch.no_grad():
        if len(f) > 1:  # over chosen and rejected rows, read in chunks (no concatenated copy)
            model.response_scale.copy_(_floor(torch.from_numpy(column_std(f.chosen, f.rejected))))
        if router is None:
            router = RouterData([f.prompt])
        if model.prompt_mean.numel():
            mean, std = router.moments()
            model.prompt_mean.copy_(torch.from_numpy(mean))
            if len(f) > 1:
                model.prompt_scale.copy_(_floor(torch.from_numpy(std)))
        if model.queries is not None and router.tokens is not None and router.mask is not None:
            states = torch.from_numpy(router.tokens[router.mask].astype(np.float32))
            if len(states) > 1:
                model.token_scale.copy_(_floor(states.std(0)))


def _floor(std: torch.Tensor) -> torch.Tensor:
    """Floor a per-dimension std at a third of its median so near-constant dimensions are not blown up."""
    return std.clamp(min=max(float(std.median()) / 3, 1e-6))


def rows_float32(a: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    """Rows of a stored matrix (float16 at scale) as a float32 batch."""
    return torch.from_numpy(np.ascontiguousarray(a[idx], np.float32))


def pair_diff(model: SparseMoERewardModel, f: PairFeatures, rows: np.ndarray | None = None) -> torch.Tensor:
    """[N, D] chosen minus rejected expert inputs, standardized as the model's heads read them."""
    c, r = (f.chosen, f.rejected) if rows is None else (f.chosen[rows], f.rejected[rows])
    return torch.from_numpy(np.ascontiguousarray(c - r, np.float32)) / model.response_scale


def prepare(
    model_config: ModelConfig, channels: str, train: PairFeatures, vocabulary: list[str], idf: np.ndarray
) -> tuple[SparseMoERewardModel, RouterData]:
    """A model reading `channels`, with its lexical vocabulary and standardization fitted on `train`."""
    lexical = "lexical" in channels.split("+")
    mcfg = replace(
        model_config, router_input=channels, lexical_vocabulary=list(vocabulary) if lexical else []
    )
    model = SparseMoERewardModel(mcfg)
    if lexical:
        with torch.no_grad():
            model.lexical_idf.copy_(torch.from_numpy(idf))
    data = router_data(model, train)
    fit_standardization(model, train, data)
    return model, data
