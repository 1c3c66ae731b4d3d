"""The reward server's parts without a server: micro-batching, the bounded embedding cache, conversational
texts, the TRL reward function's plumbing, limits and the dashboard's snippets."""

from __future__ import annotations

import asyncio
import inspect
import json
import shlex
import threading

import numpy as np
import pytest

from moe_reward.data.pairs import normalize_row, scoring_texts
from moe_reward.embed.cache import EmbeddingCache, MemoryCache
from moe_reward.serve.batcher import Busy, MicroBatcher
from moe_reward.serve.schemas import ServeLimits
from moe_reward.serve.snippets import client_snippets

# ----------------------------------------------------------------------------- micro-batching


def _run_batcher(run, jobs, **kwargs):
    """Submit all `jobs` (payload, size) at once; returns (results or exceptions, batches seen)."""

    async def main():
        b = MicroBatcher(run, **kwargs)
        await b.start()
        try:
            return await asyncio.gather(*(b.submit(p, n) for p, n in jobs), return_exceptions=True)
        finally:
            await b.stop()

    return asyncio.run(main())


def test_concurrent_jobs_share_one_call_up_to_max_items():
    calls: list[list] = []

    def run(payloads):
        calls.append(list(payloads))
        return [f"done {p}" for p in payloads]

    out = _run_batcher(run, [(i, 3) for i in range(10)], max_items=9, max_wait=0.05)
    assert out == [f"done {i}" for i in range(10)]
    assert [len(c) for c in calls] == [3, 3, 3, 1]  # whole jobs, at most 9 items a call, in order
    assert [p for c in calls for p in c] == list(range(10))


def test_clients_answered_together_stay_in_one_batch():
    """Closed-loop clients (each sends its next request when answered): two who started early must not
    keep the rest in a second, alternating batch (each request would wait for two batches)."""
    import time

    sizes: list[int] = []

    def run(payloads):
        sizes.append(len(payloads))
        time.sleep(0.3)
        return list(payloads)

    async def main():
        b = MicroBatcher(run, max_items=64, max_wait=0.05)
        await b.start()

        async def client(k: int, start: float):
            await asyncio.sleep(start)
            for j in range(3):
                await b.submit((k, j), 1)

        try:
            await asyncio.gather(*(client(k, 0.0) for k in (0, 1)), *(client(k, 0.15) for k in (2, 3, 4)))
        finally:
            await b.stop()

    asyncio.run(main())
    assert sizes == [2, 5, 5, 3], sizes  # the early two rejoin the rest; not [2, 3, 2, 3, 2, 3]


def test_answered_clients_slower_than_max_wait_still_rejoin_within_a_bounded_wait(monkeypatch):
    """Under load a client's next request can take longer than --batch-wait-ms to arrive: the batcher
    waits for the clients the last batch answered; when some do not come back (they are done), it stops
    once arrivals pause (GAP_SHARE of the batch's time), long before the FOLLOW_SHARE cap."""
    import time

    from moe_reward.serve import batcher

    monkeypatch.setattr(batcher, "FOLLOW_SHARE", 0.5)  # a cap of 0.5 s after a 1 s batch ...
    monkeypatch.setattr(batcher, "GAP_SHARE", 0.03)  # ... and a pause of 30 ms ends the wait

    sizes: list[int] = []
    gaps: list[float] = []
    ended = [0.0]

    def run(payloads):
        if ended[0]:
            gaps.append(time.monotonic() - ended[0])
        sizes.append(len(payloads))
        time.sleep(1.0)
        ended[0] = time.monotonic()
        return list(payloads)

    async def main():
        b = MicroBatcher(run, max_items=64, max_wait=0.005)
        await b.start()

        async def client(k: int, start: float):
            await asyncio.sleep(start)
            for j in range(3):
                await b.submit((k, j), 1)
                await asyncio.sleep(0.02)  # the client's own time before its next request

        try:
            await asyncio.gather(*(client(k, 0.0) for k in (0, 1)), *(client(k, 0.15) for k in (2, 3, 4)))
        finally:
            await b.stop()

    asyncio.run(main())
    assert sizes == [2, 5, 5, 3], sizes
    assert gaps[-1] < 0.25, gaps  # two clients were done: the wait ended at the pause, not at the 0.5 s cap


