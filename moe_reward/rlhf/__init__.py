"""Stage 10, rlhf: reward functions for RLHF frameworks.

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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..data.pairs import scoring_texts

TOKEN_ENV = "MOE_REWARD_TOKEN"

_scorers: dict[tuple[str, str | None], Any] = {}
_scorers_lock = threading.Lock()


def load_scorer(model: str | Path, labels: str | Path | None = None):
    """The process's `Scorer` for this model (loaded on first use, then shared)."""
    from ..serve.scorer import Scorer, resolve_model_dir

    key = (str(resolve_model_dir(model)), None if labels is None else str(Path(labels).resolve()))
    with _scorers_lock:
        if key not in _scorers:
            _scorers[key] = Scorer(key[0], labels=labels)
        return _scorers[key]


def _is_url(x: object) -> bool:
    return isinstance(x, str) and x.startswith(("http://", "https://"))


class RewardFunction:
    """TRL's reward callable, ``f(prompts, completions, **kwargs) -> list[float]`` (see `reward_function`).

    Picklable: a copy sent to another process (a Ray or multiprocessing worker) loads the model there
    once, on its first call, instead of carrying it along."""

    def __init__(
        self,
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
    ):
        from ..serve.scorer import Scorer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if profile is not None and weights is not None:
            raise ValueError("give either profile or weights, not both")
        self.__name__ = name  # TRL logs rewards under the callable's name
        self.profile, self.profile_column, self.batch_size = profile, profile_column, batch_size
        self.weights = None if weights is None else [float(w) for w in weights]
        self.urls = list(model) if isinstance(model, list | tuple) else [model] if _is_url(model) else []
        self.token, self.timeout = token or os.environ.get(TOKEN_ENV), timeout
        self._scorer = None
        self.model = self.labels = None
        if self.urls:
            if not all(_is_url(u) for u in self.urls):
                raise ValueError("model: a list must hold server URLs (http://host:port)")
            return
        if isinstance(model, Scorer):
            self._scorer, self.model, self.labels = model, str(model.model_dir), str(model.labels_path)
        else:
            self.model, self.labels = str(model), None if labels is None else str(labels)
        if self.weights is not None:
            self.scorer.explicit_weights(self.weights)  # wrong length or not finite: fail now, not at step 1

    @property
    def scorer(self):
        if self._scorer is None:
            self._scorer = load_scorer(self.model, self.labels)  # type: ignore[arg-type]
        return self._scorer

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_scorer": None}

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        texts = [
            scoring_texts(p, c, f"completion {i}")
            for i, (p, c) in enumerate(zip(prompts, completions, strict=True))
        ]
        who: list[str | None] = [self.profile] * len(texts)
        if self.profile_column is not None:
            column = kwargs.get(self.profile_column)
            if column is None or len(column) != len(texts):
                raise ValueError(
                    f"profile_column {self.profile_column!r}: TRL passed no such column of {len(texts)} values "
                    f"(columns: {', '.join(sorted(kwargs)) or 'none'})"
                )
            who = [str(v) if v not in (None, "") else self.profile for v in column]
        rewards = [0.0] * len(texts)
        for key in dict.fromkeys(who):  # one pass per distinct profile, rows in their order
            rows = [i for i, w in enumerate(who) if w == key]
            prompts_k, responses_k = [texts[i][0] for i in rows], [texts[i][1] for i in rows]
            weights = self.weights if key is None else None
            if self.urls:
                got = _remote_score(
                    self.urls, self.token, self.timeout, self.batch_size, prompts_k, responses_k, key, weights
                )
            else:
                whose = self.scorer.weights_for(
                    key, weights
                )  # a profile's labels are read again at every call
                got = []
                for start in range(0, len(rows), self.batch_size):
                    stop = start + self.batch_size
                    got += self.scorer.rewards(prompts_k[start:stop], responses_k[start:stop], whose)
            for i, r in zip(rows, got, strict=True):
                rewards[i] = float(r)
        return rewards


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
) -> RewardFunction:
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
    return RewardFunction(
        model,
        profile,
        weights,
        profile_column=profile_column,
        batch_size=batch_size,
        labels=labels,
        token=token,
        timeout=timeout,
        name=name,
    )


def _remote_score(
    urls: list[str],
    token: str | None,
    timeout: float,
    batch_size: int,
    prompts: list[str],
    responses: list[str],
    profile: str | None,
    weights: list[float] | None,
) -> list[float]:
    """Rewards from servers' POST /score, `batch_size` rows per request, requests spread over the servers."""
    bases = [u.rstrip("/").removesuffix("/score").removesuffix("/get_reward").rstrip("/") for u in urls]
    whose: dict = (
        {"profile": profile} if profile is not None else {"weights": weights} if weights is not None else {}
    )
    chunks = [(s, min(s + batch_size, len(prompts))) for s in range(0, len(prompts), batch_size)]

    def post(j: int) -> list[float]:
        a, b = chunks[j]
        base = bases[j % len(bases)]
        items = [{"prompt": p, "response": r} for p, r in zip(prompts[a:b], responses[a:b], strict=True)]
        req = urllib.request.Request(
            f"{base}/score",
            data=json.dumps({"items": items, **whose}).encode(),
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

    with ThreadPoolExecutor(max(1, min(len(chunks), 4 * len(bases)))) as pool:
        parts = list(pool.map(post, range(len(chunks))))
    return [r for part in parts for r in part]
