"""The reward server's ASGI app (FastAPI on Starlette, served by uvicorn).

Endpoints (every one but ``/health`` and the docs needs the bearer token when the server has one):

- ``GET /health``: 200 ``{"status": "ok"}`` once the model is loaded;
- ``GET /models``: the served model, its backbone, its held-out accuracy (subset and pair count named);
- ``GET /profiles``: this model's profiles in the label store, each with its weights now;
- ``POST /score``: the native call, ``{"items": [{"prompt", "response"}], "profile"?, "weights"?,
  "details"?}`` -> ``{"rewards": [...], "weights": {...}, "details"?: [...]}``;
- ``POST /get_reward``: OpenRLHF's remote reward model, ``{"query": [...], "prompts": [...]}`` ->
  ``{"rewards": [...], "scores": [...], "extra_logs": {}}`` (a query is its prompt followed by the
  response; ``?profile=annotator/name`` in the URL or ``"profile"`` in the body scores for a profile);
- ``GET /stats``: batches run, items scored, mean batch size and time, waiting items, cache hits;
  each scoring answer's ``Server-Timing`` header says how long it waited for its batch and how long the
  batch took;
- ``/docs`` and ``/openapi.json``: the OpenAPI description.

`Guard`, a plain ASGI middleware in front of everything, checks the token and bounds the body *before*
anything is parsed: a body over the limit is refused with 413 (read and dropped up to `DRAIN_BYTES`, so
that the client gets the answer), a body that is not JSON with 415. Every error is JSON, ``{"error":
"<one line>"}``, with a 4xx status for what the client can fix; nothing a client sends can stop the
server (the hostile cases are in tests/integration/test_serve.py).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import numpy as np
from fastapi import Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..data.pairs import scoring_texts
from .batcher import Busy, MicroBatcher
from .schemas import (
    ErrorResponse,
    GetRewardRequest,
    GetRewardResponse,
    Item,
    ScoreRequest,
    ScoreResponse,
    ServeLimits,
)
from .scorer import Scorer, ServeError, Weights

log = logging.getLogger("moe_reward.serve")

OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})
DRAIN_BYTES = 64 * 1024 * 1024  # an oversized body is read (and dropped) up to this, then the 413 is sent
TOKEN_ENV = "MOE_REWARD_TOKEN"


class RequestTooLarge(ServeError):
    status = 413


# ----------------------------------------------------------------------------- the guard (token, body size)


async def _reply(send, status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Token first (before the body is read), then the body: its declared and its real size, its type."""

    def __init__(self, app, token: str | None, max_body_bytes: int):
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = max_body_bytes

    def _authorized(self, scope) -> bool:
        assert self.token is not None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
                    return True
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        return any(
            hmac.compare_digest(t.encode("latin-1", "replace"), self.token) for t in query.get("token", [])
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.token is not None and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
            await _reply(
                send,
                401,
                "missing or wrong token: send 'Authorization: Bearer <token>' (or ?token=<token> in the URL)",
                [(b"www-authenticate", b'Bearer realm="moe-reward"')],
            )
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype and ctype != b"application/json" and not ctype.endswith(b"+json"):
            await _reply(
                send,
                415,
                f"send the body as JSON (Content-Type: application/json), not {ctype.decode('latin-1')[:60]}",
            )
            return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
                if size < 0:
                    raise ValueError
            except ValueError:
                await _reply(send, 400, "Content-Length is not a byte count")
                return
            if size > self.max_body:
                await self._too_large(receive, send, size)
                return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                await self._too_large(receive, send, len(body) if not more else None)
                return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, receive, send, size: int | None) -> None:
        drained, more = 0, True
        while more and drained <= DRAIN_BYTES:  # read what the client is still sending, so it sees the 413
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            drained += len(message.get("body", b""))
            more = message.get("more_body", False)
        what = f"{size} bytes" if size is not None else "a body"
        await _reply(
            send, 413, f"{what}: more than the limit of {self.max_body} bytes per request (--max-body-bytes)"
        )


# ----------------------------------------------------------------------------- scoring jobs


def _run_jobs(
    scorer: Scorer, payloads: Sequence[tuple[list[str], list[str], np.ndarray | None]]
) -> list[Any]:
    """The micro-batch: every job's rows in one forward pass, cut back into one list per job."""
    prompts: list[str] = []
    responses: list[str] = []
    weights: list[np.ndarray | None] = []
    bounds = []
    for p, r, vec in payloads:
        bounds.append((len(prompts), len(prompts) + len(p)))
        prompts += p
        responses += r
        weights += [vec] * len(p)
    any_weights = any(w is not None for w in weights)
    scored = scorer.score(prompts, responses, weights if any_weights else None)
    return [scored[a:b] for a, b in bounds]