def test_requests_sent_together_but_spread_out_meet_in_one_batch(monkeypatch):
    """On a busy machine requests sent at once arrive spread over more than --batch-wait-ms: while they
    keep arriving (gaps under GAP_SHARE of a typical batch's time) the batch waits for them."""
    import time

    from moe_reward.serve import batcher

    monkeypatch.setattr(batcher, "GAP_SHARE", 0.05)  # a pause of 50 ms after a 1 s batch ends the wait
    monkeypatch.setattr(batcher, "FOLLOW_SHARE", 0.3)  # which lasts at most 300 ms
    sizes: list[int] = []

    def run(payloads):
        sizes.append(len(payloads))
        time.sleep(1.0 if payloads == ["warm"] else 0.01)
        return list(payloads)

    async def main():
        b = MicroBatcher(run, max_items=64, max_wait=0.005)
        await b.start()

        async def late(k: int):
            await asyncio.sleep(0.02 * k)  # 20 ms apart: 80 ms from the first to the last
            return await b.submit(k, 1)

        try:
            await b.submit("warm", 1)
            await b.submit("quick", 1)  # one short batch does not shrink the waits (a moving average)
            await asyncio.sleep(0.5)  # idle: longer than the ~200 ms in which a client counts as returning
            return await asyncio.gather(*(late(k) for k in range(5)))
        finally:
            await b.stop()

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    assert sizes == [1, 1, 5], sizes  # not [1, 1, 1, 1, 1, 1, 1]


def test_a_job_larger_than_a_batch_runs_alone():
    calls: list[list] = []
    out = _run_batcher(
        lambda ps: calls.append(list(ps)) or list(ps), [("big", 50), ("small", 1)], max_items=8
    )
    assert out == ["big", "small"] and calls == [["big"], ["small"]]


def test_a_failing_job_fails_alone():
    def run(payloads):
        if "bad" in payloads:
            raise ValueError("bad input")
        return [p.upper() for p in payloads]

    out = _run_batcher(run, [("a", 1), ("bad", 1), ("c", 1)], max_wait=0.05)
    assert out[0] == "A" and out[2] == "C"
    assert isinstance(out[1], ValueError) and "bad input" in str(out[1])


def test_a_result_that_is_an_exception_fails_only_its_job():
    out = _run_batcher(
        lambda ps: [KeyError(p) if p == "x" else p for p in ps], [("x", 1), ("y", 1)], max_wait=0.05
    )
    assert isinstance(out[0], KeyError) and out[1] == "y"


def test_more_waiting_items_than_allowed_is_busy_not_an_unbounded_queue():
    release = threading.Event()

    def run(payloads):
        release.wait(5)
        return list(payloads)

    async def main():
        b = MicroBatcher(run, max_items=4, max_wait=0, max_pending=10)
        await b.start()
        try:
            first = asyncio.ensure_future(b.submit("first", 4))
            await asyncio.sleep(0.05)  # "first" is running; what follows waits
            waiting = [asyncio.ensure_future(b.submit(i, 4)) for i in range(2)]
            await asyncio.sleep(0.01)
            with pytest.raises(Busy, match="limit 10"):
                await b.submit("one too many", 4)
            release.set()
            return await asyncio.gather(first, *waiting)
        finally:
            release.set()
            await b.stop()

    assert asyncio.run(main()) == ["first", 0, 1]


def test_batcher_rejects_bad_settings():
    with pytest.raises(ValueError):
        MicroBatcher(lambda p: p, max_items=0)


# ----------------------------------------------------------------------------- bounded cache


def test_memory_cache_keeps_the_most_recently_used_entries():
    cache = MemoryCache(max_entries=2)
    v = np.ones((3, 4), np.float32)
    cache.put(["a", "b"], v[:2])
    assert set(cache.get(["a"])) == {"a"}  # a is now the most recent
    cache.put(["c"], v[2:])
    assert set(cache.get(["a", "b", "c"])) == {"a", "c"} and len(cache) == 2
    assert (cache.hits, cache.misses) == (3, 1)


def test_memory_cache_reads_through_and_writes_to_the_disk_cache(tmp_path):
    disk = EmbeddingCache(tmp_path, "key")
    disk.put(["old"], np.full((1, 4), 2.0, np.float32))
    cache = MemoryCache(max_entries=10, disk=EmbeddingCache(tmp_path, "key"))
    assert cache.get(["old", "new"])["old"][0] == 2.0
    cache.put(["new"], np.zeros((1, 4), np.float32))
    assert set(EmbeddingCache(tmp_path, "key").get(["old", "new"])) == {"old", "new"}


def test_an_empty_memory_cache_is_still_used_by_embed_texts():
    from moe_reward.embed.cache import embed_texts

    class Counting:
        dim = 2
        calls = 0

        def token_ids(self, p, r):
            return [1]

        def encode_ids(self, ids, progress=None, quiet=False):
            Counting.calls += 1
            return np.ones((len(ids), 2), np.float32)

    cache = MemoryCache(max_entries=10)
    embed_texts(Counting(), [("p", "r")], cache)  # type: ignore[arg-type]
    embed_texts(Counting(), [("p", "r")], cache)  # type: ignore[arg-type]
    assert Counting.calls == 1 and len(cache) == 1


