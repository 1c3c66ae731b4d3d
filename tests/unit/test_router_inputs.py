"""Router-input channels: the lexical vectorizer, the token-state cache and its broken shards."""

from __future__ import annotations

import numpy as np
import pytest

from moe_reward.model.router_inputs import (
    TokenStateCache,
    fit_lexical,
    head_and_tail,
    lexical_matrix,
    lexical_rows,
)


def test_lexical_channel_keeps_shared_terms_and_unit_rows():
    prompts = [
        "Keep it short: how do I boil eggs?",
        "Keep it short: why is the sky blue?",
        "Explain in depth: how do I boil eggs?",
        "Explain in depth: why is the sky blue?",
    ]
    vocabulary, idf = fit_lexical(prompts)
    assert {"keep it", "it short", "in depth", "explain"} <= set(
        vocabulary
    )  # cue n-grams shared across prompts
    assert "boil eggs" in vocabulary and len(idf) == len(vocabulary)
    x = lexical_matrix(prompts + ["nothing shared here"], vocabulary, idf)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(1)).reshape(-1))
    assert np.allclose(norms[:4], 1.0) and norms[4] == 0.0
    assert fit_lexical(["one prompt only"]) == ([], pytest.approx(np.zeros(0)))


def test_head_and_tail_keeps_both_ends():
    ids = list(range(100))
    kept = head_and_tail(ids, 16)
    assert kept[:4] == [0, 1, 2, 3] and kept[4:] == list(range(88, 100)) and len(kept) == 16
    assert head_and_tail(ids[:10], 16) == ids[:10]


def test_token_state_cache_round_trip_and_broken_shard(tmp_path):
    cache = TokenStateCache(tmp_path, "key")
    states = [np.ones((3, 4), np.float16), np.full((5, 4), 2, np.float16)]
    cache.put(["a", "b"], states)
    again = TokenStateCache(tmp_path, "key").get(["a", "b", "c"])
    assert set(again) == {"a", "b"} and again["a"].shape == (3, 4) and float(again["b"][4, 0]) == 2.0
    shard = next((tmp_path / "key").glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:40])  # truncated by a crash or a full disk
    with pytest.warns(UserWarning, match="dropped broken shard"):
        assert TokenStateCache(tmp_path, "key").get(["a"]) == {}
    assert not shard.exists()  # removed, so the prompts are read again next time


def test_term_counts_equal_scikit_learns_count_vectorizer_without_importing_it():
    """Scoring with a saved lexical router counts its vocabulary's terms without scikit-learn (a cold
    import of seconds); the counts are exactly CountVectorizer's, on awkward text too."""
    import subprocess
    import sys

    from moe_reward.model.router_inputs import _counter, term_counts

    texts = [
        "Keep it short: how do I boil eggs? Keep it SHORT!",
        "Explain in depth — why is the sky blue? Ünïcode wörds, café, naïve; x y z",
        "",
        "a b c a b c a b",  # repeated terms and bigrams (single letters are tokens here)
        "tabs\tand\nnew lines, under_scores and digits 42 4.2",
        "Keep it short",
    ]
    vocabulary, _ = fit_lexical(texts + ["keep it short, in depth", "in depth and short"])
    vocabulary = vocabulary + ["never seen term"]
    ours = term_counts(texts, vocabulary)
    theirs = _counter(vocabulary).transform(texts)
    assert ours.shape == theirs.shape and (ours != theirs).nnz == 0
    assert ours.sum() > 10  # the texts do hit the vocabulary
    # scoring a few prompts (dense rows): the same values, and neither scikit-learn nor scipy imported
    sparse_rows = lexical_matrix(texts, vocabulary, np.linspace(1, 2, len(vocabulary)))
    dense_rows = lexical_rows(texts, vocabulary, np.linspace(1, 2, len(vocabulary)))
    assert isinstance(dense_rows, np.ndarray) and np.allclose(sparse_rows.toarray(), dense_rows, atol=1e-7)
    code = (
        "import sys; from moe_reward.model.router_inputs import lexical_rows; import numpy as np; "
        "lexical_rows(['keep it short'], ['keep', 'it short'], np.ones(2)); "
        "print('sklearn' in sys.modules, 'scipy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
