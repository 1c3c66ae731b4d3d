"""The hand-written content of the controlled preference dataset: `controlled_content.json` (package data),
loaded and checked here. Edit the JSON file, then regenerate the dataset (``make dataset``).

Each question entry holds the *pieces* from which :mod:`moe_reward.data.controlled` composes responses
with different attributes:

``id``       unique question id (``topic-NN``); ``topic`` its topic
``q``        two phrasings of the user question (plain, no context cue)
``short``    the core answer in 1-2 sentences (used on its own when concise)
``detail``   an explanatory paragraph appended to ``short`` when detailed
``steps``    4 (head, why) pairs: heads alone form the concise numbered list,
             head + why form the detailed one
``caveat``   one caveat / safety sentence (the *cautious* pole); it must contain
             a caveat marker recognised by :mod:`moe_reward.data.text_features`
``example``  a concrete worked example; the first sentence is used alone in
             concise answers, all sentences in detailed ones.  For programming
             questions ``code`` holds a fenced code block and ``example`` the
             sentence explaining it (detailed answers only).

``keep_case`` lists the words that keep their capital letter when a piece is embedded mid-sentence.

Writing rules (enforced by ``tests/unit/test_controlled.py``) so that the attribute switches stay
measurable: the pieces are written in a register-neutral style (no contractions, no "!", no casual or
formal marker words), with no warmth phrases, and caveat / example markers only inside ``caveat`` /
``example``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONTENT_FILE = Path(__file__).with_name("controlled_content.json")
FORMAT = "moe-reward-controlled-content/1"
PHRASINGS = 2
STEPS = 4
_TEXT_FIELDS = ("id", "topic", "short", "detail", "caveat")
_REQUIRED = ("id", "topic", "q", "short", "detail", "steps", "caveat", "example")
_OPTIONAL = ("code",)


def _texts(value: Any, n: int | None) -> bool:
    """A list of non-empty strings (of length `n` when given)."""
    return (
        isinstance(value, list)
        and (len(value) == n if n is not None else len(value) > 0)
        and all(isinstance(x, str) and x.strip() for x in value)
    )


def _question(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
    missing = [k for k in _REQUIRED if k not in raw]
    unknown = [k for k in raw if k not in _REQUIRED + _OPTIONAL]
    if missing or unknown:
        raise ValueError(f"{where}: missing fields {missing}, unknown fields {unknown}")
    for key in _TEXT_FIELDS + tuple(k for k in _OPTIONAL if k in raw):
        if not (isinstance(raw[key], str) and raw[key].strip()):
            raise ValueError(f"{where}: {key}: expected non-empty text, got {str(raw[key])[:40]!r}")
    if not _texts(raw["q"], PHRASINGS):
        raise ValueError(f"{where}: q: expected {PHRASINGS} phrasings (texts)")
    steps = raw["steps"]
    if not (isinstance(steps, list) and len(steps) == STEPS and all(_texts(s, 2) for s in steps)):
        raise ValueError(f"{where}: steps: expected {STEPS} [head, why] pairs of texts")
    if not _texts(raw["example"], None):
        raise ValueError(f"{where}: example: expected a non-empty list of sentences")
    # The generator's types: phrasings and steps are tuples (fixed), examples a list.
    return {**raw, "q": tuple(raw["q"]), "steps": [tuple(s) for s in steps], "example": list(raw["example"])}


def load_content(path: str | Path = CONTENT_FILE) -> tuple[list[dict[str, Any]], frozenset[str]]:
    """(questions, keep_case) from a content file, checked: a broken edit raises ValueError naming the
    file, the question and the field."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the controlled content: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a controlled-content file (expected format {FORMAT!r})")
    keep_case = doc.get("keep_case")
    if not (isinstance(keep_case, list) and all(isinstance(w, str) and w for w in keep_case)):
        raise ValueError(f"{path}: keep_case: expected a list of words")
    raw = doc.get("questions")
    if not (isinstance(raw, list) and raw):
        raise ValueError(f"{path}: questions: expected a non-empty list")
    questions = []
    for i, q in enumerate(raw):
        qid = q.get("id") if isinstance(q, dict) else None
        questions.append(_question(q, f"{path}: questions[{i}]" + (f" ({qid})" if qid else "")))
    seen: set[str] = set()
    for i, q in enumerate(questions):
        if q["id"] in seen:
            raise ValueError(f"{path}: questions[{i}]: id {q['id']!r} is used twice")
        seen.add(q["id"])
    return questions, frozenset(keep_case)


QUESTIONS, KEEP_CASE = load_content()
