"""One model, loaded once, scoring (prompt, response) items for the crowd, a stored profile or given weights.

Who a reward is for:
- the crowd: the model's own routed mix (its router reads the prompt);
- a profile of the label store (``annotator/name``, or ``name`` when it is unique for this model): its
  weights now, rebuilt from its labels at every request (`LabelStore.load_profile`, incrementally), so a
  label stored in the dashboard changes the next reward without a restart. The weights are what the
  dashboard's Score your own and ``moe-reward labels --profiles`` show (`Adapter.weights`);
- explicit weights: K finite numbers (signed profiles may be negative).

Rewards come from `app.pipeline.score_responses`, the function behind ``moe-reward score`` and the
dashboard, so the server's numbers are theirs.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..app.pipeline import ScoredResponse, backbone_for, load_model, score_responses
from ..app.workspace import check_name, default_root
from ..embed.backbone import Backbone
from ..embed.cache import EmbeddingCache, MemoryCache
from ..model import modeldir

MAX_WEIGHT = 1e6  # |explicit weight|: larger ones could overflow a float32 reward
MAX_PROFILE_REF_CHARS = 400


class ServeError(ValueError):
    """A request the server refuses; `status` is the HTTP status it answers with."""

    status = 422


class UnknownProfile(ServeError):
    status = 404


class StoreUnavailable(ServeError):
    status = 503


def resolve_model_dir(model: str | Path) -> Path:
    """A model directory given as is, or a model name inside the workspace's ``models/``
    (``$MOE_REWARD_HOME``, or ./workspace), as the other commands resolve it (nothing is created)."""
    path = Path(model)
    if (path / "config.json").is_file():
        return path.resolve()
    name = str(model)
    if "/" in name or "\\" in name or not name:
        raise ValueError(f"{model}: not a saved model (missing config.json)")
    return (default_root() / "models" / check_name(name, "model")).resolve()


def default_labels_path(model_dir: Path) -> Path:
    """The label store whose profiles belong to the model: its workspace's ``labels.sqlite`` when the
    model lives in a workspace's ``models/`` folder, else ``$MOE_REWARD_HOME/labels.sqlite``."""
    if model_dir.parent.name == "models":
        return model_dir.parent.parent / "labels.sqlite"
    return default_root() / "labels.sqlite"


@dataclass
class Weights:
    """Whose reward: ``source`` is "router" (the crowd), "profile" or "weights"."""

    source: str = "router"
    vector: np.ndarray | None = None
    profile: str | None = None  # annotator/name
    labels: int | None = None  # labels the profile's weights were rebuilt from

    def describe(self) -> dict:
        out: dict = {"source": self.source}
        if self.profile is not None:
            out |= {"profile": self.profile, "labels": self.labels}
        if self.vector is not None:
            out["weights"] = [float(x) for x in self.vector]
        return out


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0
    seconds: float = 0.0  # in score_responses (embedding included)
    started: float = field(default_factory=time.time)

    def record(self, n: int, seconds: float) -> None:
        self.batches += 1
        self.items += n
        self.largest = max(self.largest, n)
        self.seconds += seconds

    def describe(self) -> dict:
        return {
            "batches": self.batches,
            "items": self.items,
            "mean_batch_items": round(self.items / self.batches, 3) if self.batches else None,
            "largest_batch_items": self.largest,
            "mean_batch_seconds": round(self.seconds / self.batches, 4) if self.batches else None,
            "uptime_seconds": round(time.time() - self.started, 1),
        }


