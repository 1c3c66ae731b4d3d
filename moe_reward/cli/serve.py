"""`moe-reward serve`: rewards over HTTP for policy training (OpenRLHF's /get_reward, the native /score)."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from typing import Any

from . import bounded_int

LOOPBACK_NAMES = ("localhost",)


def register(subparsers) -> None:
    s = subparsers.add_parser(
        "serve",
        help="serve rewards over HTTP (crowd, a stored profile or given weights) for RLHF: OpenRLHF, TRL, verl",
        description="Serve a saved model's rewards over HTTP: POST /get_reward (OpenRLHF's remote reward model), "
        "POST /score (native), GET /health, /models, /profiles, /stats; OpenAPI docs at /docs.",
    )
    s.add_argument("--model", required=True, help="a saved model directory, or a model name in the workspace")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    s.add_argument("--port", type=bounded_int(0, 65535), default=8000, help="0: any free port (printed)")
    s.add_argument(
        "--token",
        default=None,
        help="bearer token every request but /health must carry (default: $MOE_REWARD_TOKEN); "
        "required when --host is reachable from other machines",
    )
    s.add_argument(
        "--no-token",
        action="store_true",
        help="serve beyond this machine without a token (anyone who can reach the port gets rewards and profiles)",
    )
    s.add_argument(
        "--labels",
        default=None,
        help="the label store whose profiles are served (default: the labels.sqlite of the model's workspace)",
    )
    s.add_argument(
        "--workers",
        type=bounded_int(1, 64),
        default=1,
        help="server processes sharing the port, each with its own model and backbone",
    )
    s.add_argument("--max-items", type=bounded_int(1, 1 << 20), default=1024, help="items per request")
    s.add_argument(
        "--max-chars", type=bounded_int(1, 1 << 26), default=100_000, help="characters per prompt or response"
    )
    s.add_argument(
        "--max-body-bytes",
        type=bounded_int(1024, 1 << 30),
        default=8 * 1024 * 1024,
        help="bytes per request body",
    )
    s.add_argument(
        "--max-batch-items",
        type=bounded_int(1, 1 << 16),
        default=256,
        help="items the micro-batcher puts in one forward pass",
    )
    s.add_argument(
        "--batch-wait-ms",
        type=bounded_int(0, 10_000),
        default=10,
        help="how long a batch waits for more requests before it starts (a lone request's added latency)",
    )
    s.add_argument(
        "--cache-entries",
        type=bounded_int(0, 1 << 24),
        default=50_000,
        help="embeddings kept in memory (least recently used dropped first)",
    )
    s.add_argument(
        "--cache-dir",
        default=None,
        help="also read and write the on-disk embedding cache here (it grows with every new text: for "
        "repeated evaluation sets, not for RLHF)",
    )
    s.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )
    s.set_defaults(func=cmd_serve)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that --port 0 can say which port it got and a taken port fails
    before the model loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def cmd_serve(args) -> int:
    import uvicorn

    from ..core.heap import reuse_freed_memory
    from ..serve.http import SETTINGS_ENV, TOKEN_ENV, create_app
    from ..serve.schemas import ServeLimits
    from ..serve.scorer import Scorer, default_labels_path, resolve_model_dir

    reuse_freed_memory()  # (main() fixed a small threshold for one-shot commands; see heap.py)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if token is not None and (len(token) < 8 or not token.isprintable() or " " in token):
        raise ValueError("--token: use at least 8 printable characters without spaces")
    if not is_loopback(args.host) and token is None and not args.no_token:
        raise ValueError(
            f"--host {args.host} is reachable from other machines: pass --token T (or set {TOKEN_ENV}), "
            "or --no-token to serve anyone who can reach it"
        )
    limits = ServeLimits(
        max_items=args.max_items,
        max_chars=args.max_chars,
        max_body_bytes=args.max_body_bytes,
        max_batch_items=args.max_batch_items,
        batch_wait_ms=float(args.batch_wait_ms),
    )
    model_dir = resolve_model_dir(args.model)
    if args.workers > 1:
        from ..app.pipeline import load_model

        load_model(model_dir)  # a broken model fails here, with its one-line reason, not in every worker
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    common: dict[str, Any] = dict(
        log_level=args.log_level, access_log=False, timeout_graceful_shutdown=5, lifespan="on"
    )
    if args.workers == 1:
        scorer = Scorer(
            model_dir, labels=args.labels, cache_entries=args.cache_entries, cache_dir=args.cache_dir
        )
        app = create_app(scorer, limits, token)
        server = uvicorn.Server(uvicorn.Config(app, **common))
        print(_banner(scorer.name, shown, port, token, scorer.labels_path, 1), flush=True)
        server.run(sockets=[sock])
        return 0
    from uvicorn.supervisors import Multiprocess

    os.environ[SETTINGS_ENV] = json.dumps(
        {
            "model": str(model_dir),
            "labels": args.labels,
            "cache_entries": args.cache_entries,
            "cache_dir": args.cache_dir,
            "limits": limits.__dict__,
        }
    )
    if token is not None:
        os.environ[TOKEN_ENV] = token
    config = uvicorn.Config(
        "moe_reward.serve.http:app_from_env", factory=True, workers=args.workers, **common
    )
    labels = args.labels or default_labels_path(model_dir)
    print(_banner(model_dir.name, shown, port, token, labels, args.workers), flush=True)
    Multiprocess(config, sockets=[sock]).run()
    return 0


def _banner(name: str, host: str, port: int, token: str | None, labels, workers: int) -> str:
    auth = "bearer token required" if token else "no token"
    return (
        f"moe-reward serve: {name} on http://{host}:{port} ({workers} worker{'s' if workers > 1 else ''}, {auth}); "
        f"profiles from {labels}; OpenRLHF: --reward.remote_url http://{host}:{port}/get_reward; docs: /docs"
    )
