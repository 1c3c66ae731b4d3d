"""Deterministic generator for the embedded *controlled* preference dataset.

The dataset is a synthetic, fully controlled preference corpus in the spirit of
category-recovery / attribute-steering experiments and "reasonable preference
reversal" data.  Every response is composed from hand-written content
(``controlled_content.json``, loaded by :mod:`moe_reward.data.controlled_content`)
and six binary attribute switches (:data:`AXES`), each of which is measurable
from the response text with :mod:`moe_reward.data.text_features`.

Two kinds of pairs are produced (see ``data/README.md`` for the dataset card):

* **general pairs** (``user`` is ``None``, ``group`` is a pole name): the prompt
  carries a *context cue* for one pole ("I'm in a hurry -", "Show me a concrete
  example:" ...); the chosen response has that pole, the rejected one the
  opposite pole on the same axis, and the other five axes are drawn at random,
  independently for both responses, so the cued axis is the only consistent
  signal.  Many pairs are mirrored as **preference reversals**: the same two
  texts under the opposite pole's cue, with the labels swapped.
* **persona pairs** (``user`` is a persona name, ``group`` is ``"persona"``):
  plain questions without any cue; the label is decided by the persona's fixed
  pole weights (:data:`PERSONAS`), regardless of the prompt.

Regenerate / verify the committed file with::

    python -m moe_reward.data.controlled --out data/controlled/pairs.jsonl.gz
    python -m moe_reward.data.controlled --check data/controlled/pairs.jsonl.gz

Only the standard library is used and all randomness comes from seeded
``random.Random`` instances, so the output is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .controlled_content import KEEP_CASE, QUESTIONS
from .text_features import AXES as _FEATURE_AXES

__all__ = [
    "AXES",
    "POLES",
    "OPPOSITE",
    "POLE_AXIS",
    "CUES",
    "CUE_TEMPLATES",
    "PERSONAS",
    "QUESTIONS",
    "TOPICS",
    "DEFAULT_PATH",
    "generate",
    "render",
    "persona_utility",
    "write",
    "dumps",
    "stats",
    "main",
]

# ----------------------------------------------------------------- constants
#: axis -> (first pole, second pole); pole scores are positive for the first.
AXES: dict[str, tuple[str, str]] = dict(_FEATURE_AXES)
#: The 12 poles, in axis order.
POLES: list[str] = [p for pair in AXES.values() for p in pair]
OPPOSITE: dict[str, str] = {}
POLE_AXIS: dict[str, str] = {}
for _axis, (_a, _b) in AXES.items():
    OPPOSITE[_a], OPPOSITE[_b] = _b, _a
    POLE_AXIS[_a] = POLE_AXIS[_b] = _axis

TOPICS: list[str] = list(dict.fromkeys(q["topic"] for q in QUESTIONS))

#: Generated general pairs per (question, pole) before mirroring.
BASE_PAIRS_PER_POLE = 3
#: Probability that a general pair is followed by its mirrored reversal.
REVERSAL_RATE = 0.5
#: Persona pairs per persona.
PERSONA_PAIRS = 100
#: Minimum number of axes on which the two persona-pair responses differ.
PERSONA_MIN_DIFF = 2

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "data" / "controlled" / "pairs.jsonl.gz"

# Context cues. ``{q}`` is the question as written, ``{ql}`` the question with a
# lower-cased first letter (used after a dash or comma). The cue *phrase*
# (exported in :data:`CUES` and stored in ``meta.cue``) is the template minus
# the question placeholder.
CUE_TEMPLATES: dict[str, list[str]] = {
    "concise": [
        "I'm in a hurry \u2014 {ql}",
        "Quick answer please: {q}",
        "In one or two sentences, {ql}",
        "{q} Keep it short.",
        "{q} Just the short version, please.",
        "TL;DR please: {q}",
    ],
    "detailed": [
        "Explain in depth: {q}",
        "I want to really understand this \u2014 {ql}",
        "{q} Please give me a thorough explanation.",
        "Can you go into detail? {q}",
        "{q} Don't skimp on the details; I want the full picture.",
        "I have time to read, so be thorough: {q}",
    ],
    "formal": [
        "For a formal report, {ql}",
        "Please answer in a professional tone: {q}",
        "{q} This is for a client memo, so keep the tone formal.",
        "In formal language, {ql}",
        "I'm preparing an official briefing. {q}",
        "{q} Please phrase your answer as you would in a business letter.",
    ],
    "casual": [
        "Just chatting \u2014 {ql}",
        "Hey, random question: {q}",
        "{q} Keep it casual, like you're texting a friend.",
        "Talk to me like a friend: {q}",
        "No need to be formal \u2014 {ql}",
        "{q} Laid-back answer is fine, no stiff language.",
    ],
    "warm": [
        "I'm feeling anxious about this. {q}",
        "I'm feeling a bit overwhelmed \u2014 {ql}",
        "This has been stressing me out. {q}",
        "{q} I'm nervous I'll get it wrong.",
        "Be gentle with me, I'm new to this: {q}",
        "I keep messing this up and feel discouraged. {q}",
    ],
    "neutral": [
        "Strictly the facts: {q}",
        "{q} No pleasantries, just the information.",
        "Skip the encouragement and answer plainly: {q}",
        "Just the facts, no small talk: {q}",
        "{q} Please keep it impersonal and factual.",
        "No need for reassurance \u2014 {ql}",
    ],
    "cautious": [
        "I want to be careful here \u2014 {ql}",
        "{q} Please mention anything I should watch out for.",
        "I'd rather play it safe. {q}",
        "Flag any risks or caveats: {q}",
        "{q} Include any warnings I should know about.",
        "Safety first: {q}",
    ],
    "direct": [
        "No disclaimers, just tell me: {q}",
        "{q} Skip the caveats.",
        "Give it to me straight: {q}",
        "Don't hedge \u2014 {ql}",
        "{q} I don't need warnings, just the answer.",
        "Without any fine print, {ql}",
    ],
    "example": [
        "Show me a concrete example: {q}",
        "{q} Please include an example.",
        "I learn best from examples. {q}",
        "{q} Illustrate it with a specific case.",
        "Give me a worked example \u2014 {ql}",
        "With a real-world example, {ql}",
    ],
    "abstract": [
        "Just the general idea, no examples: {q}",
        "{q} Skip the examples; I want the principle.",
        "Conceptually speaking, {ql}",
        "{q} Keep it general, no specific examples needed.",
        "In general terms, {ql}",
        "Without walking through a specific case, {ql}",
    ],
    "steps": [
        "Walk me through it step by step: {q}",
        "{q} Please give me numbered steps.",
        "As a checklist: {q}",
        "Break it down into steps \u2014 {ql}",
        "{q} A numbered list would be ideal.",
        "Step by step, please: {q}",
    ],
    "prose": [
        "In paragraph form, no lists: {q}",
        "{q} Please answer in prose rather than bullet points.",
        "Write it as a flowing paragraph: {q}",
        "{q} No lists, please, just running text.",
        "Answer in plain paragraphs: {q}",
        "Without bullet points or numbering, {ql}",
    ],
}


def _cue_phrase(template: str) -> str:
    return template.replace("{ql}", "").replace("{q}", "").strip()


#: pole -> cue phrases (the context phrase that signals the pole).
CUES: dict[str, list[str]] = {p: [_cue_phrase(t) for t in ts] for p, ts in CUE_TEMPLATES.items()}

#: Held-out users: fixed pole weights that ignore the prompt's context.
#: Utility of a response = sum of the weights of the poles it has.
PERSONAS: dict[str, dict[str, float]] = {
    "busy_executive": {"concise": 2.0, "formal": 1.0, "direct": 1.0, "steps": 0.5},
    "anxious_beginner": {"warm": 2.0, "cautious": 1.5, "steps": 1.0, "example": 1.0},
    "hacker": {"example": 1.5, "casual": 1.0, "direct": 1.0, "concise": 1.0},
    "academic": {"detailed": 2.0, "formal": 1.5, "prose": 1.0, "abstract": 0.5},
    "safety_officer": {"cautious": 2.5, "steps": 1.0, "formal": 0.5, "detailed": 0.5},
    "hands_on_learner": {"example": 2.0, "steps": 1.5, "detailed": 0.5, "casual": 0.5},
    "friendly_chatter": {"casual": 1.5, "warm": 1.5, "prose": 1.0},
    "straight_shooter": {"neutral": 1.5, "direct": 1.0, "concise": 0.5, "abstract": 0.5},
    "patient_teacher": {"example": 1.5, "detailed": 1.0, "steps": 1.0, "warm": 0.5},
    "minimalist": {"concise": 2.0, "prose": 1.0, "neutral": 1.0, "abstract": 0.5},
}

# ------------------------------------------------------------- phrase banks
# Every phrase is register-specific so that the register axis stays clean:
# formal phrases contain a formal marker and no contraction / "!" / casual
# word; casual phrases contain a casual marker or "!" and no formal marker.
_OPENERS = {
    ("formal", "concise"): ["Certainly.", "Certainly."],
    ("formal", "detailed"): [
        "Certainly.",
        "Certainly, I would be pleased to explain.",
        "Certainly. Here is a thorough explanation.",
        "Indeed, this merits a careful explanation.",
    ],
    ("casual", "concise"): ["Hey!", "Hey there!", "Sure thing!", "Oh, sure!", "Alright!", "Okay, so!"],
    ("casual", "detailed"): [
        "Hey!",
        "Hey there!",
        "Sure thing!",
        "Alright, here goes!",
        "Okay, so here's the deal!",
    ],
}
_CLOSERS = {
    ("formal", "concise"): ["I trust this helps.", "I hope this is of assistance."],
    ("formal", "detailed"): [
        "I trust this clarifies the matter.",
        "Should you require further detail, please do not hesitate to ask.",
        "I hope this information is of assistance.",
        "I trust this answers your question.",
    ],
    ("casual", "concise"): ["That's the gist!", "That's pretty much it!", "Yep, that's about it!"],
    ("casual", "detailed"): [
        "That's pretty much it!",
        "And that's the gist!",
        "So yeah, that's the story!",
        "Yep, that's about it!",
    ],
}
_WARM_OPEN = {
    # Concise warm openers double as the register marker (see render()).
    ("formal", "concise"): [
        "Certainly, that is an excellent question.",
        "That is indeed a good question.",
        "I am certainly glad you asked.",
    ],
    ("formal", "detailed"): [
        "That is an excellent question.",
        "I understand why this can feel confusing.",
        "It is completely natural to wonder about this.",
        "I am glad you asked about this.",
    ],
    ("casual", "concise"): [
        "Great question!",
        "Ooh, great question!",
        "Totally get it!",
        "Love that you asked!",
        "No worries, happy to help!",
    ],
    ("casual", "detailed"): [
        "Great question!",
        "Ooh, great question!",
        "Totally get why this is confusing!",
        "Don't worry, lots of people wonder about this!",
        "Love that you're asking this!",
    ],
}
_WARM_CLOSE = {
    "formal": [
        "You are asking exactly the right questions.",
        "I hope this makes things a little easier for you.",
        "I am always happy to help with questions like this.",
        "I hope this helps clarify things for you.",
    ],
    "casual": [
        "Hope this helps!",
        "Happy to help anytime!",
        "Hope that clears things up!",
        "Glad you asked, honestly!",
    ],
}
_STEP_INTROS = {
    ("formal", "concise"): ["In brief:", "The key points:", "The essentials:"],
    ("formal", "detailed"): [
        "The key points are as follows:",
        "The essentials are as follows:",
        "In order, the main points are as follows:",
    ],
    ("casual", "concise"): ["Here's the rundown:", "Quick rundown:", "Here's the gist:"],
    ("casual", "detailed"): [
        "Here's the rundown:",
        "Here's how it breaks down:",
        "Here's the gist:",
        "Okay, so:",
    ],
}
# Detailed answers vary how the caveat is introduced. Caveats that open with
# "Note that" / "Keep in mind that" get a register-specific variant of that
# phrase; others may get a short lead-in. Every variant is a caveat marker.
_CAVEAT_REWRITES = {
    "Note that ": {
        "formal": ["Please note that ", "It is worth noting that ", "Note that "],
        "casual": ["Heads up: ", "Quick heads up: ", "Note that "],
    },
    "Keep in mind that ": {
        "formal": ["Keep in mind that ", "Bear in mind that ", "Please bear in mind that "],
        "casual": ["Keep in mind that ", "Just keep in mind that ", "Heads up: "],
    },
}
_CAVEAT_LEADS = {
    "formal": ["A word of caution: ", "One caution: ", ""],
    "casual": ["Heads up: ", "Word of caution: ", ""],
}
_EXAMPLE_LEADS = {
    "formal": ["For example,", "For instance,", "To illustrate,", "As an illustration,"],
    "casual": ["For example,", "Quick example:", "Here's an example:", "For instance,"],
}
_CODE_LEADS = {
    "formal": ["For example:", "To illustrate:", "For instance:"],
    "casual": ["Quick example:", "Here's an example:", "For example:"],
}

# Casual register: contract the neutral content (outside code spans).
_CONTRACTIONS = [
    (r"\bdo not\b", "don't"),
    (r"\bdoes not\b", "doesn't"),
    (r"\bdid not\b", "didn't"),
    (r"\bis not\b", "isn't"),
    (r"\bare not\b", "aren't"),
    (r"\bwas not\b", "wasn't"),
    (r"\bcannot\b", "can't"),
    (r"\bwill not\b", "won't"),
    (r"\bshould not\b", "shouldn't"),
    (r"\bwould not\b", "wouldn't"),
    (r"\bcould not\b", "couldn't"),
    (r"\bhave not\b", "haven't"),
    (r"\bhas not\b", "hasn't"),
    (r"\bit is\b(?![.,;:!?])", "it's"),
    (r"\bthat is\b(?![.,;:!?])", "that's"),
    (r"\bthere is\b(?![.,;:!?])", "there's"),
    (r"\byou are\b(?![.,;:!?])", "you're"),
    (r"\byou will\b", "you'll"),
    (r"\bI am\b(?![.,;:!?])", "I'm"),
    (r"\bwe are\b(?![.,;:!?])", "we're"),
    (r"\bthey are\b(?![.,;:!?])", "they're"),
]
_CONTRACTIONS_RX = [(re.compile(p, re.IGNORECASE), r) for p, r in _CONTRACTIONS]
_INLINE_CODE = re.compile(r"(`[^`\n]+`)")


def _match_case(repl: str):
    def sub(m: re.Match[str]) -> str:
        return repl[0].upper() + repl[1:] if m.group(0)[0].isupper() else repl

    return sub


@functools.cache
def casualize(text: str) -> str:
    """Contract ``do not`` -> ``don't`` etc. outside inline code spans."""
    parts = _INLINE_CODE.split(text)
    for i in range(0, len(parts), 2):  # even indices are outside code
        s = parts[i]
        for rx, repl in _CONTRACTIONS_RX:
            s = rx.sub(_match_case(repl), s)
        parts[i] = s
    return "".join(parts)