# ----------------------------------------------------------------------------- texts to score


def test_conversational_items_become_the_texts_training_rows_become():
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]
    completion = [{"role": "assistant", "content": "Rayleigh scattering."}]
    row = normalize_row(
        {"prompt": prompt, "chosen": completion, "rejected": [{"role": "assistant", "content": "No."}]}, "x"
    )
    assert scoring_texts(prompt, completion) == (row.prompt, row.chosen)
    assert scoring_texts("Why?", "Because.") == ("Why?", "Because.")
    assert scoring_texts("Why?", [{"role": "assistant", "content": "Because."}]) == ("Why?", "Because.")
    assert scoring_texts("Why?", "") == ("Why?", "")  # a policy may answer nothing: scored, not refused


@pytest.mark.parametrize(
    "prompt, completion, message",
    [
        (
            "p",
            [{"role": "user", "content": "x"}],
            "completion: the response turn (message 0) has role 'user'",
        ),
        ("p", [], "completion: empty message list"),
        ("p", 5, "completion: expected text or a message list, got int"),
        (7, "r", "prompt: expected text or a message list, got int"),
        (
            [{"role": "wizard", "content": "x"}],
            [{"role": "assistant", "content": "y"}],
            "unknown role 'wizard'",
        ),
        ("bad \ud800", "r", "lone surrogate"),
    ],
)
def test_texts_that_cannot_be_scored_name_the_item_and_field(prompt, completion, message):
    with pytest.raises(ValueError, match="^item 3: ") as err:
        scoring_texts(prompt, completion, "item 3")
    assert message in str(err.value)


# ----------------------------------------------------------------------------- the TRL function's plumbing


class _FakeScorer:
    """Stands in for `serve.scorer.Scorer`: reward = len(response) + 100 * (profile number)."""

    num_experts = 2
    model_dir, labels_path = "/models/fake", "/models/labels.sqlite"

    def __init__(self):
        self.calls: list[tuple[int, str | None]] = []

    def weights_for(self, profile=None, weights=None):
        from moe_reward.serve.scorer import Weights

        if profile is not None:
            return Weights("profile", np.array([float(profile[-1]), 0.0]), profile, 1)
        return Weights("weights", np.asarray(weights, float)) if weights is not None else Weights()

    def explicit_weights(self, values):
        return self.weights_for(None, values)

    def rewards(self, prompts, responses, whose=None):
        self.calls.append((len(prompts), None if whose is None else whose.profile))
        bonus = 0.0 if whose is None or whose.vector is None else 100 * whose.vector[0]
        return [len(r) + bonus for r in responses]


@pytest.fixture
def fake_scorer(monkeypatch):
    from moe_reward.serve import scorer as scorer_module

    fake = _FakeScorer()
    monkeypatch.setattr(scorer_module, "Scorer", _FakeScorer)  # reward_function's isinstance check
    return fake


def test_reward_function_has_trls_signature_and_batches(fake_scorer):
    from moe_reward.rlhf import reward_function

    fn = reward_function(fake_scorer, batch_size=2, name="alice_rm")
    params = inspect.signature(fn).parameters
    assert (
        list(params)[:2] == ["prompts", "completions"]
        and params["kwargs"].kind is inspect.Parameter.VAR_KEYWORD
    )
    assert fn.__name__ == "alice_rm"
    out = fn(
        prompts=["p"] * 5,
        completions=["a", "bb", "ccc", "dddd", ""],
        completion_ids=[[1]] * 5,
        trainer_state=None,
    )
    assert out == [1.0, 2.0, 3.0, 4.0, 0.0] and all(isinstance(x, float) for x in out)
    assert [n for n, _ in fake_scorer.calls] == [2, 2, 1]


def test_reward_function_reads_conversational_completions(fake_scorer):
    from moe_reward.rlhf import reward_function

    fn = reward_function(fake_scorer)
    prompts = [[{"role": "user", "content": "hi"}]] * 2
    completions = [[{"role": "assistant", "content": "hello"}], [{"role": "assistant", "content": "yo"}]]
    assert fn(prompts, completions) == [5.0, 2.0]
    with pytest.raises(ValueError, match="completion 1: completion: the response turn"):
        fn(prompts, [completions[0], [{"role": "user", "content": "x"}]])


def test_reward_function_scores_each_row_for_its_own_profile(fake_scorer):
    from moe_reward.rlhf import reward_function

    fn = reward_function(fake_scorer, profile="team/p1", profile_column="user")
    out = fn(["p"] * 4, ["a", "a", "a", "a"], user=["ann/p2", "", "bob/p3", "ann/p2"])
    assert out == [201.0, 101.0, 301.0, 201.0]
    assert sorted(p for _, p in fake_scorer.calls) == ["ann/p2", "bob/p3", "team/p1"]  # one call per profile
    with pytest.raises(ValueError, match="profile_column 'user': TRL passed no such column"):
        fn(["p"], ["a"], other=["x"])


