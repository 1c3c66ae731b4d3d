"""A small preference set whose labels reverse with the prompt's context (written for the tests).

Used by the dashboard tests (tests/support/app_workspace.py) for a tiny workspace with real text.

The same two answers to a question, a short one and a long one, are preferred oppositely under
"answer briefly" and "explain in depth" cues. A single reward head on the pair embedding cannot fit both;
a model that routes the two contexts to different experts can.
"""

from __future__ import annotations

import random

from moe_reward.data.pairs import PreferencePair

QUESTIONS = [
    (
        "How do I keep cut avocado from browning?",
        "Press plastic wrap onto the cut surface to keep air off it.",
        [
            "Browning is oxidation: enzymes in the flesh react with oxygen.",
            "Lemon or lime juice slows it because the acid inhibits those enzymes.",
            "Keeping the pit in helps only where it covers the flesh.",
            "Store it cut side down in an airtight container in the fridge.",
        ],
    ),
    (
        "Why is the sky blue?",
        "Air scatters short blue wavelengths of sunlight far more than red ones.",
        [
            "This is Rayleigh scattering, which grows with the inverse fourth power of wavelength.",
            "Violet scatters even more, but sunlight has less of it and our eyes are less sensitive to it.",
            "At sunset light crosses more air, so the blue is scattered away and reds remain.",
            "Clouds look white because their droplets scatter all colours about equally.",
        ],
    ),
    (
        "What is a Python list comprehension?",
        "A compact expression that builds a list, like [x * x for x in nums].",
        [
            "It combines a loop and an optional filter in one line.",
            "For example [x for x in nums if x > 0] keeps only the positive numbers.",
            "It is usually faster than appending in a for loop.",
            "Generator expressions use parentheses instead and produce items lazily.",
        ],
    ),
    (
        "How much should I keep in an emergency fund?",
        "Aim for three to six months of essential expenses.",
        [
            "Essential expenses are rent, food, utilities, insurance and minimum debt payments.",
            "Keep it in a liquid, insured savings account, not in stocks.",
            "Lean toward six months or more if your income is irregular.",
            "Build it gradually by automating a transfer each payday.",
        ],
    ),
    (
        "How can I fall asleep faster?",
        "Keep a fixed wake-up time and avoid screens for the last hour before bed.",
        [
            "A consistent schedule anchors your circadian rhythm.",
            "Blue light from screens delays melatonin release.",
            "Keep the bedroom cool, dark and quiet.",
            "If you cannot sleep after twenty minutes, get up and do something calm until drowsy.",
        ],
    ),
    (
        "What should I pack for a week in Iceland?",
        "Waterproof layers, a warm mid-layer, hiking boots and a swimsuit.",
        [
            "Weather changes fast, so layering beats one heavy coat.",
            "A swimsuit is for the geothermal pools found all over the country.",
            "Bring a reusable bottle; the tap water is excellent.",
            "In summer pack a sleep mask because the nights stay bright.",
        ],
    ),
    (
        "How do I write a strong cover letter?",
        "Tailor it to the job and show one or two concrete results.",
        [
            "Open with the role and why this company specifically interests you.",
            "Pick achievements that match the job description and quantify them.",
            "Keep it under one page and avoid repeating your CV line by line.",
            "Close by asking for a conversation and thanking the reader.",
        ],
    ),
    (
        "Why do onions make you cry?",
        "Cutting them releases a gas that irritates your eyes.",
        [
            "Cutting breaks cells and mixes an enzyme with sulfur compounds.",
            "The result is syn-propanethial-S-oxide, which reaches the eyes as a vapour.",
            "The eyes produce tears to flush the irritant away.",
            "Chilling the onion and using a sharp knife reduce the effect.",
        ],
    ),
    (
        "What is compound interest?",
        "Interest earned on both your savings and the interest they already earned.",
        [
            "Each period's interest is added to the balance, so the next period earns more.",
            "At 7 percent a year money roughly doubles in about ten years.",
            "Starting early matters more than the amount because growth is exponential.",
            "Debt compounds the same way, which is why credit card balances grow fast.",
        ],
    ),
    (
        "How do I center a div in CSS?",
        "Give the parent display: flex with justify-content and align-items set to center.",
        [
            "Flexbox aligns children along the main and cross axes.",
            "CSS grid works too: display: grid plus place-items: center.",
            "The parent needs a height for vertical centering to be visible.",
            "Older code used absolute positioning with a transform of minus fifty percent.",
        ],
    ),
    (
        "How often should I water a snake plant?",
        "About every two to three weeks, letting the soil dry out fully between waterings.",
        [
            "Snake plants store water in their leaves and tolerate drought.",
            "Overwatering causes root rot, the most common way they die.",
            "Water even less in winter, perhaps once a month.",
            "Use a pot with drainage holes and a gritty, fast-draining mix.",
        ],
    ),
    (
        "What causes the seasons?",
        "The tilt of Earth's axis changes how directly sunlight hits each hemisphere.",
        [
            "The axis is tilted about 23.4 degrees relative to the orbit.",
            "When a hemisphere tilts toward the Sun, days are longer and light is more direct.",
            "Distance from the Sun is not the cause; Earth is closest in January.",
            "The hemispheres therefore have opposite seasons.",
        ],
    ),
    (
        "How do I ask for a raise?",
        "Book a meeting, bring evidence of your impact and name a specific number.",
        [
            "Research market pay for your role so the number is grounded.",
            "Time it after a clear win or before budgets are set.",
            "Focus on the value you deliver rather than personal needs.",
            "If the answer is no, ask what would need to be true in six months.",
        ],
    ),
    (
        "How long should I rest a steak after cooking?",
        "About five minutes, or roughly half the cooking time.",
        [
            "Resting lets the juices redistribute instead of running onto the board.",
            "The internal temperature also rises a few degrees while it rests.",
            "Tent it loosely with foil so the crust does not steam.",
            "Thin cuts need less time than thick roasts.",
        ],
    ),
    (
        "What is the difference between a virus and a bacterium?",
        "Bacteria are living cells; viruses need a host cell to reproduce.",
        [
            "Bacteria can be killed by antibiotics, viruses cannot.",
            "Viruses are far smaller and consist of genetic material in a protein coat.",
            "Many bacteria are harmless or helpful, such as gut flora.",
            "Vaccines exist for diseases caused by both.",
        ],
    ),
    (
        "How do I get better at public speaking?",
        "Practice out loud often and record yourself to spot habits.",
        [
            "Structure the talk around three main points.",
            "Rehearse the opening until it is automatic to calm early nerves.",
            "Pause instead of using filler words.",
            "Look for low-stakes chances to speak, such as team meetings.",
        ],
    ),
    (
        "What is git rebase?",
        "It replays your commits on top of another branch to keep history linear.",
        [
            "Unlike merge, it rewrites commit hashes.",
            "Interactive rebase lets you squash, reorder or edit commits.",
            "Never rebase commits that others have already pulled.",
            "If conflicts occur, fix them and run git rebase --continue.",
        ],
    ),
    (
        "Should I pay off debt or invest?",
        "Pay off high-interest debt first, then invest.",
        [
            "Paying a 20 percent credit card is a guaranteed 20 percent return.",
            "Low-interest debt like some mortgages can coexist with investing.",
            "Always take an employer's retirement match; it is free money.",
            "Keep a small emergency fund so new debt is not needed.",
        ],
    ),
    (
        "How do I stop procrastinating?",
        "Start with a two-minute version of the task to get moving.",
        [
            "Procrastination is often about avoiding an unpleasant feeling, not laziness.",
            "Break work into concrete next actions.",
            "Remove distractions such as notifications during focus blocks.",
            "Reward yourself after finishing a block of work.",
        ],
    ),
    (
        "Why do we have leap years?",
        "A year is about 365.24 days, so an extra day every four years keeps the calendar aligned.",
        [
            "Without it the calendar would drift about a day every four years.",
            "Century years are not leap years unless divisible by 400.",
            "That is why 2000 was a leap year but 1900 was not.",
            "The rule comes from the Gregorian reform of 1582.",
        ],
    ),
    (
        "How do I make rice less sticky?",
        "Rinse it until the water runs clear before cooking.",
        [
            "Rinsing removes surface starch that glues grains together.",
            "Use the right ratio, about 1.5 cups of water per cup of long-grain rice.",
            "Do not stir while it simmers.",
            "Let it rest covered for ten minutes, then fluff with a fork.",
        ],
    ),
    (
        "What is a good way to learn a new language?",
        "Practice a little every day and speak with real people early.",
        [
            "Spaced repetition apps help vocabulary stick.",
            "Listening to podcasts builds comprehension.",
            "Speaking early reveals gaps faster than studying alone.",
            "Consistency beats long irregular sessions.",
        ],
    ),
    (
        "How do I choose a travel backpack?",
        "Pick a 35 to 45 litre pack that fits carry-on limits and your torso length.",
        [
            "A padded hip belt moves weight off your shoulders.",
            "Front-loading packs are easier to organize than top loaders.",
            "Check the airline's size limits before buying.",
            "Try it on with weight inside before committing.",
        ],
    ),
    (
        "What does a SQL JOIN do?",
        "It combines rows from two tables based on a related column.",
        [
            "An INNER JOIN keeps only rows with matches in both tables.",
            "A LEFT JOIN keeps every row from the left table.",
            "Join on indexed keys for speed.",
            "Filtering in the ON clause differs from WHERE for outer joins.",
        ],
    ),
]

BRIEF_CUES = [
    "Answer briefly:",
    "I'm in a hurry -",
    "Quick answer please:",
    "In one sentence,",
    "Short version only:",
]
DEEP_CUES = [
    "Explain in depth:",
    "I want to really understand this -",
    "Give me a thorough explanation:",
    "Walk me through the details:",
    "Please elaborate fully:",
]


def long_answer(short: str, facts: list[str]) -> str:
    return " ".join([short, *facts])


def reversal_pairs(seed: int = 0, cues_per_side: int = 3) -> list[PreferencePair]:
    rng = random.Random(seed)
    pairs = []
    for qi, (question, short, facts) in enumerate(QUESTIONS):
        long = long_answer(short, facts)
        for side, cues in (("brief", BRIEF_CUES), ("deep", DEEP_CUES)):
            for cue in rng.sample(cues, cues_per_side):
                chosen, rejected = (short, long) if side == "brief" else (long, short)
                pairs.append(
                    PreferencePair(
                        f"{cue} {question}", chosen, rejected, group=side, id=f"rev-{qi}-{side}-{len(pairs)}"
                    )
                )
    return pairs