def lc_first(text: str) -> str:
    """Lower-case the first letter unless the first word must keep its case."""
    if not text or not text[0].isupper():
        return text
    word = re.split(r"[\s,;:.]", text, maxsplit=1)[0]
    if word in KEEP_CASE or word.startswith("I'") or any(c.isupper() for c in word[1:]):
        return text
    return text[0].lower() + text[1:]


def _attr_key(attrs: Mapping[str, str]) -> str:
    return "/".join(attrs[a] for a in AXES)


def render(question: Mapping, attrs: Mapping[str, str], seed: int = 0) -> str:
    """Compose the response to ``question`` with the given pole per axis.

    The surface choices (which opener, which lead-in, paragraph layout) are
    drawn from an RNG seeded by ``(seed, question id, attrs)``, so the same
    question and attributes always give the same text.
    """
    rng = random.Random(f"{seed}|{question['id']}|{_attr_key(attrs)}")
    reg = attrs["register"]
    length = attrs["length"]
    concise = length == "concise"
    conv = (lambda s: s) if reg == "formal" else casualize

    # Register frame: an opener or a closer carrying the register markers.
    # Concise warm answers open with a short warm phrase that already carries
    # them, so they skip the frame to stay short.
    warm = attrs["warmth"] == "warm"
    frame = None if (concise and warm) else rng.choice(["open", "open", "close"])
    opener = rng.choice(_OPENERS[reg, length]) if frame == "open" else None
    closer = rng.choice(_CLOSERS[reg, length]) if frame == "close" else None
    warm_open = rng.choice(_WARM_OPEN[reg, length]) if warm else None
    warm_close = rng.choice(_WARM_CLOSE[reg]) if (warm and not concise) else None
    lead = [s for s in (opener, warm_open) if s]

    short = conv(question["short"])
    blocks: list[str] = []
    if attrs["format"] == "steps":
        intro = rng.choice(_STEP_INTROS[reg, length])
        if concise:
            lines = [f"{i}. {conv(h)}" for i, (h, _) in enumerate(question["steps"], 1)]
            blocks.append(" ".join(lead + [intro]) + "\n" + "\n".join(lines))
        else:
            lines = [f"{i}. {conv(h)} {conv(w)}" for i, (h, w) in enumerate(question["steps"], 1)]
            blocks.append(" ".join(lead + [short]))
            blocks.append(intro + "\n" + "\n".join(lines))
    else:
        if concise:
            blocks.append(" ".join(lead + [short]))
        elif rng.random() < 0.5:
            blocks.append(" ".join(lead + [short, conv(question["detail"])]))
        else:
            blocks.append(" ".join(lead + [short]))
            blocks.append(conv(question["detail"]))

    extras: list[tuple[str, bool]] = []  # (text, must_be_own_paragraph)
    if attrs["example"] == "example":
        if question.get("code"):
            text = rng.choice(_CODE_LEADS[reg]) + "\n" + question["code"]
            if not concise:
                text += "\n" + " ".join(conv(s) for s in question["example"])
            extras.append((text, True))
        else:
            sents = question["example"][:1] if concise else question["example"]
            body = " ".join(conv(s) for s in sents)
            extras.append((rng.choice(_EXAMPLE_LEADS[reg]) + " " + lc_first(body), False))
    if attrs["caution"] == "cautious":
        caveat = question["caveat"]
        if not concise:
            for start, variants in _CAVEAT_REWRITES.items():
                if caveat.startswith(start):
                    caveat = rng.choice(variants[reg]) + caveat[len(start) :]
                    break
            else:
                lead_in = rng.choice(_CAVEAT_LEADS[reg])
                caveat = lead_in + (lc_first(caveat) if lead_in else caveat)
        caveat = conv(caveat)
        extras.append((caveat, False))
    if len(extras) == 2 and rng.random() < 0.5:
        extras.reverse()
    tail = " ".join(s for s in (warm_close, closer) if s)

    if concise and attrs["format"] == "prose":
        # One compact paragraph (code blocks still get their own paragraph).
        para = blocks[0]
        for text, own in extras:
            if own:
                blocks.append(text)
            elif len(blocks) == 1:
                para = para + " " + text
            else:
                blocks.append(text)
        blocks[0] = para
        if tail:
            if blocks[-1].endswith("```"):
                blocks.append(tail)
            else:
                blocks[-1] = blocks[-1] + " " + tail
    elif concise:
        # Numbered list, then one paragraph for the rest.
        rest = [t for t, own in extras if not own]
        for text, own in extras:
            if own:
                blocks.append(text)
        if rest or tail:
            blocks.append(" ".join(rest + ([tail] if tail else [])))
    else:
        blocks.extend(t for t, _ in extras)
        if tail:
            if blocks[-1].endswith("```") or rng.random() < 0.5:
                blocks.append(tail)
            else:
                blocks[-1] = blocks[-1] + " " + tail
    return "\n\n".join(blocks)


