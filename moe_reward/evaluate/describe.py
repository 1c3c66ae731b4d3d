"""Expert descriptions without an LLM: what each expert's prompts say, what its winners have, and which
measurable text features its margins track.

For each expert k of a model on a set of pairs:
- ``prompt_keywords``: c-TF-IDF (one "document" per expert: the prompts routed top-1 to it) of 1-2-grams,
  so a term scores high when it is frequent in k's prompts and rare in the others';
- ``chosen_keywords``: among the pairs routed to k, terms of the chosen responses that the rejected ones
  lack (c-TF-IDF of chosen minus that of rejected, positive part);
- ``feature_correlations``: Spearman correlation, over *all* pairs, of k's margin with the chosen-minus-
  rejected difference of each `text_features.measure` feature (Pearson in ``feature_pearson``);
- ``label``: a short template from the strongest correlations and prompt keywords, e.g.
  ``"prefers: more steps, shorter; prompts: 'hurry', 'quick'"``.

`llm_describe` optionally asks a local or OpenAI-compatible chat endpoint for a sentence instead.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from ..core import atomic
from ..core.checks import check_int, check_number, check_text, short
from ..data import text_features
from ..embed.features import PairFeatures
from .metrics import PairScores, score_pairs

if TYPE_CHECKING:
    from scipy import sparse

DESCRIPTIONS_FORMAT = "moe-reward-expert-descriptions/1"

# Features correlated with the experts' margins, with how to say "more" / "less" of each in a label.
FEATURE_WORDS: dict[str, tuple[str, str]] = {
    "word_count": ("longer", "shorter"),
    "numbered_steps": ("more steps", "fewer steps"),
    "contractions": ("contractions", "no contractions"),
    "exclamations": ("exclamations", "no exclamations"),
    "casual_markers": ("casual", "not casual"),
    "formal_markers": ("formal", "not formal"),
    "warmth_markers": ("warm", "not warm"),
    "caveat_markers": ("caveats", "no caveats"),
    "has_code": ("code", "no code"),
    "example_markers": ("examples", "no examples"),
    "question_back": ("asks back", "no question back"),
    "hedging": ("hedged", "assertive"),
    "politeness": ("polite", "not polite"),
    "refusal": ("refuses", "does not refuse"),
}
MAX_TOP_N = 1000  # keywords and pairs listed per expert
MAX_LLM_TIMEOUT = 600.0  # seconds
LABEL_MIN_CORRELATION = 0.15  # weaker correlations are not worth a word in the label
# Speaker markers of dialogue formats (HH-RLHF "Human:" / "Assistant:", TRL's "user:" / "assistant:" turns
# joined by data.py): format, not content, so they never count as keywords.
ROLE_MARKER = re.compile(r"(?im)(^|\n|\s)(human|assistant|user|system|h|a)\s*:")


def strip_role_markers(text: str) -> str:
    return ROLE_MARKER.sub(r"\1", text)


@dataclass
class ExpertDescription:
    expert: int
    label: str
    n_routed: int  # pairs whose top-1 expert is this one
    share: float  # n_routed / all pairs
    prompt_keywords: list[tuple[str, float]]
    chosen_keywords: list[tuple[str, float]]
    feature_correlations: dict[str, float]  # Spearman, over all pairs
    top_pair_ids: list[str]  # routed pairs with the highest router probability for this expert
    groups: dict[str, int]  # group -> routed pairs
    feature_pearson: dict[str, float] = field(default_factory=dict)


def class_tfidf(
    docs: list[str], top_n: int = 10, ngram_range: tuple[int, int] = (1, 2)
) -> tuple[list[str], np.ndarray]:
    """(vocabulary, [classes, terms] c-TF-IDF): term frequency in a class (normalized by the class's
    size) times log(1 + average class size / the term's frequency over all classes), as in BERTopic."""
    from sklearn.feature_extraction.text import CountVectorizer

    if not any(d.strip() for d in docs):
        return [], np.zeros((len(docs), 0))
    try:
        vec = CountVectorizer(
            ngram_range=ngram_range, stop_words="english", token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b"
        )
        # (scikit-learn ships no types: its inferred return type includes an internal tuple)
        counts = cast("sparse.csr_matrix", vec.fit_transform(docs)).toarray().astype(np.float64)
    except ValueError:  # only stop words
        return [], np.zeros((len(docs), 0))
    tf = counts / np.clip(counts.sum(1, keepdims=True), 1, None)
    avg_words = counts.sum() / max(len(docs), 1)
    idf = np.log(1 + avg_words / np.clip(counts.sum(0), 1, None))
    return list(vec.get_feature_names_out()), tf * idf


def _top_terms(vocab: list[str], scores: np.ndarray, top_n: int) -> list[tuple[str, float]]:
    order = np.argsort(-scores, kind="stable")[:top_n]
    return [(vocab[i], round(float(scores[i]), 6)) for i in order if scores[i] > 0]


def _rank(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def feature_differences(features: PairFeatures, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """{feature: [N] measure(chosen) - measure(rejected)} for the label-worthy text features."""
    names = names or list(FEATURE_WORDS)
    cache: dict[str, dict[str, float]] = {}

    def measured(text: str) -> dict[str, float]:
        if text not in cache:
            cache[text] = text_features.measure(text)
        return cache[text]

    rows = [(measured(p.chosen), measured(p.rejected)) for p in features.pairs]
    return {f: np.array([c.get(f, 0.0) - r.get(f, 0.0) for c, r in rows]) for f in names}


def auto_label(
    correlations: dict[str, float],
    prompt_keywords: list[tuple[str, float]],
    n_features: int = 2,
    n_keywords: int = 3,
) -> str:
    strong = sorted(
        (kv for kv in correlations.items() if abs(kv[1]) >= LABEL_MIN_CORRELATION and kv[0] in FEATURE_WORDS),
        key=lambda kv: -abs(kv[1]),
    )[:n_features]
    parts = []
    if strong:
        parts.append("prefers: " + ", ".join(FEATURE_WORDS[f][0 if r > 0 else 1] for f, r in strong))
    if prompt_keywords:
        parts.append("prompts: " + ", ".join(f"'{w}'" for w, _ in prompt_keywords[:n_keywords]))
    return "; ".join(parts) or "no distinctive signal"


def describe_experts(
    model, features: PairFeatures, scores: PairScores | None = None, top_n: int = 10
) -> list[ExpertDescription]:
    check_int("top_n", top_n, 1, MAX_TOP_N)
    scores = scores if scores is not None else score_pairs(model, features)
    k_experts = scores.routing.shape[1]
    n = len(features)
    top = scores.top_expert
    prompt_docs = [
        "\n".join(strip_role_markers(features.pairs[i].prompt) for i in np.flatnonzero(top == k))
        for k in range(k_experts)
    ]
    vocab, prompt_scores = class_tfidf(prompt_docs)
    diffs = feature_differences(features)
    out = []
    for k in range(k_experts):
        routed = np.flatnonzero(top == k)
        prompt_kw = _top_terms(vocab, prompt_scores[k], top_n) if len(routed) and vocab else []
        chosen_kw: list[tuple[str, float]] = []
        if len(routed):
            docs = [
                "\n".join(strip_role_markers(features.pairs[i].chosen) for i in routed),
                "\n".join(strip_role_markers(features.pairs[i].rejected) for i in routed),
            ]
            words, cs = class_tfidf(docs)
            if words:
                chosen_kw = _top_terms(words, cs[0] - cs[1], top_n)
        margin = scores.expert_margins[:, k]
        spearman = {f: round(_corr(_rank(margin), _rank(d)), 6) for f, d in diffs.items()}
        pearson = {f: round(_corr(margin, d), 6) for f, d in diffs.items()}
        best = routed[np.argsort(-scores.router_probs[routed, k], kind="stable")[:top_n]]
        groups: dict[str, int] = {}
        for i in routed:
            g = features.pairs[i].group or "(none)"
            groups[g] = groups.get(g, 0) + 1
        out.append(
            ExpertDescription(
                expert=k,
                label=auto_label(spearman, prompt_kw),
                n_routed=int(len(routed)),
                share=len(routed) / max(n, 1),
                prompt_keywords=prompt_kw,
                chosen_keywords=chosen_kw,
                feature_correlations=spearman,
                top_pair_ids=[features.pairs[i].id for i in best],
                groups=dict(sorted(groups.items(), key=lambda kv: -kv[1])),
                feature_pearson=pearson,
            )
        )
    return out


# ----------------------------------------------------------------------------- persistence


def save_descriptions(descriptions: list[ExpertDescription], path: str | Path) -> Path:
    payload = json.dumps(
        {"format": DESCRIPTIONS_FORMAT, "experts": [asdict(d) for d in descriptions]}, indent=2
    )
    return atomic.write_text(path, payload)


def load_descriptions(path: str | Path) -> list[ExpertDescription]:
    data = json.loads(Path(path).read_text())
    if data.get("format") != DESCRIPTIONS_FORMAT:
        raise ValueError(f"{path}: not an expert-descriptions file (format={data.get('format')!r})")
    out = []
    for d in data["experts"]:
        d["prompt_keywords"] = [tuple(x) for x in d["prompt_keywords"]]
        d["chosen_keywords"] = [tuple(x) for x in d["chosen_keywords"]]
        out.append(ExpertDescription(**d))
    return out


# ----------------------------------------------------------------------------- optional LLM hook


def describe_prompt(d: ExpertDescription) -> str:
    corr = sorted(d.feature_correlations.items(), key=lambda kv: -abs(kv[1]))[:5]
    return (
        f"A reward-model expert handles {d.share:.0%} of prompts.\n"
        f"Distinctive words of its prompts: {', '.join(w for w, _ in d.prompt_keywords[:10]) or '(none)'}.\n"
        f"Words its preferred responses have that the others lack: {', '.join(w for w, _ in d.chosen_keywords[:10]) or '(none)'}.\n"
        f"Correlation of its margin with (preferred - other) text features: "
        + ", ".join(f"{f} {r:+.2f}" for f, r in corr)
        + f".\nData groups of its prompts: {d.groups}.\n"
        "In one short sentence, what kind of prompt does this expert handle and what does it prefer?"
    )


def llm_describe(
    description: ExpertDescription,
    endpoint: str,
    model: str,
    api_key: str | None = None,
    timeout: float = 30.0,
) -> str:
    """One sentence from an OpenAI-compatible chat-completions endpoint (e.g. a local server at
    ``http://localhost:8000/v1``). Raises RuntimeError with the reason on any failure; ValueError for an
    endpoint that is not an http(s) URL (never a local file) or a timeout outside (0, 600] seconds."""
    if not (isinstance(endpoint, str) and re.match(r"https?://[^\s/]+", endpoint)):
        raise ValueError(f"endpoint must be an http:// or https:// URL, got {short(endpoint)}")
    check_text("model", model)
    check_number("timeout", timeout, 0.0, MAX_LLM_TIMEOUT, lo_open=True)
    url = endpoint.rstrip("/")
    if not url.endswith("/chat/completions"):
        url += "/chat/completions"
    body = json.dumps(
        {
            "model": model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": "You label the experts of a mixture-of-experts reward model."},
                {"role": "user", "content": describe_prompt(description)},
            ],
        }
    ).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            reply = json.loads(resp.read().decode("utf-8"))
        return str(reply["choices"][0]["message"]["content"]).strip()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"LLM endpoint {url} answered HTTP {exc.code}: {exc.reason}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise RuntimeError(f"LLM endpoint {url} unreachable: {getattr(exc, 'reason', exc)}") from exc
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise RuntimeError(f"LLM endpoint {url} sent an unexpected reply: {exc}") from exc
