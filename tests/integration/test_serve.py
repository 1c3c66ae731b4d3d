"""`moe-reward serve` for real: a uvicorn server in a subprocess on 127.0.0.1 (a random port) serving a tiny
model trained here, checked endpoint by endpoint against in-process scoring, with the hostile request list
of issue 22, concurrency, profile changes without a restart, the token and worker processes."""

from __future__ import annotations

import http.client
import json
import math
import random
import threading
import time
from urllib.parse import urlparse

import numpy as np
import pytest
from serve_model import (
    ANNOTATOR,
    PROFILE,
    add_profile_label,
    build_served_model,
    call,
    start_server,
    stop_server,
)

TOKEN = "s3cret-token-for-tests"
PROMPTS = [
    "Why is the sky blue? Answer briefly.",
    "How can I fall asleep faster? Explain in depth.",
    "What is a Python list comprehension?",
]
RESPONSES = [
    "Air scatters short blue wavelengths of sunlight far more than red ones.",
    "Keep a fixed wake-up time.",
    "A compact expression that builds a list, like [x * x for x in nums].",
    "",
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model_dir = build_served_model(root)
    add_profile_label(model_dir, "pair-1", [1.0, -1.0, 0.5, 0.0])
    proc, base = start_server(model_dir, "--token", TOKEN, "--max-chars", "5000", "--batch-wait-ms", "20")
    try:
        yield {"model_dir": model_dir, "base": base, "proc": proc}
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def local(served):
    """The same model scored in this process, the way `moe-reward score` does."""
    from moe_reward.app.pipeline import backbone_for, load_model

    model = load_model(served["model_dir"])
    return model, backbone_for(model)


def _items():
    return [{"prompt": p, "response": r} for p in PROMPTS for r in RESPONSES]


def _in_process(local, items, weights=None):
    from moe_reward.app.pipeline import score_texts

    model, backbone = local
    out = []
    for it in items:
        (s,) = score_texts(
            model, backbone, it["prompt"], [it["response"]], user_weights=weights, cache_dir=None
        )
        out.append(s)
    return out


def _store_weights(model_dir):
    from moe_reward.personalize.store import LabelStore

    store = LabelStore(model_dir.parent.parent / "labels.sqlite")
    rec = store.find_profile(ANNOTATOR, PROFILE, model_dir.name)
    return np.asarray(store.profile_weights(rec.id), dtype=np.float32), len(store.label_ids(rec.id))


def test_health_models_profiles_stats_and_docs(served):
    base = served["base"]
    assert call(base, "/health") == (200, {"status": "ok"})
    status, body = call(base, "/models", token=TOKEN)
    assert status == 200
    (info,) = body["models"]
    assert info["name"] == "tiny-serve" and info["num_experts"] == 4 and info["top_k"] == 2
    assert info["held_out"]["subset"] == "test" and info["held_out"]["n_pairs"] > 0
    status, body = call(base, "/profiles", token=TOKEN)
    assert status == 200
    (row,) = [p for p in body["profiles"] if p["profile"] == f"{ANNOTATOR}/{PROFILE}"]
    weights, n_labels = _store_weights(served["model_dir"])
    assert row["labels"] == n_labels and row["weights"] == pytest.approx(weights.tolist(), abs=1e-7)
    status, stats = call(base, "/stats", token=TOKEN)
    assert status == 200 and {"batches", "items", "pending_items", "cache"} <= set(stats)
    status, spec = call(base, "/openapi.json")
    assert status == 200 and {"/score", "/get_reward", "/health", "/models", "/profiles"} <= set(
        spec["paths"]
    )
    conn = http.client.HTTPConnection(urlparse(base).hostname, urlparse(base).port, timeout=30)
    conn.request("GET", "/docs")
    assert conn.getresponse().status == 200


def test_rewards_equal_in_process_scoring_for_crowd_profile_and_weights(served, local):
    base, items = served["base"], _items()
    expected = _in_process(local, items)
    status, body = call(base, "/score", {"items": items, "details": True}, token=TOKEN)
    assert status == 200 and body["model"] == "tiny-serve" and body["weights"] == {"source": "router"}
    np.testing.assert_allclose(body["rewards"], [s.reward for s in expected], rtol=0, atol=1e-5)
    for d, s in zip(body["details"], expected, strict=True):
        np.testing.assert_allclose(d["expert_rewards"], s.expert_rewards, rtol=0, atol=1e-5)
        np.testing.assert_allclose(d["routing"], s.routing, rtol=0, atol=1e-6)
        assert d["routed_reward"] == pytest.approx(s.reward, abs=1e-5)

    weights, n_labels = _store_weights(served["model_dir"])
    expected = _in_process(local, items, weights)
    status, body = call(base, "/score", {"pairs": items, "profile": f"{ANNOTATOR}/{PROFILE}"}, token=TOKEN)
    assert status == 200 and body["weights"]["source"] == "profile" and body["weights"]["labels"] == n_labels
    np.testing.assert_allclose(body["rewards"], [s.personalized_reward for s in expected], rtol=0, atol=1e-5)
    assert "details" not in body
    status, by_name = call(base, "/score", {"items": items, "profile": PROFILE}, token=TOKEN)  # unique name
    assert status == 200 and by_name["rewards"] == body["rewards"]

    signed = [1.5, -2.0, 0.0, 0.25]
    expected = _in_process(local, items, np.asarray(signed, np.float32))
    status, body = call(base, "/score", {"items": items, "weights": signed}, token=TOKEN)
    assert status == 200 and body["weights"] == {"source": "weights", "weights": signed}
    np.testing.assert_allclose(body["rewards"], [s.personalized_reward for s in expected], rtol=0, atol=1e-5)


def test_answers_say_how_long_they_waited_for_their_batch(served):
    import re

    u = urlparse(served["base"])
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    conn.request("POST", "/score", body=json.dumps({"items": _items()[:3]}), headers=AUTH)
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["rewards"]
    timing = re.fullmatch(
        r'queue;dur=([0-9.]+), batch;dur=([0-9.]+);desc="(\d+) items"', resp.getheader("Server-Timing")
    )
    assert timing and float(timing[2]) > 0 and int(timing[3]) >= 3


def test_conversational_items_score_as_their_texts(served):
    base = served["base"]
    plain = {"prompt": PROMPTS[0], "response": RESPONSES[0]}
    chat = {
        "prompt": [{"role": "user", "content": PROMPTS[0]}],
        "response": [{"role": "assistant", "content": RESPONSES[0]}],
    }
    (_, a), (_, b) = (call(base, "/score", {"items": [x]}, token=TOKEN) for x in (plain, chat))
    assert a["rewards"] == pytest.approx(b["rewards"], abs=1e-5)


def test_openrlhf_get_reward_format(served):
    base, items = served["base"], _items()
    _, native = call(base, "/score", {"items": items}, token=TOKEN)
    query = [it["prompt"] + it["response"] for it in items]
    prompts = [it["prompt"] for it in items]
    status, body = call(
        base, "/get_reward", {"query": query, "prompts": prompts, "labels": [None] * len(items)}, token=TOKEN
    )
    assert status == 200 and set(body) == {"rewards", "scores", "extra_logs"}
    np.testing.assert_allclose(body["rewards"], native["rewards"], rtol=0, atol=1e-5)
    assert body["scores"] == body["rewards"]
    # A profile from the URL (OpenRLHF's --reward.remote_url can carry it), and the token too (it sends no headers).
    _, personal = call(base, "/score", {"items": items, "profile": f"{ANNOTATOR}/{PROFILE}"}, token=TOKEN)
    status, body = call(
        base, f"/get_reward?profile={ANNOTATOR}/{PROFILE}&token={TOKEN}", {"query": query, "prompts": prompts}
    )
    assert status == 200
    np.testing.assert_allclose(body["rewards"], personal["rewards"], rtol=0, atol=1e-5)
    # OpenRLHF shards each call over its --reward.remote_url list: a server may get an empty shard.
    assert call(base, "/get_reward", {"query": [], "prompts": [], "labels": []}, token=TOKEN) == (
        200,
        {"rewards": [], "scores": [], "extra_logs": {}},
    )
    for bad, message in (
        ({"query": query}, "prompts: required"),
        ({"query": query, "prompts": prompts[:-1]}, "give one prompt per query"),
        ({"query": ["something else"], "prompts": ["Why"]}, "query[0] does not start with prompts[0]"),
    ):
        status, body = call(base, "/get_reward", bad, token=TOKEN)
        assert status == 422 and message in body["error"]


def test_a_profile_labelled_meanwhile_is_served_without_a_restart(served, local):
    base, model_dir = served["base"], served["model_dir"]
    item = {"prompt": PROMPTS[1], "response": RESPONSES[0]}
    ref = f"{ANNOTATOR}/{PROFILE}"
    _, before = call(base, "/score", {"items": [item], "profile": ref}, token=TOKEN)
    add_profile_label(model_dir, f"pair-{time.time_ns()}", [-3.0, 3.0, -3.0, 3.0])
    weights, n_labels = _store_weights(model_dir)
    _, after = call(base, "/score", {"items": [item], "profile": ref}, token=TOKEN)
    assert after["weights"]["labels"] == before["weights"]["labels"] + 1 == n_labels
    assert after["weights"]["weights"] == pytest.approx(weights.tolist(), abs=1e-6)
    assert after["rewards"] != before["rewards"]
    (expected,) = _in_process(local, [item], weights)
    assert after["rewards"][0] == pytest.approx(expected.personalized_reward, abs=1e-5)
    # A profile created after the server started is found too.
    add_profile_label(model_dir, "pair-x", [0.0, 1.0, 0.0, 0.0], annotator="bob", profile="late")
    status, body = call(base, "/score", {"items": [item], "profile": "bob/late"}, token=TOKEN)
    assert status == 200 and body["weights"]["labels"] == 1


def test_the_token_is_required_everywhere_but_health(served):
    base = served["base"]
    for path, body in (
        ("/models", None),
        ("/profiles", None),
        ("/score", {"items": _items()[:1]}),
        ("/get_reward", {"query": ["ab"], "prompts": ["a"]}),
    ):
        for token in (None, "wrong-token-123"):
            status, reply = call(base, path, body, token=token)
            assert status == 401 and "token" in reply["error"], (path, token)
    conn = http.client.HTTPConnection(urlparse(base).hostname, urlparse(base).port, timeout=30)
    conn.request("GET", "/models")
    resp = conn.getresponse()
    assert resp.status == 401 and resp.getheader("WWW-Authenticate", "").startswith("Bearer")
    assert call(base, "/health")[0] == 200
    assert call(base, "/models", headers={"Authorization": f"bearer {TOKEN}"})[0] == 200


TEN_MB = 10 * 1024 * 1024


def _raw(base: str, method: str, path: str, body: bytes | None, headers: dict, chunked: bool = False):
    u = urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    try:
        if chunked:
            conn.putrequest(method, path)
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            assert body is not None
            for start in range(0, len(body), 1 << 20):
                piece = body[start : start + (1 << 20)]
                try:
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                except OSError:
                    break  # the server answered already
            else:
                conn.send(b"0\r\n\r\n")
        else:
            conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
OK_ITEM = {"prompt": "Why?", "response": "Because."}
HOSTILE = [
    ("bad JSON", "/score", b'{"items": [{"prompt": "x", "response": "y"}', {}, 400, "not valid JSON"),
    ("not JSON at all", "/score", b"\xff\xfe garbage", {}, 400, "not valid JSON"),
    ("JSON nested too deeply", "/score", b"[" * 100_000 + b"]" * 100_000, {}, 400, "JSON"),
    ("a JSON array", "/score", b"[1, 2]", {}, 422, "valid dictionary"),
    ("an empty body", "/score", b"", {}, 422, "body"),
    ("prompt is a number", "/score", {"items": [{"prompt": 5, "response": "y"}]}, {}, 422, "items.0.prompt"),
    ("details is a string", "/score", {"items": [OK_ITEM], "details": "yes"}, {}, 422, "details"),
    (
        "weights are strings",
        "/score",
        {"items": [OK_ITEM], "weights": ["1", "0", "0", "0"]},
        {},
        422,
        "weights.0",
    ),
    ("items is an object", "/score", {"items": {"prompt": "x"}}, {}, 422, "items"),
    ("an unknown field", "/score", {"items": [OK_ITEM], "profle": "alice/default"}, {}, 422, "profle"),
    ("no items", "/score", {"profile": "alice/default"}, {}, 422, "items: required"),
    ("items and pairs", "/score", {"items": [OK_ITEM], "pairs": [OK_ITEM]}, {}, 422, "not both"),
    (
        "a bad chat role",
        "/score",
        {"items": [{"prompt": "x", "response": [{"role": "user", "content": "y"}]}]},
        {},
        422,
        "items[0]: completion",
    ),
    (
        "a lone surrogate",
        "/score",
        b'{"items": [{"prompt": "\\ud800", "response": "y"}]}',
        {},
        422,
        "lone surrogate",
    ),
    (
        "NaN weights",
        "/score",
        b'{"items": [{"prompt": "x", "response": "y"}], "weights": [NaN, 0, 0, 0]}',
        {},
        422,
        "finite",
    ),
    (
        "infinite weights",
        "/score",
        b'{"items": [{"prompt": "x", "response": "y"}], "weights": [Infinity, 0, 0, 0]}',
        {},
        422,
        "finite",
    ),
    (
        "huge weights",
        "/score",
        {"items": [OK_ITEM], "weights": [1e300, 0, 0, 0]},
        {},
        422,
        "finite number in",
    ),
    (
        "too few weights",
        "/score",
        {"items": [OK_ITEM], "weights": [1.0, 0.0]},
        {},
        422,
        "2 numbers for a model of 4",
    ),
    (
        "profile and weights",
        "/score",
        {"items": [OK_ITEM], "profile": "alice/default", "weights": [1, 0, 0, 0]},
        {},
        422,
        "not both",
    ),
    (
        "unknown profile",
        "/score",
        {"items": [OK_ITEM], "profile": "mallory/none"},
        {},
        404,
        "no profile 'mallory/none'",
    ),
    ("a very long profile name", "/score", {"items": [OK_ITEM], "profile": "x" * 5000}, {}, 422, "profile"),
    (
        "unknown profile via OpenRLHF",
        "/get_reward?profile=nobody",
        {"query": ["ab"], "prompts": ["a"]},
        {},
        404,
        "no profile",
    ),
    ("too many items", "/score", {"items": [OK_ITEM] * 1025}, {}, 413, "limit of 1024"),
    (
        "a text over the character limit",
        "/score",
        {"items": [{"prompt": "x", "response": "y" * 6000}]},
        {},
        413,
        "6000 characters",
    ),
    (
        "a 10 MB body",
        "/score",
        {"items": [{"prompt": "x", "response": "y" * TEN_MB}]},
        {},
        413,
        "limit of 8388608",
    ),
    (
        "a 10 MB chunked body",
        "/score",
        b'{"items": [{"prompt": "x", "response": "' + b"y" * TEN_MB + b'"}]}',
        {"chunked": True},
        413,
        "limit of 8388608",
    ),
    # (refused by uvicorn's HTTP parser before the app sees it: its own plain-text 400, or the connection
    # closed before the client read it)
    (
        "a lying Content-Length",
        "/score",
        b"{}",
        {"Content-Length": "abc"},
        400,
        "protocol:Invalid HTTP request",
    ),
    ("form data", "/score", b"a=b", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "JSON"),
    ("a missing token", "/score", {"items": [OK_ITEM]}, {"Authorization": ""}, 401, "token"),
    ("a wrong method", "/score", None, {"method": "GET"}, 405, "Method Not Allowed"),
    ("an unknown path", "/nope", {"items": [OK_ITEM]}, {}, 404, "Not Found"),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_requests_get_a_json_4xx_and_the_server_stays_up(served, case):
    _name, path, body, extra, status, message = case
    base = served["base"]
    extra = dict(extra)
    method = extra.pop("method", "POST")
    chunked = extra.pop("chunked", False)
    headers = {k: v for k, v in {**AUTH, **extra}.items() if v}
    raw = body if isinstance(body, bytes | type(None)) else json.dumps(body).encode()
    if chunked:
        headers.pop("Content-Length", None)
    try:
        got, payload = _raw(base, method, path, raw, headers, chunked=chunked)
    except ConnectionResetError:
        assert message.startswith("protocol:")  # only a request uvicorn itself refuses may be cut off
        got, payload = status, message.removeprefix("protocol:").encode()
    assert got == status, payload[:300]
    if message.startswith("protocol:"):
        assert message.removeprefix("protocol:") in payload.decode()
    else:
        assert message in json.loads(payload)["error"]
    assert served["proc"].poll() is None
    assert call(base, "/score", {"items": [OK_ITEM]}, token=TOKEN)[0] == 200


def test_concurrent_small_requests_are_micro_batched_and_none_fails(served, local):
    base, items = served["base"], _items()
    rng = random.Random(0)
    requests = [[items[rng.randrange(len(items))] for _ in range(rng.randint(1, 8))] for _ in range(48)]
    _, before = call(base, "/stats", token=TOKEN)
    results: dict[int, tuple[int, dict]] = {}

    def client(k: int) -> None:
        for j in range(k, len(requests), 16):
            results[j] = call(base, "/score", {"items": requests[j]}, token=TOKEN)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(len(requests)))
    assert all(status == 200 for status, _ in results.values())
    expected = {
        (s.response, p["prompt"]): s.reward for p, s in zip(items, _in_process(local, items), strict=True)
    }
    for j, req in enumerate(requests):
        want = [expected[(it["response"], it["prompt"])] for it in req]
        np.testing.assert_allclose(results[j][1]["rewards"], want, rtol=0, atol=1e-5)
    _, after = call(base, "/stats", token=TOKEN)
    batches = after["batches"] - before["batches"]
    n_items = after["items"] - before["items"]
    assert n_items == sum(len(r) for r in requests)
    assert batches < len(requests)  # many requests shared a forward pass
    assert after["largest_batch_items"] > 8  # more than any one request holds


def test_the_reward_function_in_process_and_against_the_server(served, local):
    from moe_reward.rlhf import reward_function

    base, model_dir = served["base"], served["model_dir"]
    prompts = [PROMPTS[0]] * 3 + [[{"role": "user", "content": PROMPTS[1]}]]
    completions = [RESPONSES[0], RESPONSES[1], "", [{"role": "assistant", "content": RESPONSES[2]}]]
    items = [{"prompt": PROMPTS[0], "response": r} for r in (RESPONSES[0], RESPONSES[1], "")]
    items.append({"prompt": PROMPTS[1], "response": RESPONSES[2]})
    ref = f"{ANNOTATOR}/{PROFILE}"
    for profile in (None, ref):
        fn = reward_function(model_dir, profile=profile, batch_size=3)
        out = fn(prompts=prompts, completions=completions, completion_ids=None, trainer_state=None)
        _, body = call(
            base, "/score", {"items": items, **({"profile": profile} if profile else {})}, token=TOKEN
        )
        np.testing.assert_allclose(out, body["rewards"], rtol=0, atol=1e-5)
        remote = reward_function([base, base + "/score"], profile=profile, batch_size=1, token=TOKEN)
        np.testing.assert_allclose(remote(prompts, completions), body["rewards"], rtol=0, atol=1e-5)
    # The model loaded once for this process, whatever the number of functions made for it.
    from moe_reward import rlhf

    assert len([k for k in rlhf._scorers if k[0] == str(model_dir.resolve())]) == 1
    with pytest.raises(RuntimeError, match="401"):
        reward_function(base, token="wrong-token-123")(["p"], ["r"])
    with pytest.raises(RuntimeError, match="404: no profile 'nobody'"):
        reward_function(base, profile="nobody", token=TOKEN)(["p"], ["r"])


def test_cli_refuses_an_open_host_without_a_token_and_names_bad_models(served, tmp_path, capsys):
    from moe_reward.cli import main

    assert main(["serve", "--model", str(served["model_dir"]), "--host", "0.0.0.0"]) == 2
    assert "pass --token" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "missing config.json" in capsys.readouterr().err
    assert main(["serve", "--model", str(served["model_dir"]), "--token", "short"]) == 2
    assert "at least 8" in capsys.readouterr().err
    port = urlparse(served["base"]).port
    assert main(["serve", "--model", str(served["model_dir"]), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_worker_processes_share_the_port(served, local):
    proc, base = start_server(served["model_dir"], "--workers", "2")
    try:
        items = _items()[:4]
        expected = [s.reward for s in _in_process(local, items)]
        for _ in range(4):
            status, body = call(base, "/score", {"items": items})
            assert status == 200
            np.testing.assert_allclose(body["rewards"], expected, rtol=0, atol=1e-5)
    finally:
        stop_server(proc)


def test_the_grpo_example_calls_the_reward_function_the_way_trl_does(served):
    """examples/grpo_tiny.py without TRL installed (its fallback): a group of completions per prompt."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("trl") is not None:
        pytest.skip("trl is installed here: the example would train (slow), not call the function directly")
    out = subprocess.run(
        [sys.executable, "examples/grpo_tiny.py", "--model", str(served["model_dir"]), "--generations", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln.split() for ln in out.stdout.splitlines() if ln.strip()[:1] in ("+", "-") and "'" in ln]
    assert len(lines) == 8 and all(math.isfinite(float(ln[0])) for ln in lines), out.stdout
