"""Reward functions for RLHF frameworks.

TRL's GRPO and RLOO trainers (and anything else that calls ``f(prompts, completions, **kwargs) ->
list[float]``) take the callable `reward_function` returns::

    from moe_reward.rlhf import reward_function
    reward = reward_function("runs/sparse", profile="alice/default")   # or "http://host:8000" (a server)
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward], ...)

In process, the model and its backbone load once per process (one `Scorer` per model, shared by every
function made for it). Against a running ``moe-reward serve`` (a URL, or several: the batch is split
across them) nothing loads locally. Prompts and completions may be texts or TRL's conversational message
lists; they become text exactly as conversational training rows do (`data.pairs.scoring_texts`), and the
backbone applies its chat template when the model was trained with one. Profiles are rebuilt from the
label store at every call, so labels added in the dashboard reach the next training step.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .data.pairs import scoring_texts

RewardFn = Callable[..., list[float]]
TOKEN_ENV = "MOE_REWARD_TOKEN"

_scorers: dict[tuple[str, str | None], Any] = {}
_scorers_lock = threading.Lock()


def load_scorer(model: str | Path, labels: str | Path | None = None):
    """The process's `Scorer` for this model (loaded on first use, then shared)."""
    from .serve.scorer import Scorer, resolve_model_dir

    key = (str(resolve_model_dir(model)), None if labels is None else str(Path(labels).resolve()))
    with _scorers_lock:
        if key not in _scorers:
            _scorers[key] = Scorer(key[0], labels=labels)
        return _scorers[key]


def _is_url(x: object) -> bool:
    return isinstance(x, str) and x.startswith(("http://", "https://"))


def reward_function(
    model: Any,
    profile: str | None = None,
    weights: Sequence[float] | None = None,
    *,
    profile_column: str | None = None,
    batch_size: int = 64,
    labels: str | Path | None = None,
    token: str | None = None,
    timeout: float = 300.0,
    name: str = "moe_reward",
) -> RewardFn:
    """A reward callable with TRL's signature, ``f(prompts, completions, **kwargs) -> list[float]``.

    `model`: a saved model directory or workspace model name (scored in this process), a loaded
    `serve.scorer.Scorer`, or the URL of a ``moe-reward serve`` (a list of URLs splits each batch across
    them). Whose reward: the crowd's (the router's mix) by default, a stored `profile`
    (``annotator/name``) or explicit `weights` (one per expert); `profile_column` names a dataset column
    TRL passes through (e.g. ``"user"``) whose value chooses each row's profile (empty: the default).
    Rows go to the model `batch_size` at a time. `labels`: the label store (default: the model's
    workspace's). `token`: the server's bearer token (default: $MOE_REWARD_TOKEN). The callable's
    ``__name__`` is `name` (TRL logs rewards under it).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if profile is not None and weights is not None:
        raise ValueError("give either profile or weights, not both")
    urls = list(model) if isinstance(model, list | tuple) else [model] if _is_url(model) else []
    if urls:
        if not all(_is_url(u) for u in urls):
            raise ValueError("model: a list must hold server URLs (http://host:port)")
        score = _remote(urls, token or os.environ.get(TOKEN_ENV), timeout, batch_size)
    else:
        from .serve.scorer import Scorer

        scorer = model if isinstance(model, Scorer) else load_scorer(str(model), labels)
        weights_list = None if weights is None else [float(w) for w in weights]
        if weights_list is not None:
            scorer.explicit_weights(weights_list)  # wrong length or non-finite: fail now, not at step 1

        def score(
            prompts: list[str], responses: list[str], who: str | None, w: list[float] | None
        ) -> list[float]:
            out: list[float] = []
            whose = scorer.weights_for(who, w)  # a profile's labels are read again at every call
            for start in range(0, len(prompts), batch_size):
                stop = start + batch_size
                out += scorer.rewards(prompts[start:stop], responses[start:stop], whose)
            return out

    fixed = None if weights is None else [float(w) for w in weights]

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        texts = [
            scoring_texts(p, c, f"completion {i}")
            for i, (p, c) in enumerate(zip(prompts, completions, strict=True))
        ]
        who: list[str | None] = [profile] * len(texts)
        if profile_column is not None:
            column = kwargs.get(profile_column)
            if column is None or len(column) != len(texts):
                raise ValueError(
                    f"profile_column {profile_column!r}: TRL passed no such column of {len(texts)} values "
                    f"(columns: {', '.join(sorted(kwargs)) or 'none'})"
                )
            who = [str(v) if v not in (None, "") else profile for v in column]
        rewards = [0.0] * len(texts)
        for key in dict.fromkeys(who):  # one call per distinct profile, rows in their order
            rows = [i for i, w in enumerate(who) if w == key]
            got = score(
                [texts[i][0] for i in rows],
                [texts[i][1] for i in rows],
                key,
                fixed if key is None else None,
            )
            for i, r in zip(rows, got, strict=True):
                rewards[i] = float(r)
        return rewards

    reward.__name__ = reward.__qualname__ = name
    return reward


def _remote(urls: list[str], token: str | None, timeout: float, batch_size: int):
    """score(prompts, responses, profile, weights) against servers' POST /score, chunks spread over them."""
    bases = [u.rstrip("/").removesuffix("/score").removesuffix("/get_reward").rstrip("/") for u in urls]

    def post(base: str, body: dict) -> list[float]:
        req = urllib.request.Request(
            f"{base}/score",
            data=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                **({"Authorization": f"Bearer {token}"} if token else {}),
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (a URL the caller gave)
                return json.loads(resp.read())["rewards"]
        except urllib.error.HTTPError as exc:
            try:
                why = json.loads(exc.read()).get("error", "")
            except (ValueError, AttributeError):
                why = ""
            raise RuntimeError(f"{base}/score answered {exc.code}: {why or exc.reason}") from None
        except urllib.error.URLError as exc:
            raise RuntimeError(f"{base}/score: cannot reach the reward server ({exc.reason})") from None

    def score(
        prompts: list[str], responses: list[str], who: str | None, w: list[float] | None
    ) -> list[float]:
        chunks = [(s, min(s + batch_size, len(prompts))) for s in range(0, len(prompts), batch_size)]
        extra: dict = {"profile": who} if who is not None else {"weights": w} if w is not None else {}

        def one(j: int) -> list[float]:
            a, b = chunks[j]
            items = [{"prompt": p, "response": r} for p, r in zip(prompts[a:b], responses[a:b], strict=True)]
            return post(bases[j % len(bases)], {"items": items, **extra})

        with ThreadPoolExecutor(max(1, min(len(chunks), 4 * len(bases)))) as pool:
            parts = list(pool.map(one, range(len(chunks))))
        return [r for part in parts for r in part]

    return score