def test_reward_function_pickles_without_its_model(fake_scorer, monkeypatch):
    """A copy sent to another process (pickled by Ray or multiprocessing) carries no model: it loads its
    own there, once. (copy.deepcopy goes through the same __getstate__ as pickling.)"""
    import copy
    import pickle

    from moe_reward import rlhf

    fn = rlhf.reward_function(fake_scorer, profile="a/p1", name="rm")
    assert len(pickle.dumps(fn)) < 2000  # names and settings only
    loaded: list = []
    monkeypatch.setattr(
        rlhf, "load_scorer", lambda model, labels: loaded.append((model, labels)) or _FakeScorer()
    )
    clone = copy.deepcopy(fn)
    assert clone.__name__ == "rm" and clone._scorer is None and not loaded
    assert clone(["p"], ["ab"]) == [102.0]
    assert clone(["p"], ["abc"]) == [103.0]
    assert loaded == [("/models/fake", "/models/labels.sqlite")]  # loaded once, where it runs
    remote = copy.deepcopy(rlhf.reward_function("http://127.0.0.1:9/", token="t0ken-123"))
    assert remote.urls == ["http://127.0.0.1:9/"] and remote.token == "t0ken-123"


def test_reward_function_refuses_contradictory_settings(fake_scorer):
    from moe_reward.rlhf import reward_function

    with pytest.raises(ValueError, match="either profile or weights"):
        reward_function(fake_scorer, profile="a/b", weights=[1, 0])
    with pytest.raises(ValueError, match="batch_size"):
        reward_function(fake_scorer, batch_size=0)
    with pytest.raises(ValueError, match="server URLs"):
        reward_function(["http://a:1", "runs/x"])


# ----------------------------------------------------------------------------- limits, hosts, snippets


def test_serve_limits_are_validated():
    with pytest.raises(ValueError, match="max_items"):
        ServeLimits(max_items=0)
    with pytest.raises(ValueError, match="batch_wait_ms"):
        ServeLimits(batch_wait_ms=-1)


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.5", False),
        ("myhost", False),
    ],
)
def test_only_loopback_hosts_may_serve_without_a_token(host, loopback):
    from moe_reward.cli.serve import is_loopback

    assert is_loopback(host) is loopback


def test_snippets_quote_hostile_text_as_data():
    evil = 'it\'s $(rm -rf ~) `x`\n"quoted"'
    s = client_snippets("/models/my model", evil, "ok", profile="o'neil/p $HOME", port=8123)
    argv = shlex.split(s["curl"])
    body = json.loads(argv[argv.index("-d") + 1])
    assert body == {"items": [{"prompt": evil, "response": "ok"}], "profile": "o'neil/p $HOME"}
    assert argv[2] == "http://127.0.0.1:8123/score"
    assert shlex.split(s["serve"])[3] == "/models/my model"
    ns: dict = {}
    code = s["python"].replace("from moe_reward.rlhf import reward_function", "")
    captured = []
    ns["reward_function"] = lambda *a, **k: lambda **kw: captured.append((a, k, kw))
    ns["print"] = lambda *_: None
    exec(compile(code, "snippet", "exec"), ns)  # noqa: S102 (the snippet, with reward_function stubbed)
    assert captured == [
        (("/models/my model",), {"profile": "o'neil/p $HOME"}, {"prompts": [evil], "completions": ["ok"]})
    ]


def test_snippets_for_explicit_weights():
    s = client_snippets("m", "p", "r", weights=[0.25, -1.5])
    assert json.loads(shlex.split(s["curl"])[-1])["weights"] == [0.25, -1.5]
    assert "weights=[0.25, -1.5]" in s["python"]
    with pytest.raises(ValueError):
        client_snippets("m", "p", "r", profile="a/b", weights=[1.0])


def test_the_server_keeps_freed_buffers_for_the_next_batch(monkeypatch, tmp_path, capsys):
    """`moe-reward` fixes a small mmap threshold for one-shot commands; the server, which runs the same
    forward pass again and again, sets it back up before loading anything (see core/heap.py)."""
    import sys

    from moe_reward.cli import main
    from moe_reward.core import heap

    calls: list[str] = []
    monkeypatch.setattr(heap, "reuse_freed_memory", lambda: calls.append("reuse") or True)
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2  # fails after the setting, on the model
    assert calls == ["reuse"] and "missing config.json" in capsys.readouterr().err
    if sys.platform.startswith("linux"):
        assert heap.return_freed_memory(heap.SERVING_THRESHOLD) is True  # glibc accepted the value
        heap.return_freed_memory()  # (back to what main() set for this test process)
