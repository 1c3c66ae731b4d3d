"""What the reward server accepts and answers (pydantic models: validation and the OpenAPI docs), and its
size limits. Types are strict (a number is never read from text, a boolean never from a number) and
weights must be finite; sizes beyond the limits are refused before anything is scored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]


@dataclass(frozen=True)
class ServeLimits:
    """Bounds on what one request may ask for (checked before any text is tokenized)."""

    max_items: int = 1024  # (prompt, response) items per request
    max_chars: int = 100_000  # characters per prompt or response (the backbone reads ~256 tokens of them)
    max_body_bytes: int = 8 * 1024 * 1024  # request body, checked before it is parsed
    max_batch_items: int = 256  # items the micro-batcher puts in one forward pass
    batch_wait_ms: float = 10.0  # how long a batch waits for more requests before it starts
    max_pending_items: int = 16_384  # items waiting; beyond them requests get 503

    def __post_init__(self) -> None:
        for name in ("max_items", "max_chars", "max_body_bytes", "max_batch_items", "max_pending_items"):
            if not 1 <= getattr(self, name) <= 1 << 31:
                raise ValueError(f"{name} must be in [1, {1 << 31}], got {getattr(self, name)}")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise ValueError(f"batch_wait_ms must be in [0, 10000], got {self.batch_wait_ms}")


class Message(BaseModel):
    """One chat turn (TRL's conversational format)."""

    model_config = ConfigDict(extra="forbid")
    role: StrictStr
    content: StrictStr


class Item(BaseModel):
    """A response to score under its prompt: texts, or message lists (the response's last turn is the
    assistant's; they become text exactly as conversational training rows do)."""

    model_config = ConfigDict(extra="forbid")
    prompt: StrictStr | list[Message]
    response: StrictStr | list[Message]


class ScoreRequest(BaseModel):
    """``items`` (or ``pairs``, the same) to score; for the crowd (the router's mix) unless ``profile``
    (``annotator/name`` of the label store) or ``weights`` (one per expert) say whose reward it is."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {"prompt": "Keep it short: why is the sky blue?", "response": "Rayleigh scattering."}
                    ],
                    "profile": "alice/default",
                    "details": True,
                }
            ]
        },
    )
    items: list[Item] | None = None
    pairs: list[Item] | None = None
    profile: StrictStr | None = None
    weights: list[FiniteFloat] | None = None
    details: StrictBool = False


class GetRewardRequest(BaseModel):
    """OpenRLHF's remote reward model call: each query is its prompt followed by the response."""

    model_config = ConfigDict(
        extra="allow",  # OpenRLHF also sends labels (ignored)
        json_schema_extra={
            "examples": [
                {"query": ["Why is the sky blue? Rayleigh scattering."], "prompts": ["Why is the sky blue? "]}
            ]
        },
    )
    query: list[StrictStr]
    prompts: list[StrictStr] | None = None
    profile: StrictStr | None = None
    weights: list[FiniteFloat] | None = None


class ItemDetail(BaseModel):
    expert_rewards: list[float]  # every expert's reward of this response
    routing: list[float]  # the router's mixing weights for this prompt (top-k non-zero for sparse)
    router_probs: list[float]  # the router's full softmax
    routed_reward: float  # the crowd's reward (the routed mix), whatever weights the request used


class WeightsInfo(BaseModel):
    source: str  # "router", "profile" or "weights"
    profile: str | None = None
    labels: int | None = None
    weights: list[float] | None = None


class ScoreResponse(BaseModel):
    model: str
    rewards: list[float]
    weights: WeightsInfo
    details: list[ItemDetail] | None = None


class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]  # the same numbers (newer OpenRLHF reads scores)
    extra_logs: dict[str, Any] = {}


class ErrorResponse(BaseModel):
    error: str