# ---------------------------------------------------------------- generation
def persona_utility(persona_name: str, attrs: Mapping[str, str]) -> float:
    """Sum of the persona's pole weights over the poles present in ``attrs``."""
    weights = PERSONAS[persona_name]
    return float(sum(weights.get(attrs[axis], 0.0) for axis in AXES))


def _random_attrs(rng: random.Random, fixed: tuple[str, str] | None = None) -> dict[str, str]:
    attrs = {axis: rng.choice(poles) for axis, poles in AXES.items()}
    if fixed is not None:
        attrs[fixed[0]] = fixed[1]
    return attrs


def _fill(template: str, question: str) -> str:
    return template.replace("{ql}", lc_first(question)).replace("{q}", question)


def generate(seed: int = 0, noise: float = 0.0) -> list[dict]:
    """Build the full list of records (general pairs first, then persona pairs).

    ``noise`` is the probability of flipping a *persona* pair's label; flipped
    pairs carry ``meta.noisy = True``. The noise draws use their own RNG, so
    changing ``noise`` never changes which pairs are generated.
    """
    if not 0.0 <= noise <= 1.0:
        raise ValueError("noise must be in [0, 1]")
    rng = random.Random(seed)
    noise_rng = random.Random(f"{seed}|noise")
    cache: dict[tuple[str, str], str] = {}
    records: list[dict] = []

    def text(q: Mapping, attrs: Mapping[str, str]) -> str:
        key = (q["id"], _attr_key(attrs))
        if key not in cache:
            cache[key] = render(q, attrs, seed)
        return cache[key]

    def add(prompt, chosen, rejected, group, user, meta) -> dict:
        rec = {
            "id": f"ctl-{len(records):06d}",
            "prompt": prompt,
            "chosen": chosen,
            "rejected": rejected,
            "group": group,
            "user": user,
            "meta": meta,
        }
        records.append(rec)
        return rec

    def meta(q, criterion, pole, cue, chosen_attrs, rejected_attrs, noisy=False, utility=None):
        return {
            "topic": q["topic"],
            "question_id": q["id"],
            "criterion": criterion,
            "pole": pole,
            "cue": cue,
            "reversal_of": None,
            "chosen_attrs": dict(chosen_attrs),
            "rejected_attrs": dict(rejected_attrs),
            "noisy": noisy,
            "utility": utility,
        }

    # General pairs: for every question, axis and pole.
    seen = set()
    for q in QUESTIONS:
        for axis, poles in AXES.items():
            for pole in poles:
                opp = OPPOSITE[pole]
                templates = rng.sample(CUE_TEMPLATES[pole], BASE_PAIRS_PER_POLE)
                for tpl in templates:
                    while True:  # redraw the rare exact duplicate of an earlier pair
                        chosen_attrs = _random_attrs(rng, (axis, pole))
                        rejected_attrs = _random_attrs(rng, (axis, opp))
                        prompt = _fill(tpl, rng.choice(q["q"]))
                        c_text, r_text = text(q, chosen_attrs), text(q, rejected_attrs)
                        if (prompt, c_text, r_text) not in seen:
                            break
                    seen.add((prompt, c_text, r_text))
                    base = add(
                        prompt,
                        c_text,
                        r_text,
                        pole,
                        None,
                        meta(q, axis, pole, _cue_phrase(tpl), chosen_attrs, rejected_attrs),
                    )
                    if rng.random() < REVERSAL_RATE:
                        for _ in range(10):
                            tpl2 = rng.choice(CUE_TEMPLATES[opp])
                            prompt2 = _fill(tpl2, rng.choice(q["q"]))
                            if (prompt2, r_text, c_text) not in seen:
                                break
                        else:
                            continue  # no fresh mirror prompt; keep the pair unmirrored
                        seen.add((prompt2, r_text, c_text))
                        mirror = add(
                            prompt2,
                            r_text,
                            c_text,
                            opp,
                            None,
                            meta(q, axis, opp, _cue_phrase(tpl2), rejected_attrs, chosen_attrs),
                        )
                        base["meta"]["reversal_of"] = mirror["id"]
                        mirror["meta"]["reversal_of"] = base["id"]

    # Persona pairs: plain questions, labels from the persona's weights only.
    for name in PERSONAS:
        order: list[Mapping] = []
        seen = set()
        count = 0
        while count < PERSONA_PAIRS:
            if not order:
                order = list(QUESTIONS)
                rng.shuffle(order)
            q = order.pop()
            phrasing = rng.choice(q["q"])
            a = _random_attrs(rng)
            b = _random_attrs(rng)
            while sum(a[x] != b[x] for x in AXES) < PERSONA_MIN_DIFF:
                b = _random_attrs(rng)
            ua, ub = persona_utility(name, a), persona_utility(name, b)
            key = (q["id"], phrasing) + tuple(sorted([_attr_key(a), _attr_key(b)]))
            if ua == ub or key in seen:
                continue  # ties carry no preference; duplicates add nothing
            seen.add(key)
            if ub > ua:
                a, b, ua, ub = b, a, ub, ua
            noisy = noise_rng.random() < noise
            if noisy:
                a, b, ua, ub = b, a, ub, ua
            add(
                phrasing,
                text(q, a),
                text(q, b),
                "persona",
                name,
                meta(q, None, None, None, a, b, noisy=noisy, utility={"chosen": ua, "rejected": ub}),
            )
            count += 1
    return records


