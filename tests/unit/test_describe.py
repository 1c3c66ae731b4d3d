"""Expert descriptions on a tiny trained model over synthetic features (no backbone)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from moe_reward.data.pairs import PreferencePair
from moe_reward.embed.features import PairFeatures
from moe_reward.evaluate.describe import (
    ExpertDescription,
    auto_label,
    class_tfidf,
    describe_experts,
    llm_describe,
    load_descriptions,
    save_descriptions,
)
from moe_reward.model.moe import ModelConfig
from moe_reward.train.config import TrainConfig
from moe_reward.train.loop import train_model

DIM = 12


STEPS = "Here is how:\n1. Open the box.\n2. Lift the lid.\n3. Close it again."
PLAIN = "Just open the box and lift the lid, then close it again."


def planted_features(n: int = 160, seed: int = 0) -> PairFeatures:
    """Half the prompts say 'zebra' (and carry a marker in the router's input); under them the winner is
    the numbered-steps response, elsewhere the plain one. The response embedding encodes steps-vs-plain."""
    rng = np.random.default_rng(seed)
    pairs, prompt, chosen, rejected = [], [], [], []
    steps_vec, plain_vec = rng.normal(size=DIM), rng.normal(size=DIM)
    for i in range(n):
        zebra = i % 2 == 0
        topic = ["garden", "kitchen", "office", "garage"][i % 4 // 2 * 2 + (i // 4) % 2]
        text = f"{'Zebra mode: ' if zebra else ''}how do I tidy the {topic} box number {i}?"
        p = rng.normal(size=DIM) * 0.3
        p[0] += 3.0 if zebra else -3.0
        win, lose = (STEPS, PLAIN) if zebra else (PLAIN, STEPS)
        wv, lv = (steps_vec, plain_vec) if zebra else (plain_vec, steps_vec)
        pairs.append(PreferencePair(text, win, lose, group="zebra" if zebra else "plain", id=f"p{i}"))
        prompt.append(p)
        chosen.append(wv + rng.normal(size=DIM) * 0.3)
        rejected.append(lv + rng.normal(size=DIM) * 0.3)
    return PairFeatures(*(np.asarray(a, dtype=np.float32) for a in (prompt, chosen, rejected)), pairs)


@pytest.fixture(scope="module")
def trained():
    feats = planted_features()
    cfg = TrainConfig.for_kind("sparse", epochs=15, min_steps=60, batch_size=64, seed=0)
    model = train_model(
        feats, None, ModelConfig(kind="sparse", input_dim=DIM, num_experts=2, top_k=1), cfg
    ).model
    return model, feats


def test_describe_experts_finds_the_planted_keyword_and_feature(trained):
    model, feats = trained
    descs = describe_experts(model, feats, top_n=5)
    assert len(descs) == 2 and sum(d.n_routed for d in descs) == len(feats)
    zebra = max(descs, key=lambda d: d.groups.get("zebra", 0))
    assert zebra.groups.get("zebra", 0) > 0.9 * 80
    assert zebra.prompt_keywords[0][0] in ("zebra", "zebra mode", "mode")
    assert "zebra" in [w for w, _ in zebra.prompt_keywords]
    # Its winners are the numbered lists: its margin tracks the steps difference, and the label says so.
    assert zebra.feature_correlations["numbered_steps"] > 0.5
    assert "more steps" in zebra.label and "zebra" in zebra.label
    other = next(d for d in descs if d is not zebra)
    assert other.feature_correlations["numbered_steps"] < 0
    assert set(zebra.top_pair_ids) <= {p.id for p in feats.pairs if p.group == "zebra"}
    assert zebra.share == pytest.approx(zebra.n_routed / len(feats))


def test_descriptions_round_trip_through_json(trained, tmp_path):
    model, feats = trained
    descs = describe_experts(model, feats, top_n=3)
    path = save_descriptions(descs, tmp_path / "experts.json")
    again = load_descriptions(path)
    assert again == descs
    assert isinstance(again[0], ExpertDescription) and isinstance(again[0].prompt_keywords[0], tuple)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not an expert-descriptions file"):
        load_descriptions(tmp_path / "bad.json")


def test_class_tfidf_and_label_helpers():
    vocab, scores = class_tfidf(["apple banana apple", "cherry banana"])
    assert vocab[int(np.argmax(scores[0]))] == "apple"
    assert class_tfidf(["the and", ""])[0] == []
    assert auto_label(
        {"word_count": -0.6, "has_code": 0.3, "hedging": 0.05}, [("hurry", 1.0), ("quick", 0.5)]
    ) == ("prefers: shorter, code; prompts: 'hurry', 'quick'")
    assert auto_label({}, []) == "no distinctive signal"


class _FakeChat(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body["model"] == "broken":
            self.send_response(500)
            self.end_headers()
            return
        _FakeChat.seen = (self.path, self.headers.get("Authorization"), body)
        reply = {"choices": [{"message": {"role": "assistant", "content": " Likes numbered steps. "}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_llm_hook_against_a_local_fake_server():
    desc = ExpertDescription(
        0,
        "prefers: more steps",
        10,
        0.5,
        [("zebra", 1.0)],
        [("open", 0.5)],
        {"numbered_steps": 0.8},
        ["p0"],
        {"zebra": 10},
    )
    server = HTTPServer(("127.0.0.1", 0), _FakeChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        assert llm_describe(desc, url, "tiny", api_key="k", timeout=5) == "Likes numbered steps."
        path, auth, body = _FakeChat.seen
        assert path == "/v1/chat/completions" and auth == "Bearer k"
        assert "zebra" in body["messages"][-1]["content"]
        with pytest.raises(RuntimeError, match="HTTP 500"):
            llm_describe(desc, url, "broken", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(RuntimeError, match="unreachable"):
        llm_describe(desc, url, "tiny", timeout=2)


def test_dialogue_role_markers_are_never_keywords(trained):
    """HH-style prompts carry 'Human:' / 'Assistant:' on every turn: format, not content."""
    model, feats = trained
    dialogues = []
    for p in feats.pairs:
        prompt = f"\n\nHuman: {p.prompt}\n\nAssistant: Which box?\n\nHuman: The usual one.\n\nAssistant:"
        dialogues.append(PreferencePair(prompt, f"Assistant: {p.chosen}", p.rejected, group=p.group, id=p.id))
    hh = PairFeatures(feats.prompt, feats.chosen, feats.rejected, dialogues)
    for d in describe_experts(model, hh):
        words = " ".join(w for w, _ in d.prompt_keywords + d.chosen_keywords)
        assert "human" not in words and "assistant" not in words, d
    zebra = max(describe_experts(model, hh), key=lambda d: d.groups.get("zebra", 0))
    assert any("zebra" in w for w, _ in zebra.prompt_keywords)
