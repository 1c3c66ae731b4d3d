"""The sparse Mixture-of-Experts reward model and its baselines, in one readable file.

Inputs are backbone embeddings (see `embed.py`): ``prompt`` [B, D] feeds the router and ``response``
[B, D] (the embedding of prompt + response) feeds the K expert heads. For one text:

    expert_rewards[b, k] = head_k(response[b])                       # every expert scores it
    routing[b]           = gate(router(prompt[b]))                   # a point on the simplex
    reward[b]            = sum_k routing[b, k] * expert_rewards[b, k]

Kinds (all share this interface, so every analysis, adapter and page works on each of them):
- ``sparse``: linear router, top-k softmax gate (renormalized over the k chosen), optional noisy gating
  while training; trained with Bradley-Terry plus sparsity, balance and diversity terms (see train.py).
- ``dense``: vanilla MoE, softmax routing over all experts, plain BT.
- ``single``: one Bradley-Terry head (K = 1).
- ``drm``: DRM-style decomposed reward: heads are the top-K principal directions of the chosen-minus-
  rejected embedding differences (frozen), mixed with one global learned weight vector.
- ``micro``: MiCRo-style mixture: dense router, trained on the mixture likelihood
  P(chosen > rejected) = sum_k routing_k * sigmoid(margin_k).
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..core import atomic
from ..core.limits import (
    MAX_CONFIG_BYTES,
    MAX_DIM,
    MAX_EXPERTS,
    MAX_MAX_LENGTH,
    MAX_METRICS_BYTES,
    MAX_PARAMETERS,
    MAX_VOCABULARY,
)

MODEL_KINDS = ("sparse", "dense", "single", "drm", "micro")
ROUTED_KINDS = ("sparse", "dense", "micro")  # kinds whose routing depends on the prompt
ROUTER_CHANNELS = ("pooled", "lexical", "attention")  # what the router may read (see router_inputs.py)
POOLINGS = ("auto", "mean", "last")

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


class CheckpointError(ValueError):
    """A saved model directory that cannot be used; the message names the file and what is wrong with it."""


class MissingCheckpointFile(CheckpointError, FileNotFoundError):
    """A saved model directory without one of its files."""


def _type_ok(value: object, annotation: str) -> bool | None:
    """Whether `value` fits a dataclass field's annotation (None: an annotation this check does not know)."""
    if annotation == "bool":
        return isinstance(value, bool)
    if annotation == "int":  # numbers.Integral: numpy integers too
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if annotation == "float":
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if annotation == "str":
        return isinstance(value, str)
    if annotation == "dict":
        return isinstance(value, dict)
    if annotation == "list[str]":
        return isinstance(value, list) and all(isinstance(x, str) for x in value)
    return None


_TYPE_NAMES = {
    "bool": "true or false",
    "int": "an integer",
    "float": "a finite number",
    "str": "text",
    "dict": "an object",
    "list[str]": "a list of texts",
}


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_channels(spec: str) -> tuple[str, ...]:
    """``"pooled+lexical"`` -> ("pooled", "lexical"): validated, in canonical order."""
    parts = {p.strip() for p in str(spec).split("+") if p.strip()}
    bad = sorted(parts - set(ROUTER_CHANNELS))
    if bad or not parts:
        raise ValueError(
            f"router input must be 'auto' or channels joined by '+' from {ROUTER_CHANNELS}, got {spec!r}"
        )
    return tuple(c for c in ROUTER_CHANNELS if c in parts)


