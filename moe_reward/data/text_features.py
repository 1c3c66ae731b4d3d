"""Measurable, regex-based features of assistant responses (stdlib only).

These features are deliberately simple and transparent so that they can be
used in two places:

* to *verify* the labels of the controlled preference dataset
  (``moe_reward.controlled``): every general pair is checked with
  :func:`pole_score` on the axis its prompt cues;
* by the analysis layer, to correlate expert/router margins with surface
  properties of *any* assistant text (not only this dataset).

Conventions
-----------
* Fenced code blocks (```...```) are measured separately: ``has_code`` /
  ``code_lines`` see them, every other *prose* feature is computed on the text
  with fenced blocks and inline code spans (`...`) removed, so that ``!=`` or
  ``'s'`` inside code never count as exclamations or contractions.
* Marker features are **counts** of non-overlapping, case-insensitive regex
  matches (patterns are lower-case and run on the lower-cased prose) (floats, for easy numpy use). They are not normalised by length;
  divide by ``word_count`` yourself if you need rates.
* Curly quotes/apostrophes are normalised to ASCII before matching.

Features returned by :func:`measure`
------------------------------------
word_count        whitespace tokens in the whole text (code included)
prose_words       whitespace tokens outside fenced code blocks
char_count        characters in the whole text
sentences         rough sentence count of the prose (split on . ! ? and newlines)
avg_sentence_words  prose_words / max(sentences, 1)
paragraphs        blocks separated by blank lines
numbered_steps    lines that start with ``<number>.`` or ``<number>)`` then text
bullet_points     lines that start with ``-``, ``*`` or ``•`` then text
contractions      n't / 're / 've / 'll / 'd / 'm, and 's after a pronoun
                  (it's, that's, here's, ...) -- possessives are not counted
exclamations      '!' characters in prose (not '!=')
casual_markers    colloquial words/interjections: hey, oh, yep, gonna, pretty,
                  super, totally, awesome, stuff, sure thing, ...
formal_markers    formal diction: certainly, indeed, furthermore, therefore,
                  as follows, please note, should you, do not hesitate, ...
warmth_markers    empathy/encouragement: great question, I understand,
                  don't worry, you've got this, completely normal, ...
caveat_markers    explicit caveats/safety advice: note that, keep in mind,
                  be careful, consult, check with, see a doctor, to be safe, ...
example_markers   for example, for instance, e.g., to illustrate, suppose, ...
has_code          1.0 if the text contains a fenced code block
code_lines        lines inside fenced code blocks
inline_code       number of inline `code` spans
question_back     1.0 if the last prose line ends with '?' (asks the user back)
question_marks    '?' characters in prose
hedging           hedges: might, may, perhaps, probably, usually, it depends, ...
politeness        please, thank you, thanks, you're welcome, happy to help, ...
refusal           refusal phrases: I can't help with, I'm unable to, as an AI, ...
second_person     you / your / yours / yourself
first_person      I / me / my / mine / I'm / I've ...

Pole scores
-----------
:func:`pole_score` maps a text to a signed score per controlled axis; positive
means the *first* pole of :data:`AXES` (concise, steps, formal, warm, cautious,
example), negative the second one, 0 is the decision boundary:

==========  =================================================================
length      log2(LENGTH_PIVOT / prose_words): > 0 when shorter than the pivot
format      numbered_steps + bullet_points - 1.5 (a list has at least 2 items)
register    formal_markers - casual_markers - contractions - exclamations
warmth      warmth_markers - 0.5
caution     caveat_markers - 0.5
example     example_markers + 2 * has_code - 0.5
==========  =================================================================

Hedging is reported but deliberately *not* part of the caution score: hedges
("usually", "may") appear in almost every factual answer, whereas the
cautious pole is about an explicit caveat or safety sentence.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "AXES",
    "LENGTH_PIVOT",
    "FEATURE_NAMES",
    "measure",
    "pole_score",
    "pole_scores",
    "pole_scores_from",
    "classify",
    "strip_code",
]

#: Controlled axes and their two poles; positive pole scores mean the first.
AXES: dict[str, tuple] = {
    "length": ("concise", "detailed"),
    "format": ("steps", "prose"),
    "register": ("formal", "casual"),
    "warmth": ("warm", "neutral"),
    "caution": ("cautious", "direct"),
    "example": ("example", "abstract"),
}

#: Prose-word count that separates "concise" (below) from "detailed" (above).
#: Chosen from the controlled dataset, whose concise answers have <= 78 prose
#: words and detailed ones >= 84 (see data/README.md).
LENGTH_PIVOT = 81.0


def _rx(*alternatives: str) -> re.Pattern[str]:
    """Alternation of lower-case patterns; applied to lower-cased text."""
    return re.compile("|".join(f"(?:{a})" for a in alternatives))


_FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_WORD = re.compile(r"\S+")
_NUMBERED = re.compile(r"^[ \t]*\d{1,3}[.)][ \t]+\S", re.MULTILINE)
_BULLET = re.compile(r"^[ \t]*[-*\u2022][ \t]+\S", re.MULTILINE)
_SENT_SPLIT = re.compile(r"[.!?]+(?=\s|$)|\n+")
_EXCLAM = re.compile(r"!(?!=)")

_CONTRACTION = _rx(
    r"\b[a-z]+n't\b",
    r"\b[a-z]+'(?:re|ve|ll|d|m)\b",
    r"\b(?:it|that|there|here|what|who|where|when|how|why|let|he|she|"
    r"everyone|everything|nothing|something|someone|that)'s\b",
)

_CASUAL = _rx(
    r"\bhey\b",
    r"\bhiya\b",
    r"\boh\b",
    r"\booh\b",
    r"\bwhoa\b",
    r"\bwow\b",
    r"\byeah\b",
    r"\byep\b",
    r"\byup\b",
    r"\bnope\b",
    r"\bnah\b",
    r"\bgonna\b",
    r"\bwanna\b",
    r"\bgotta\b",
    r"\bkinda\b",
    r"\bsorta\b",
    r"\bpretty\b",
    r"\bsuper\b",
    r"\btotally\b",
    r"\bawesome\b",
    r"\bstuff\b",
    r"\balright\b",
    r"\bokay,? so\b",
    r"\bsure thing\b",
    r"\bno biggie\b",
    r"\beasy peasy\b",
    r"\bbtw\b",
    r"\blol\b",
    r"\btbh\b",
    r"\bdude\b",
    r"\bheck\b",
    r"\bfolks\b",
    r"\by'all\b",
    r"\bnifty\b",
    r"\bhandy trick\b",
)

_FORMAL = _rx(
    r"\bcertainly\b",
    r"\bindeed\b",
    r"\bfurthermore\b",
    r"\bmoreover\b",
    r"\btherefore\b",
    r"\bconsequently\b",
    r"\baccordingly\b",
    r"\bthus\b",
    r"\bhence\b",
    r"\bnevertheless\b",
    r"\bnonetheless\b",
    r"\bwhereby\b",
    r"\bin summary\b",
    r"\bin conclusion\b",
    r"\bas follows\b",
    r"\b(?<![a-z] )one (?:should|may|must)\b",
    r"\bit is advisable\b",
    r"\bit is recommended\b",
    r"\bit is worth noting\b",
    r"\bi would recommend\b",
    r"\bi would suggest\b",
    r"\bplease note\b",
    r"\bkindly\b",
    r"\bshould you\b",
    r"\bdo not hesitate\b",
    r"\bi trust\b",
    r"\bof assistance\b",
    r"\bwould be pleased\b",
    r"\bmerits\b",
    r"\bwith regard to\b",
)

_WARMTH = _rx(
    r"\b(?:great|good|excellent|wonderful|fantastic) question\b",
    r"\bglad you asked\b",
    r"\bhappy to help\b",
    r"\bi (?:certainly |truly |completely |totally )?understand\b",
    r"\b(?:i )?totally get\b",
    r"\bi get why\b",
    r"\bi hear you\b",
    r"\bdon't worry\b",
    r"\bdo not worry\b",
    r"\bno need to worry\b",
    r"\byou've got this\b",
    r"\byou have got this\b",
    r"\byou(?:'re| are) (?:gonna|going to) do great\b",
    r"\byou(?:'ll| will) do great\b",
    r"\byou(?:'ll| will) nail it\b",
    r"\byou(?:'re| are) asking exactly the right\b",
    r"\bwell on your way\b",
    r"\bwell equipped\b",
    r"\b(?:completely|totally|entirely|perfectly) (?:normal|natural|understandable)\b",
    r"\byou(?:'re| are) not alone\b",
    r"\bhope (?:this|that) (?:helps|makes|clears)\b",
    r"\bbe kind to yourself\b",
    r"\bproud of you\b",
    r"\bthat sounds (?:hard|tough|stressful|frustrating|difficult)\b",
    r"\bi(?:'m| am) (?:so )?sorry\b",
    r"\blove that you\b",
    r"\bdon't stress\b",
    r"\bdo not stress\b",
    r"\btake a deep breath\b",
    r"\bno shame\b",
    r"\brooting for you\b",
    r"\bcheering you on\b",
)

_CAVEAT = _rx(
    r"\bnote that\b",
    r"\bplease note\b",
    r"\bworth noting\b",
    r"\bkeep in mind\b",
    r"\bbear in mind\b",
    r"\bbe careful\b",
    r"\bword of caution\b",
    r"\bcaution\b",
    r"\bconsult\b",
    r"\bcheck with\b",
    r"\btalk to (?:a|an|your)\b",
    r"\bspeak (?:to|with) (?:a|an|your)\b",
    r"\bsee (?:a|an|your) (?:doctor|dentist|gp|physician|pharmacist|"
    r"professional|specialist|lawyer|accountant)\b",
    r"\bseek (?:medical|professional|legal|urgent|emergency) "
    r"(?:advice|help|attention|care)\b",
    r"\bdouble-check\b",
    r"\bif in doubt\b",
    r"\bwhen in doubt\b",
    r"\bif you(?:'re| are) (?:unsure|not sure)\b",
    r"\bwarning\b",
    r"\bheads up\b",
    r"\bto be safe\b",
    r"\bplay it safe\b",
    r"\bnot (?:a substitute|medical advice|financial advice|legal advice|"
    r"professional advice)\b",
    r"\bdisclaimer\b",
    r"\bat your own risk\b",
    r"\bproceed with care\b",
    r"\bmay not apply\b",
    r"\bsituation may differ\b",
)

_EXAMPLE = _rx(
    r"\bfor example\b",
    r"\bfor instance\b",
    r"\be\.g\.",
    r"\bexample:",
    r"\bquick example\b",
    r"\bconcrete example\b",
    r"\bworked example\b",
    r"\bhere(?:'s| is) an example\b",
    r"\bto illustrate\b",
    r"\bas an illustration\b",
    r"\bsuppose\b",
    r"\blet's say\b",
    r"\blet us say\b",
    r"\bimagine\b",
    r"\bsay you\b",
    r"\bconsider the case\b",
)

_HEDGING = _rx(
    r"\bmight\b",
    r"\bmay\b",
    r"\bperhaps\b",
    r"\bpossibly\b",
    r"\bprobably\b",
    r"\blikely\b",
    r"\bunlikely\b",
    r"\bgenerally\b",
    r"\btypically\b",
    r"\busually\b",
    r"\boften\b",
    r"\broughly\b",
    r"\bapproximately\b",
    r"\bit depends\b",
    r"\bin most cases\b",
    r"\bi think\b",
    r"\bi believe\b",
    r"\bi suspect\b",
    r"\bit seems\b",
    r"\bseems? to\b",
    r"\bappears? to\b",
    r"\bcould\b",
    r"\bsomewhat\b",
    r"\btends? to\b",
)

_POLITE = _rx(
    r"\bplease\b",
    r"\bthank you\b",
    r"\bthanks\b",
    r"\byou(?:'re| are) welcome\b",
    r"\bhappy to help\b",
    r"\bglad to help\b",
    r"\bmy pleasure\b",
    r"\bkindly\b",
)

_REFUSAL = _rx(
    r"\bi(?: can't| cannot| can not| won't| will not|'m unable to|"
    r" am unable to|'m not able to| am not able to) "
    r"(?:help|assist|provide|do|comply|answer|share|support|create|write|"
    r"generate|give)\b",
    r"\bas an ai\b",
    r"\bi(?:'m| am) sorry, but\b",
    r"\bi must decline\b",
    r"\bnot able to help with\b",
)

_SECOND = _rx(r"\byou\b", r"\byour\b", r"\byours\b", r"\byourself\b", r"\byou(?:'re|'ve|'ll|'d)\b")
_FIRST = _rx(r"\bi\b", r"\bme\b", r"\bmy\b", r"\bmine\b", r"\bmyself\b", r"\bi(?:'m|'ve|'ll|'d)\b")

FEATURE_NAMES = (
    "word_count",
    "prose_words",
    "char_count",
    "sentences",
    "avg_sentence_words",
    "paragraphs",
    "numbered_steps",
    "bullet_points",
    "contractions",
    "exclamations",
    "casual_markers",
    "formal_markers",
    "warmth_markers",
    "caveat_markers",
    "example_markers",
    "has_code",
    "code_lines",
    "inline_code",
    "question_back",
    "question_marks",
    "hedging",
    "politeness",
    "refusal",
    "second_person",
    "first_person",
)


def _normalise(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')


def strip_code(text: str) -> str:
    """Remove fenced code blocks and inline code spans (replaced by a space)."""
    return _INLINE_CODE.sub(" ", _FENCE.sub(" ", text))


def _count(rx: re.Pattern[str], text: str) -> float:
    return float(sum(1 for _ in rx.finditer(text)))


def measure(text: str) -> dict[str, float]:
    """Return all features (see module docstring) of ``text`` as floats."""
    text = _normalise(text or "")
    fences = _FENCE.findall(text)
    no_fence = _FENCE.sub(" ", text)
    prose = _INLINE_CODE.sub(" ", no_fence)
    low = prose.lower()  # marker patterns are lower-case (faster than re.IGNORECASE)
    code_lines = 0
    for block in fences:
        inner = block.strip("`").split("\n")[1:]  # drop the ```lang line
        code_lines += sum(1 for ln in inner if ln.strip() and ln.strip() != "```")
    prose_words = len(_WORD.findall(no_fence))
    sentences = [s for s in _SENT_SPLIT.split(prose) if _WORD.search(s)]
    lines = [ln for ln in prose.splitlines() if ln.strip()]
    last = lines[-1].rstrip() if lines else ""
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    feats = {
        "word_count": float(len(_WORD.findall(text))),
        "prose_words": float(prose_words),
        "char_count": float(len(text)),
        "sentences": float(len(sentences)),
        "avg_sentence_words": prose_words / max(len(sentences), 1),
        "paragraphs": float(len(paragraphs)),
        "numbered_steps": _count(_NUMBERED, prose),
        "bullet_points": _count(_BULLET, prose),
        "contractions": _count(_CONTRACTION, low),
        "exclamations": _count(_EXCLAM, prose),
        "casual_markers": _count(_CASUAL, low),
        "formal_markers": _count(_FORMAL, low),
        "warmth_markers": _count(_WARMTH, low),
        "caveat_markers": _count(_CAVEAT, low),
        "example_markers": _count(_EXAMPLE, low),
        "has_code": 1.0 if fences else 0.0,
        "code_lines": float(code_lines),
        "inline_code": _count(_INLINE_CODE, no_fence),
        "question_back": 1.0 if last.endswith("?") else 0.0,
        "question_marks": float(prose.count("?")),
        "hedging": _count(_HEDGING, low),
        "politeness": _count(_POLITE, low),
        "refusal": _count(_REFUSAL, low),
        "second_person": _count(_SECOND, low),
        "first_person": _count(_FIRST, low),
    }
    return feats


def _score_from(f: dict[str, float], axis: str) -> float:
    if axis == "length":
        return math.log2(LENGTH_PIVOT / max(f["prose_words"], 1.0))
    if axis == "format":
        return f["numbered_steps"] + f["bullet_points"] - 1.5
    if axis == "register":
        return f["formal_markers"] - f["casual_markers"] - f["contractions"] - f["exclamations"]
    if axis == "warmth":
        return f["warmth_markers"] - 0.5
    if axis == "caution":
        return f["caveat_markers"] - 0.5
    if axis == "example":
        return f["example_markers"] + 2.0 * f["has_code"] - 0.5
    raise KeyError(f"unknown axis {axis!r}; expected one of {list(AXES)}")


def pole_score(text: str, axis: str) -> float:
    """Signed score of ``text`` on ``axis``; > 0 means the axis' first pole.

    First poles: concise, steps, formal, warm, cautious, example.
    See the module docstring for the exact formulas.
    """
    return _score_from(measure(text), axis)


def pole_scores(text: str) -> dict[str, float]:
    """:func:`pole_score` for every axis, measuring the text only once."""
    return pole_scores_from(measure(text))


def pole_scores_from(features: dict[str, float]) -> dict[str, float]:
    """Pole scores for every axis from an already computed :func:`measure` dict."""
    return {axis: _score_from(features, axis) for axis in AXES}


def classify(text: str) -> dict[str, str]:
    """Predicted pole per axis (first pole if the score is > 0, else second).

    A score of exactly 0 (e.g. a register-neutral text) maps to the second
    pole; use :func:`pole_scores` when you need the raw margin.
    """
    return {axis: (AXES[axis][0] if s > 0 else AXES[axis][1]) for axis, s in pole_scores(text).items()}