def _item_texts(items: Sequence[Item], limits: ServeLimits) -> tuple[list[str], list[str]]:
    if len(items) > limits.max_items:
        raise RequestTooLarge(
            f"items: {len(items)} of them, more than the limit of {limits.max_items} per request (--max-items)"
        )
    prompts, responses = [], []
    for i, item in enumerate(items):
        as_python = lambda v: v if isinstance(v, str) else [m.model_dump() for m in v]  # noqa: E731
        prompt, response = _texts(as_python(item.prompt), as_python(item.response), f"items[{i}]")
        _check_chars(f"items[{i}]", prompt, response, limits)
        prompts.append(prompt)
        responses.append(response)
    return prompts, responses


def _texts(prompt: Any, response: Any, where: str) -> tuple[str, str]:
    try:
        return scoring_texts(prompt, response, where)
    except ValueError as exc:
        raise ServeError(str(exc)) from None


def _check_chars(where: str, prompt: str, response: str, limits: ServeLimits) -> None:
    for name, text in (("prompt", prompt), ("response", response)):
        if len(text) > limits.max_chars:
            raise RequestTooLarge(
                f"{where}.{name}: {len(text)} characters, more than the limit of {limits.max_chars} (--max-chars)"
            )


# ----------------------------------------------------------------------------- the app


