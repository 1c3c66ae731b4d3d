"""The exact commands that score with a profile, for the dashboard to show (user text quoted safely).

`client_snippets` returns the server command, a ``curl`` call of ``POST /score`` and the Python call of
the TRL reward function, for a stored profile (``annotator/name``) or explicit weights. Shell arguments
are quoted with `shlex.quote` and Python literals written with `repr`, so a prompt or a name holding
quotes, ``$(...)`` or newlines is data in both, never code.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path


def client_snippets(
    model_dir: str | Path,
    prompt: str,
    response: str,
    profile: str | None = None,
    weights: Sequence[float] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
) -> dict[str, str]:
    """{"serve": shell command, "curl": shell command, "python": Python code} scoring (prompt, response)
    for `profile` (or `weights`, or the crowd when neither is given)."""
    if profile is not None and weights is not None:
        raise ValueError("give either profile or weights, not both")
    model = str(model_dir)
    url = f"http://{host}:{int(port)}"
    whose: dict = {}
    if profile is not None:
        whose = {"profile": profile}
    elif weights is not None:
        whose = {"weights": [float(w) for w in weights]}
    body = {"items": [{"prompt": prompt, "response": response}], **whose}
    serve = f"moe-reward serve --model {shlex.quote(model)} --host {shlex.quote(host)} --port {int(port)}"
    curl = (
        f"curl -s {shlex.quote(url + '/score')} -H 'Content-Type: application/json' "
        '-H "Authorization: Bearer $MOE_REWARD_TOKEN" '
        f"-d {shlex.quote(json.dumps(body))}"
    )
    args = "".join(f", {k}={v!r}" for k, v in whose.items())
    python = (
        "from moe_reward.rlhf import reward_function\n\n"
        f"# in this process (the model loads once); or reward_function({url!r}{args}) against the server\n"
        f"reward = reward_function({model!r}{args})\n"
        f"print(reward(prompts=[{prompt!r}], completions=[{response!r}]))\n"
    )
    return {"serve": serve, "curl": curl, "python": python}