@dataclass
class ModelConfig:
    kind: str = "sparse"
    input_dim: int = 384  # expert inputs: the backbone's prompt+response embedding
    # What the router reads (router_inputs.py): channels joined by "+", or "auto" (training chooses by
    # validation likelihood and saves the choice). Only routed kinds read it.
    router_input: str = "pooled"
    lexical_vocabulary: list[str] = field(default_factory=list)  # the lexical channel's terms (fitted)
    attention_queries: int = 2  # learned queries of the attention channel
    max_prompt_tokens: int = 64  # token states the attention channel reads per prompt
    num_experts: int = 8
    top_k: int = 2
    hidden_dim: int = 0  # 0: linear expert heads; >0: one hidden layer per expert
    shared_head: bool = False  # experts = shared head + own head (see __init__)
    router_noise: float = 0.3  # std of the gating noise added to router logits while training (sparse)
    expert_names: list[str] = field(default_factory=list)  # optional labels, e.g. after describing experts
    backbone: dict = field(default_factory=dict)  # how the inputs were embedded (name, pooling, max_length)

    def __post_init__(self) -> None:
        for f in fields(self):  # types first: a config.json may hold anything
            value = getattr(self, f.name)
            if _type_ok(value, str(f.type)) is False:
                what = _TYPE_NAMES.get(str(f.type), str(f.type))
                raise ValueError(f"{f.name} must be {what}, got {type(value).__name__} {_short(value)}")
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if self.kind == "single":
            self.num_experts, self.top_k = 1, 1
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts}")
        if self.kind != "sparse":
            self.top_k = self.num_experts
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={self.num_experts}], got {self.top_k}")
        if self.input_dim < 1 or self.hidden_dim < 0 or self.router_noise < 0:
            raise ValueError("input_dim must be >= 1, hidden_dim and router_noise >= 0")
        if self.kind not in ROUTED_KINDS:
            self.router_input = "pooled"  # no router: nothing to choose
        if self.router_input != "auto":
            self.router_input = "+".join(parse_channels(self.router_input))
        if self.attention_queries < 1 or self.max_prompt_tokens < 1:
            raise ValueError("attention_queries and max_prompt_tokens must be >= 1")
        self._check_bounds()

    def _check_bounds(self) -> None:
        """Sizes are bounded before any tensor is allocated (a config from a file may ask for terabytes)."""
        for name, limit in (
            ("num_experts", MAX_EXPERTS),
            ("input_dim", MAX_DIM),
            ("hidden_dim", MAX_DIM),
            ("attention_queries", 256),
            ("max_prompt_tokens", MAX_MAX_LENGTH),
        ):
            if getattr(self, name) > limit:
                raise ValueError(f"{name} must be <= {limit}, got {getattr(self, name)}")
        if len(self.lexical_vocabulary) > MAX_VOCABULARY:
            raise ValueError(
                f"lexical_vocabulary must have <= {MAX_VOCABULARY} terms, got {len(self.lexical_vocabulary)}"
            )
        size = self.approximate_size()
        if size > MAX_PARAMETERS:
            raise ValueError(
                f"a model of about {size} values (num_experts {self.num_experts}, input_dim "
                f"{self.input_dim}, hidden_dim {self.hidden_dim}, {len(self.lexical_vocabulary)} "
                f"lexical terms), more than the limit of {MAX_PARAMETERS}"
            )
        b = self.backbone
        if "backbone" in b and not (isinstance(b["backbone"], str) and b["backbone"].strip()):
            raise ValueError(f"backbone.backbone must be a model name or path, got {_short(b['backbone'])}")
        if "pooling" in b and b["pooling"] not in POOLINGS:
            raise ValueError(f"backbone.pooling must be one of {POOLINGS}, got {_short(b['pooling'])}")
        for key, limit in (("max_length", MAX_MAX_LENGTH), ("dim", MAX_DIM)):
            if key in b and not (_type_ok(b[key], "int") and 1 <= b[key] <= limit):
                raise ValueError(f"backbone.{key} must be an integer in [1, {limit}], got {_short(b[key])}")

    def approximate_size(self) -> int:
        """About how many values a model of this config holds (expert heads and router), computed before
        anything is allocated; the exact tensors are checked against the file on load."""
        k, d, h = self.num_experts, self.input_dim, self.hidden_dim
        heads = k * d * h + 2 * k * h if h else k * d
        if self.kind not in ROUTED_KINDS:
            return heads + k + 3 * d
        width = (
            d
            + len(self.lexical_vocabulary)
            + (self.attention_queries * d if "attention" in self.router_input else 0)
        )
        return heads + (k + 2) * width + 3 * d

    @property
    def channels(self) -> tuple[str, ...]:
        if self.router_input == "auto":
            raise ValueError("router_input 'auto' is resolved by training (train.choose_router_input)")
        return parse_channels(self.router_input)

    @property
    def vector_dim(self) -> int:
        """Width of the router's vector channels (pooled prompt embedding and/or lexical TF-IDF)."""
        ch = self.channels
        return (self.input_dim if "pooled" in ch else 0) + (
            len(self.lexical_vocabulary) if "lexical" in ch else 0
        )