class Scorer:
    """A saved model and its backbone, loaded once; thread-safe (one forward pass at a time)."""

    def __init__(
        self,
        model: str | Path,
        labels: str | Path | None = None,
        cache_entries: int = 50_000,
        cache_dir: str | Path | None = None,
        backbone: Backbone | None = None,
    ):
        self.model_dir = resolve_model_dir(model)
        self.model = load_model(self.model_dir)
        self.name = self.model_dir.name
        self.backbone = backbone if backbone is not None else backbone_for(self.model)
        disk = None if cache_dir is None else EmbeddingCache(cache_dir, self.backbone.cache_key)
        self.cache = MemoryCache(cache_entries, disk)
        self.labels_path = (
            Path(labels).resolve() if labels is not None else default_labels_path(self.model_dir)
        )
        self._store = None
        self._states: dict[int, object] = {}
        self._state_lock = threading.Lock()
        self._model_lock = threading.Lock()
        self.stats = BatchStats()

    @property
    def num_experts(self) -> int:
        return self.model.num_experts

    # ------------------------------------------------------------------ what is served
    def describe(self) -> dict:
        """The model, its backbone and its held-out numbers (subset and pair count named)."""
        cfg = self.model.config
        metrics = modeldir.read_metrics(self.model_dir)
        test = metrics.get("test") or {}
        held_out = None
        if (
            isinstance(test.get("accuracy"), float)
            and math.isfinite(test["accuracy"])
            and test.get("n_pairs")
        ):
            held_out = {
                "subset": metrics.get("test_subset", "test"),
                "n_pairs": int(test["n_pairs"]),
                "accuracy": test["accuracy"],
            }
        return {
            "name": self.name,
            "path": str(self.model_dir),
            "description": self.model.describe(),
            "kind": cfg.kind,
            "num_experts": cfg.num_experts,
            "top_k": cfg.top_k,
            "router_input": cfg.router_input,
            "expert_names": list(cfg.expert_names) or [f"E{k}" for k in range(cfg.num_experts)],
            "backbone": self.backbone.metadata(),
            "held_out": held_out,
            "labels_db": str(self.labels_path),
        }

    # ------------------------------------------------------------------ profiles
    def store(self):
        """The label store, opened once it exists (a server may start before the first label)."""
        from ..personalize.store import LabelStore, StoreError

        if self._store is None and self.labels_path.is_file():
            try:
                self._store = LabelStore(self.labels_path)
            except StoreError as exc:
                raise StoreUnavailable(f"label store {self.labels_path}: {exc}") from None
        return self._store

    def _records(self) -> list:
        import sqlite3

        from ..personalize.store import StoreError

        store = self.store()
        if store is None:
            return []
        try:
            return store.profiles(model=self.name)
        except (StoreError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"label store {self.labels_path}: {exc}") from None

    def _state(self, rec):
        """The profile rebuilt from its labels now (only labels added since the last call are replayed)."""
        import sqlite3

        from ..personalize.store import StoreError

        with self._state_lock:
            previous = self._states.get(rec.id)
        try:
            state = self.store().load_profile(rec.id, previous=previous)  # type: ignore[union-attr]
        except (StoreError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"label store {self.labels_path}: {exc}") from None
        with self._state_lock:
            self._states[rec.id] = state
        return state

    def profiles(self) -> list[dict]:
        """This model's profiles in the store, each with its weights now (or why it has none)."""
        out = []
        for rec in self._records():
            row: dict = {
                "profile": f"{rec.annotator}/{rec.name}",
                "annotator": rec.annotator,
                "name": rec.name,
                "adapter": rec.adapter,
                "updated_at": rec.updated_at,
            }
            try:
                state = self._state(rec)
                row |= {
                    "labels": len(state.label_ids) - state.unusable,
                    "weights": [float(x) for x in state.adapter.weights],
                }
            except ServeError:
                raise
            except (ValueError, KeyError, TypeError) as exc:  # a profile without settings, a broken spec
                row |= {"labels": None, "weights": None, "problem": str(exc)[:200]}
            out.append(row)
        return out

    def find_profile(self, ref: str):
        """The profile ``annotator/name`` (or ``name``, when only one annotator has it) of this model."""
        if not isinstance(ref, str) or not ref.strip() or len(ref) > MAX_PROFILE_REF_CHARS:
            raise ServeError(f"profile: expected 'annotator/name' (1-{MAX_PROFILE_REF_CHARS} characters)")
        ref = ref.strip()
        records = self._records()
        exact = [r for r in records if f"{r.annotator}/{r.name}" == ref]
        found = exact or [r for r in records if r.name == ref]
        if len(found) == 1:
            return found[0]
        if found:
            names = ", ".join(sorted(f"{r.annotator}/{r.name}" for r in found)[:10])
            raise ServeError(f"profile {ref!r} is ambiguous for model {self.name}: use one of {names}")
        known = ", ".join(sorted(f"{r.annotator}/{r.name}" for r in records)[:10]) or "none yet"
        raise UnknownProfile(
            f"no profile {ref!r} for model {self.name} in {self.labels_path} (profiles: {known})"
        )

    def profile_weights(self, ref: str) -> Weights:
        rec = self.find_profile(ref)
        try:
            state = self._state(rec)
        except ServeError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise ServeError(
                f"profile {rec.annotator}/{rec.name} cannot be rebuilt: {str(exc)[:200]}"
            ) from None
        vec = np.asarray(state.adapter.weights, dtype=np.float64)
        if vec.shape != (self.num_experts,):
            raise ServeError(
                f"profile {rec.annotator}/{rec.name} is over {vec.size} experts; {self.name} has {self.num_experts}"
            )
        return Weights("profile", vec, f"{rec.annotator}/{rec.name}", len(state.label_ids) - state.unusable)

    def explicit_weights(self, values: Sequence[float]) -> Weights:
        vec = np.asarray(list(values), dtype=np.float64)
        if vec.shape != (self.num_experts,):
            raise ServeError(f"weights: {vec.size} numbers for a model of {self.num_experts} experts")
        if not np.all(np.isfinite(vec)) or np.abs(vec).max() > MAX_WEIGHT:
            raise ServeError(
                f"weights: every weight must be a finite number in [-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}]"
            )
        return Weights("weights", vec)

    def weights_for(self, profile: str | None = None, weights: Sequence[float] | None = None) -> Weights:
        """Whose reward a request asks for (at most one of profile and weights)."""
        if profile is not None and weights is not None:
            raise ServeError("give either profile or weights, not both")
        if profile is not None:
            return self.profile_weights(profile)
        if weights is not None:
            return self.explicit_weights(weights)
        return Weights()

    # ------------------------------------------------------------------ scoring
    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        weights: Sequence[np.ndarray | None] | None = None,
    ) -> list[ScoredResponse]:
        """One forward pass over the rows (one at a time per process: the backbone is the slow part)."""
        with self._model_lock:
            t0 = time.perf_counter()
            out = score_responses(self.model, self.backbone, prompts, responses, weights, cache=self.cache)
            self.stats.record(len(prompts), time.perf_counter() - t0)
        for s in out:
            values = [s.reward, *s.expert_rewards] + (
                [] if s.personalized_reward is None else [s.personalized_reward]
            )
            if not all(math.isfinite(v) for v in values):
                raise ArithmeticError(f"a non-finite reward for response {s.response[:60]!r}")
        return out

    def rewards(
        self, prompts: Sequence[str], responses: Sequence[str], whose: Weights | None = None
    ) -> list[float]:
        """The reward of each row for the crowd (whose=None) or for a profile's or given weights."""
        vec = None if whose is None else whose.vector
        scored = self.score(prompts, responses, None if vec is None else [vec] * len(prompts))
        return [s.reward if s.personalized_reward is None else s.personalized_reward for s in scored]