# -------------------------------------------------------------------- output
def dumps(records: Iterable[Mapping]) -> str:
    """JSON Lines text: one ``json.dumps(rec, ensure_ascii=False)`` per line."""
    return "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)


def write(path, records: Iterable[Mapping]) -> Path:
    """Write ``records`` as UTF-8 JSON Lines with ``\\n`` line endings; gzip-compressed when the name ends
    in ``.gz`` (with no timestamp or file name in the header, so the bytes are reproducible)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dumps(records).encode("utf-8")
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=9, mtime=0)
    path.write_bytes(data)
    return path


def read_text_bytes(path) -> bytes:
    """The JSON Lines bytes of a file written by :func:`write` (gunzipped if needed)."""
    raw = Path(path).read_bytes()
    return gzip.decompress(raw) if Path(path).suffix == ".gz" else raw


def load(path) -> list[dict]:
    """Read a JSON Lines file written by :func:`write`."""
    return [json.loads(line) for line in read_text_bytes(path).decode("utf-8").splitlines() if line.strip()]


def stats(records: Sequence[Mapping]) -> dict:
    """Counts used by the dataset card (all computed, nothing hard-coded)."""
    general = [r for r in records if r["user"] is None]
    persona = [r for r in records if r["user"] is not None]
    prompts = {r["prompt"] for r in records}
    responses = {t for r in records for t in (r["chosen"], r["rejected"])}
    words = [len(t.split()) for t in responses]
    return {
        "total_pairs": len(records),
        "general_pairs": len(general),
        "persona_pairs": len(persona),
        "topics": len({r["meta"]["topic"] for r in records}),
        "questions": len({r["meta"]["question_id"] for r in records}),
        "per_group": dict(Counter(r["group"] for r in general)),
        "per_criterion": dict(Counter(r["meta"]["criterion"] for r in general)),
        "per_persona": dict(Counter(r["user"] for r in persona)),
        "per_topic": dict(Counter(r["meta"]["topic"] for r in records)),
        "reversal_pairs": sum(1 for r in general if r["meta"]["reversal_of"]) // 2,
        "general_pairs_in_reversals": sum(1 for r in general if r["meta"]["reversal_of"]),
        "noisy_pairs": sum(1 for r in persona if r["meta"]["noisy"]),
        "unique_prompts": len(prompts),
        "unique_responses": len(responses),
        "unique_texts": len(prompts | responses),
        "unique_prompt_response": len(
            {(r["prompt"], t) for r in records for t in (r["chosen"], r["rejected"])}
        ),
        "response_words_min": min(words) if words else 0,
        "response_words_max": max(words) if words else 0,
        "response_words_mean": round(sum(words) / len(words), 1) if words else 0.0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moe_reward.controlled",
        description="Generate (or verify) the controlled preference dataset.",
    )
    parser.add_argument("--out", help=f"output JSONL path (default: {DEFAULT_PATH})")
    parser.add_argument("--seed", type=int, default=0, help="RNG seed (default 0)")
    parser.add_argument(
        "--noise", type=float, default=0.0, help="label-flip rate for persona pairs (default 0.0)"
    )
    parser.add_argument("--check", metavar="PATH", help="regenerate in memory and exit 1 if PATH differs")
    parser.add_argument("--stats", action="store_true", help="print dataset counts as JSON")
    args = parser.parse_args(argv)

    actual = None
    if args.check:
        try:
            actual = read_text_bytes(args.check)
        except (OSError, gzip.BadGzipFile) as exc:
            print(f"cannot read {args.check}: {exc}", file=sys.stderr)
            return 1
    records = generate(seed=args.seed, noise=args.noise)
    status = 0
    if args.check:
        expected = dumps(records).encode("utf-8")
        if actual == expected:
            print(f"OK: {args.check} matches the generator ({len(records)} records)")
        else:
            print(
                f"MISMATCH: {args.check} differs from the generator output; "
                f"regenerate with: python -m moe_reward.controlled --out {args.check}",
                file=sys.stderr,
            )
            status = 1
    if args.out or not (args.check or args.stats):
        path = write(args.out or DEFAULT_PATH, records)
        print(f"wrote {len(records)} records to {path}")
    if args.stats:
        print(json.dumps(stats(records), indent=2, ensure_ascii=False))
    return status


if __name__ == "__main__":
    sys.exit(main())