@dataclass
class RouterBatch:
    """Router inputs of B prompts when the router reads more than one vector: the vector channels
    [B, R] (or None) and, for the attention channel, token states [B, T, D] with their mask [B, T]."""

    vector: torch.Tensor | None
    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        if self.vector is not None:
            return len(self.vector)
        return 0 if self.tokens is None else len(self.tokens)


def batch_size(prompt: torch.Tensor | RouterBatch) -> int:
    return len(prompt) if isinstance(prompt, RouterBatch) else prompt.shape[0]


@dataclass
class RewardOutput:
    reward: torch.Tensor  # [B] the routed mix
    routing: torch.Tensor  # [B, K] mixing weights actually used (exactly top_k non-zero for sparse)
    expert_rewards: torch.Tensor  # [B, K] every expert's reward
    router_probs: torch.Tensor  # [B, K] the router's full softmax (before top-k)


@dataclass
class PairOutput:
    margin: torch.Tensor  # [B] reward(chosen) - reward(rejected) under the routing used
    routing: torch.Tensor  # [B, K]
    expert_margins: torch.Tensor  # [B, K]
    router_probs: torch.Tensor  # [B, K]
    router_logits: torch.Tensor  # [B, K]

    def prob_chosen(self, mixture: bool = False) -> torch.Tensor:
        """P(chosen > rejected): BT on the mixed margin, or the MiCRo mixture of per-expert BT."""
        if mixture:
            return (self.routing * torch.sigmoid(self.expert_margins)).sum(-1)
        return torch.sigmoid(self.margin)