def create_app(scorer: Scorer, limits: ServeLimits | None = None, token: str | None = None) -> FastAPI:
    """The ASGI app serving `scorer` (its model and backbone are already loaded)."""
    limits = limits or ServeLimits()
    batcher = MicroBatcher(
        partial(_run_jobs, scorer),
        max_items=limits.max_batch_items,
        max_wait=limits.batch_wait_ms / 1000,
        max_pending=limits.max_pending_items,
    )
    model_info = scorer.describe()  # metrics.json is read once

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="moe-reward-lens reward server",
        version=__version__,
        description=(
            f"Rewards of `{scorer.name}` ({model_info['description']}) for the crowd (the router's mix), "
            "for a profile of the label store, or for given expert weights. OpenRLHF calls `/get_reward`; "
            "everything else calls `/score`. With a token, send `Authorization: Bearer <token>`."
        ),
        lifespan=lifespan,
    )
    app.state.scorer, app.state.batcher, app.state.limits = scorer, batcher, limits
    app.add_middleware(Guard, token=token, max_body_bytes=limits.max_body_bytes)
    bearer = HTTPBearer(auto_error=False, description="the server's --token")  # documents it; Guard checks it
    protected = [Depends(bearer)]
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse} for code in (401, 404, 413, 415, 422, 503)
    }

    @app.exception_handler(ServeError)
    async def _serve_error(_request: Request, exc: ServeError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(Busy)
    async def _busy(_request: Request, exc: Busy):
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        problems = list(exc.errors())
        if problems and problems[0].get("type") == "json_invalid":
            ctx = problems[0].get("ctx") or {}
            return JSONResponse(
                {"error": f"the body is not valid JSON ({ctx.get('error', 'cannot parse it')})"},
                status_code=400,
            )
        lines = []
        for p in problems:
            where = ".".join(str(x) for x in p.get("loc", ()) if x != "body") or "body"
            lines.append(f"{where}: {p.get('msg', 'invalid')}")
        more = f" (and {len(lines) - 1} more problems)" if len(lines) > 1 else ""
        return JSONResponse(
            {"error": (lines[0] if lines else "invalid request") + more, "problems": lines[:20]},
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)[:200]
        if exc.status_code == 400 and "parsing the body" in message:
            message = "the body is not valid JSON (or nested too deeply)"
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception):
        log.exception("internal error")
        return JSONResponse(
            {"error": f"internal error {type(exc).__name__}: {str(exc)[:200]}"}, status_code=500
        )

    async def weights_for(profile: str | None, weights: list[float] | None) -> Weights:
        if profile is None:  # nothing to read from the store: no thread hop
            return scorer.weights_for(None, weights)
        return await run_in_threadpool(scorer.weights_for, profile, weights)

    async def scored(prompts: list[str], responses: list[str], whose: Weights, response: Response):
        """The rows' scores from the micro-batcher; the answer's Server-Timing header says how long the
        request waited for its batch and how long the batch took (milliseconds)."""
        if not prompts:
            return []
        timing: dict = {}
        out = await batcher.submit((prompts, responses, whose.vector), len(prompts), timing)
        if timing:
            response.headers["Server-Timing"] = (
                f"queue;dur={1000 * timing['queue_s']:.1f}, batch;dur={1000 * timing['batch_s']:.1f};"
                f'desc="{timing["batch_items"]} items"'
            )
        return out

    @app.get("/health", summary="Liveness: 200 once the model is loaded")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/models", dependencies=protected, responses=errors, summary="The served model")
    async def models() -> dict:
        return {"models": [model_info]}

    @app.get(
        "/profiles", dependencies=protected, responses=errors, summary="This model's profiles, weights now"
    )
    async def profiles() -> dict:
        rows = await run_in_threadpool(scorer.profiles)
        return {"model": scorer.name, "labels_db": str(scorer.labels_path), "profiles": rows}

    @app.get("/stats", dependencies=protected, responses=errors, summary="Batches, items, cache")
    async def stats() -> dict:
        cache = scorer.cache
        return scorer.stats.describe() | {
            "pending_items": batcher.pending,
            "cache": {
                "entries": len(cache),
                "max_entries": cache.max_entries,
                "hits": cache.hits,
                "misses": cache.misses,
            },
        }

    @app.post(
        "/score",
        dependencies=protected,
        responses=errors,
        response_model=ScoreResponse,
        response_model_exclude_none=True,
        summary="Rewards of (prompt, response) items: crowd, profile or weights",
    )
    async def score(req: ScoreRequest, response: Response) -> dict:
        if req.items is not None and req.pairs is not None:
            raise ServeError("give items or pairs (the same thing), not both")
        items = req.items if req.items is not None else req.pairs
        if items is None:
            raise ServeError("items: required: a list of {prompt, response} objects")
        prompts, responses = _item_texts(items, limits)
        whose = await weights_for(req.profile, req.weights)
        out = await scored(prompts, responses, whose, response)
        personal = whose.vector is not None
        body: dict[str, Any] = {
            "model": scorer.name,
            "rewards": [s.personalized_reward if personal else s.reward for s in out],
            "weights": whose.describe(),
        }
        if req.details:
            body["details"] = [
                {
                    "expert_rewards": s.expert_rewards,
                    "routing": s.routing,
                    "router_probs": s.router_probs,
                    "routed_reward": s.reward,
                }
                for s in out
            ]
        return body

    @app.post(
        "/get_reward",
        dependencies=protected,
        responses=errors,
        response_model=GetRewardResponse,
        summary="OpenRLHF's remote reward model call",
    )
    async def get_reward(req: GetRewardRequest, request: Request, response: Response) -> dict:
        if req.prompts is None:
            raise ServeError(
                "prompts: required: the prompt of each query (a query is its prompt followed by the response)"
            )
        if len(req.prompts) != len(req.query):
            raise ServeError(
                f"{len(req.query)} queries but {len(req.prompts)} prompts: give one prompt per query"
            )
        if len(req.query) > limits.max_items:
            raise RequestTooLarge(
                f"query: {len(req.query)} of them, more than the limit of {limits.max_items} per request (--max-items)"
            )
        prompts, responses = [], []
        for i, (query, prompt) in enumerate(zip(req.query, req.prompts, strict=True)):
            if not query.startswith(prompt):
                raise ServeError(
                    f"query[{i}] does not start with prompts[{i}]: a query is its prompt followed by the response"
                )
            p, r = _texts(prompt, query[len(prompt) :], f"query[{i}]")
            _check_chars(f"query[{i}]", p, r, limits)
            prompts.append(p)
            responses.append(r)
        profile = req.profile if req.profile is not None else request.query_params.get("profile")
        whose = await weights_for(profile, req.weights)
        out = await scored(prompts, responses, whose, response)
        rewards = [s.reward if whose.vector is None else s.personalized_reward for s in out]
        return {"rewards": rewards, "scores": rewards, "extra_logs": {}}

    return app


# ----------------------------------------------------------------------------- worker processes


SETTINGS_ENV = "MOE_REWARD_SERVE_SETTINGS"


def app_from_env() -> FastAPI:
    """The app factory each `--workers` process calls (settings in $MOE_REWARD_SERVE_SETTINGS, the token
    in $MOE_REWARD_TOKEN): every worker loads its own model and backbone."""
    import os

    settings = json.loads(os.environ[SETTINGS_ENV])
    scorer = Scorer(
        settings["model"],
        labels=settings.get("labels"),
        cache_entries=settings.get("cache_entries", 50_000),
        cache_dir=settings.get("cache_dir"),
    )
    return create_app(scorer, ServeLimits(**settings.get("limits", {})), os.environ.get(TOKEN_ENV) or None)