def top_k_gate(probs: torch.Tensor, k: int, select: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the k largest router probabilities of each row (ranked by `select`, e.g. noisy logits, when
    given) and renormalize them to sum to 1."""
    if k >= probs.shape[-1]:
        return probs
    index = (probs if select is None else select).topk(k, dim=-1).indices
    gate = torch.zeros_like(probs).scatter(-1, index, probs.gather(-1, index))
    return gate / gate.sum(-1, keepdim=True).clamp(min=1e-12)


class SparseMoERewardModel(nn.Module):
    # Buffers (register_buffer): declared so that they read as tensors, not `Tensor | Module`.
    response_scale: torch.Tensor
    prompt_mean: torch.Tensor
    prompt_scale: torch.Tensor
    lexical_idf: torch.Tensor  # lexical router input only
    token_scale: torch.Tensor  # attention router input only

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        k, d, h = config.num_experts, config.input_dim, config.hidden_dim
        if h:
            self.hidden = nn.Parameter(torch.randn(k, d, h) / d**0.5)
            self.hidden_bias = nn.Parameter(torch.zeros(k, h))
            self.head = nn.Parameter(torch.randn(k, h) / h**0.5)
        else:
            # Random heads break the symmetry between experts; one head (a convex BT problem) starts at 0.
            self.head = nn.Parameter(torch.randn(k, d) / d**0.5 if k > 1 else torch.zeros(k, d))
        # A head shared by all experts learns what every context agrees on (from all the data), so the
        # experts' own heads only carry what differs; each expert's reward is shared + own.
        self.shared_head = (
            nn.Parameter(torch.zeros(self.head.shape[-1])) if config.shared_head and k > 1 else None
        )
        # Standardization of the inputs, fitted on the training features (see train.py): backbone
        # embeddings of prompts are all alike (high cosine), so centering makes the context visible.
        self.register_buffer("response_scale", torch.ones(d))
        r = config.vector_dim
        self.register_buffer("prompt_mean", torch.zeros(r))
        self.register_buffer("prompt_scale", torch.ones(r))
        self.queries = None
        # Rewards are only defined up to a shift per prompt, so heads carry no bias.
        if config.kind in ROUTED_KINDS:
            channels = config.channels
            if "lexical" in channels:  # idf weights of the vocabulary (used by router_inputs, saved here)
                self.register_buffer("lexical_idf", torch.ones(len(config.lexical_vocabulary)))
            if "attention" in channels:
                self.queries = nn.Parameter(torch.randn(config.attention_queries, d) * 0.1)
                self.register_buffer("token_scale", torch.ones(d))
                r += config.attention_queries * d
            self.router = nn.Linear(r, k)
            nn.init.normal_(self.router.weight, std=0.01)  # start near uniform routing
            nn.init.zeros_(self.router.bias)
        else:  # single and drm: one prompt-independent weight vector
            self.global_logits = nn.Parameter(torch.zeros(k))
        if config.kind == "drm":
            self.head.requires_grad_(False)  # the PCA basis is fitted, not trained (see train.fit_drm_basis)

    # ------------------------------------------------------------------ parts
    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    def expert_rewards(self, response: torch.Tensor) -> torch.Tensor:
        response = response / self.response_scale
        if self.config.hidden_dim:
            z = torch.relu(torch.einsum("bd,kdh->bkh", response, self.hidden) + self.hidden_bias)
            return (z * self.expert_heads()).sum(-1)
        return response @ self.expert_heads().T

    def expert_heads(self) -> torch.Tensor:
        return self.head if self.shared_head is None else self.head + self.shared_head

    def attend(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention pooling of prompt token states [B, T, D] by the learned queries:
        (pooled [B, Q, D], weights [B, Q, T]); a prompt without tokens pools to zeros."""
        x = tokens.to(self.token_scale.dtype) / self.token_scale
        scores = torch.einsum("btd,qd->bqt", x, self.queries) / x.shape[-1] ** 0.5
        scores = scores.masked_fill(~mask.bool()[:, None, :], float("-inf"))
        weights = torch.nan_to_num(torch.softmax(scores, -1), nan=0.0)
        return torch.einsum("bqt,btd->bqd", weights, x), weights

    def router_features(self, prompt: torch.Tensor | RouterBatch) -> torch.Tensor:
        """The router's input after standardization: vector channels, then attention-pooled tokens."""
        vector, tokens, mask = (
            (prompt.vector, prompt.tokens, prompt.mask)
            if isinstance(prompt, RouterBatch)
            else (prompt, None, None)
        )
        parts = []
        if self.prompt_mean.numel():
            if vector is None or vector.shape[-1] != self.prompt_mean.numel():
                got = None if vector is None else vector.shape[-1]
                raise ValueError(
                    f"this router reads {self.config.router_input} ({self.prompt_mean.numel()} values per "
                    f"prompt), got {got}; build its inputs with router_inputs.router_data"
                )
            parts.append((vector - self.prompt_mean) / self.prompt_scale)
        if self.queries is not None:
            if tokens is None or mask is None:
                raise ValueError(
                    "this router attends over prompt tokens: build its inputs with router_inputs.router_data"
                )
            parts.append(self.attend(tokens, mask)[0].flatten(1))
        return torch.cat(parts, -1)

    def router_logits(
        self, prompt: torch.Tensor | RouterBatch, user_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.config.kind in ROUTED_KINDS:
            logits = self.router(self.router_features(prompt))
        else:
            logits = self.global_logits.expand(batch_size(prompt), -1)
        return logits if user_bias is None else logits + user_bias

    def gate(self, logits: torch.Tensor, noisy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(routing weights used, full softmax). Noise only perturbs which experts a sparse model picks."""
        probs = torch.softmax(logits, dim=-1)
        if self.config.kind != "sparse":
            return probs, probs
        select = logits + torch.randn_like(logits) * self.config.router_noise if noisy else None
        return top_k_gate(probs, self.config.top_k, select), probs

    def routing(
        self,
        prompt: torch.Tensor | RouterBatch,
        user_weights: torch.Tensor | None = None,
        user_bias: torch.Tensor | None = None,
        noisy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(routing, router_probs, router_logits). `user_weights` (a point on the simplex) replaces the
        router: a personalized profile; `user_bias` is added to the router's logits instead."""
        logits = self.router_logits(prompt, user_bias)
        if user_weights is not None:
            w = user_weights.to(logits.dtype).expand(logits.shape[0], -1)
            return w, torch.softmax(logits, -1), logits
        routing, probs = self.gate(logits, noisy)
        return routing, probs, logits

    # ------------------------------------------------------------------ forward passes
    def forward(
        self,
        prompt: torch.Tensor | RouterBatch,
        response: torch.Tensor,
        user_weights: torch.Tensor | None = None,
        user_bias: torch.Tensor | None = None,
    ) -> RewardOutput:
        routing, probs, _ = self.routing(prompt, user_weights, user_bias)
        rewards = self.expert_rewards(response)
        return RewardOutput((routing * rewards).sum(-1), routing, rewards, probs)

    def pair(
        self,
        prompt: torch.Tensor | RouterBatch,
        chosen: torch.Tensor,
        rejected: torch.Tensor,
        user_weights: torch.Tensor | None = None,
        user_bias: torch.Tensor | None = None,
        noisy: bool = False,
    ) -> PairOutput:
        routing, probs, logits = self.routing(prompt, user_weights, user_bias, noisy)
        margins = self.expert_rewards(chosen) - self.expert_rewards(rejected)
        return PairOutput((routing * margins).sum(-1), routing, margins, probs, logits)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path, metrics: dict | None = None) -> Path:
        """``config.json`` + ``model.safetensors`` (+ ``metrics.json``): nothing here is pickled. Each file is
        written atomically (a full disk or a crash leaves the previous file, never a truncated one); the
        tensors go first, so a new directory interrupted half-way has no config.json and is no model yet.
        (Overwriting a model, a crash between two files can pair old and new files: `from_pretrained`
        then reports the mismatch, naming the file.)"""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic.write_with(out / "model.safetensors", lambda tmp: save_file(tensors, tmp))
        atomic.write_text(out / "config.json", json.dumps(asdict(self.config), indent=2))
        if metrics is not None:
            atomic.write_text(out / "metrics.json", json.dumps(metrics, indent=2))
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> SparseMoERewardModel:
        """Load a saved model, checking everything before use: the config's types and bounds, then the
        tensors' names, shapes and dtypes against what the config implies (read from the file's header,
        before any tensor is loaded), then that every value is finite. Raises `CheckpointError` (a
        ValueError) naming the file."""
        src = Path(directory)
        config = read_config(src)
        path = src / "model.safetensors"
        if not path.is_file():
            raise MissingCheckpointFile(f"{src}: not a saved model (missing model.safetensors)")
        with _open_tensors(path) as fh:
            header = _tensor_header(fh, path)
            held = sum(math.prod(shape) for shape, _ in header.values())
            # The model is built for real (a meta-device skeleton would import torch._dynamo, ~1 s), so its
            # size is first checked against what the file holds: a config cannot make us allocate far more.
            if config.approximate_size() > 4 * held + (1 << 20):
                raise CheckpointError(
                    f"{src / 'config.json'}: describes a model of about {config.approximate_size()} "
                    f"values, but {path.name} holds {held}"
                )
            try:
                model = cls(config)
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"{src / 'config.json'}: {exc}") from None
            expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            _check_header(path, header, expected)
            state = _read_tensors(fh, path, list(expected))
        model.load_state_dict(state)
        return model.eval()

    def describe(self) -> str:
        c = self.config
        route = {
            "sparse": f"top-{c.top_k} of {c.num_experts}",
            "dense": f"softmax over {c.num_experts}",
            "micro": f"mixture of {c.num_experts}",
            "drm": f"{c.num_experts} PCA heads",
            "single": "one head",
        }
        router = f", router reads {c.router_input}" if c.kind in ROUTED_KINDS else ""
        return f"{c.kind} ({route[c.kind]}, {'MLP' if c.hidden_dim else 'linear'} heads, input {c.input_dim}-d{router})"


def _read_json_file(path: Path, limit: int) -> object:
    try:
        size = path.stat().st_size
        if size > limit:
            raise CheckpointError(f"{path}: {size} bytes, more than the limit of {limit}")
        return json.loads(path.read_bytes().decode("utf-8"))
    except CheckpointError:
        raise
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        truncated = exc.msg.startswith("Unterminated") or exc.pos >= len(exc.doc) - 1
        raise CheckpointError(
            f"{path}: bad JSON at line {exc.lineno} column {exc.colno}: "
            f"{exc.msg.removesuffix(' starting at')}" + (" (truncated file?)" if truncated else "")
        ) from None
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_config(directory: str | Path) -> ModelConfig:
    """A saved model's ``config.json``, checked (types, bounds); `CheckpointError` names the file."""
    src = Path(directory)
    path = src / "config.json"
    if not path.is_file():
        raise MissingCheckpointFile(f"{src}: not a saved model (missing config.json)")
    raw = _read_json_file(path, MAX_CONFIG_BYTES)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(k for k in raw if k not in known)
    if unknown:
        raise CheckpointError(
            f"{path}: unknown field {_short(unknown[0])} (known: {', '.join(sorted(known))})"
        )
    try:
        return ModelConfig(**raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None


class _open_tensors:
    """``with _open_tensors(path) as fh``: safetensors' reader; a corrupt file is a CheckpointError."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        from safetensors import safe_open

        try:
            size = self.path.stat().st_size
            if size == 0:
                raise CheckpointError(f"{self.path}: empty file")
            if size > 8 * MAX_PARAMETERS + (1 << 24):
                raise CheckpointError(
                    f"{self.path}: {size} bytes, more than a model within the limits can hold"
                )
            self.ctx = safe_open(str(self.path), framework="pt")
            return self.ctx.__enter__()
        except CheckpointError:
            raise
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
        except Exception as exc:  # noqa: BLE001 (safetensors raises its own error type for corrupt files)
            raise CheckpointError(
                f"{self.path}: not a readable safetensors file ({str(exc)[:200]})"
            ) from None

    def __exit__(self, *exc) -> None:
        self.ctx.__exit__(*exc)


def _tensor_header(fh, path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Names -> (shape, dtype) from the file's header: nothing is loaded yet."""
    try:
        return {k: (tuple(fh.get_slice(k).get_shape()), fh.get_slice(k).get_dtype()) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(exc)[:200]})") from None


def _check_header(
    path: Path, header: dict[str, tuple[tuple[int, ...], str]], expected: dict[str, tuple[int, ...]]
) -> None:
    """The file's tensors against the model's: names, shapes, float dtypes (generic: any parameter or buffer)."""
    problems = [f"missing tensor {name!r}" for name in sorted(set(expected) - set(header))]
    problems += [f"unexpected tensor {name!r}" for name in sorted(set(header) - set(expected))]
    for name in sorted(set(header) & set(expected)):
        (shape, dtype), want = header[name], expected[name]
        if shape != want:
            problems.append(f"tensor {name!r} has shape {list(shape)}, config.json implies {list(want)}")
        elif dtype not in FLOAT_DTYPES:
            problems.append(f"tensor {name!r} has dtype {dtype}, expected a float type")
    if problems:
        more = f" (and {len(problems) - 3} more problems)" if len(problems) > 3 else ""
        raise CheckpointError(f"{path}: " + "; ".join(problems[:3]) + more)


def _read_tensors(fh, path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The tensors, each finite (and every ``*scale`` divisor positive)."""
    try:
        state = {name: fh.get_tensor(name) for name in names}
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(exc)[:200]})") from None
    for name, value in state.items():
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{path}: tensor {name!r} has NaN or infinite values")
        if name.endswith("scale") and not (value > 0).all():
            raise CheckpointError(f"{path}: tensor {name!r} (a divisor) has values <= 0")
    return state


def load_metrics(directory: str | Path) -> dict:
    """A saved model's ``metrics.json`` ({} when it has none); `CheckpointError` names a broken file."""
    path = Path(directory) / "metrics.json"
    if not path.exists():
        return {}
    raw = _read_json_file(path, MAX_METRICS_BYTES)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def entropy(probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return -(probs * torch.log(probs.clamp(min=1e-12))).sum(dim)


def margins_to_loss(margin: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood of the chosen response winning."""
    return F.softplus(-margin)
