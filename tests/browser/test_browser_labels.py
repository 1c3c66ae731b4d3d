"""Issue 8 in a real browser (Debian's Chromium) against `streamlit run app.py`: 20 clicks on "A is better"
50 ms apart, one profile open in two browser sessions, and kill -9 of the server with the labels counted
after the restart. One server for the module (restarted by the last test). Screenshots go to
test-output/screenshots/labels_*.png.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path

import pytest
from app_workspace import build_tiny_workspace
from browser import CHROMIUM, SHOTS, _no_exception, _require_browser, _wait_idle, _wait_text
from streamlit_server import Server

ROOT = Path(__file__).resolve().parents[2]
PORTS = range(8621, 8630)  # this module's servers
pytestmark = pytest.mark.browser


def _port() -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _require_browser()
    home = tmp_path_factory.mktemp("browser-labels")
    build_tiny_workspace(home)
    srv = Server(home, _port())
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


def _open_profile(browser, server, annotator: str):
    """A new browser session (its own context) on the annotator's link: lands on their last profile."""
    page = browser.new_context(viewport={"width": 1400, "height": 1800}).new_page()
    page.goto(f"{server.url}/Personalize?annotator={annotator}&profile=default")
    page.get_by_role("heading", name="Personalize").first.wait_for(timeout=90_000)
    _wait_idle(page)
    _no_exception(page)
    return page


def _labels(home: Path, annotator: str) -> list[tuple]:
    with sqlite3.connect(home / "labels.sqlite") as conn:
        return conn.execute(
            "SELECT l.id, l.pair_id, l.chosen, l.session FROM labels l JOIN annotators a "
            "ON a.id = l.annotator_id WHERE a.name = ? ORDER BY l.id",
            (annotator,),
        ).fetchall()


# What the user sees and clicks, read and clicked in one synchronous step of the page (nothing can be
# redrawn in between): the pair's caption, the text in card A, the tokens of the card and the button.
CLICK_A = """async () => {
    const tok = (el, prefix) => (new RegExp(prefix + '([0-9a-f]+)')).exec(el.className)[1];
    let block = null, button = null, settled = false;
    // While a new pair is drawn there is no button yet, and for a frame the reused block can still carry
    // the old pair's key around the new card and button: click on a settled frame, as a person would.
    for (let i = 0; i < 1000 && !settled; i++) {
        if (i) await new Promise(r => setTimeout(r, 10));
        const blocks = document.querySelectorAll('[class*="st-key-pz_pair_"]');
        block = blocks.length === 1 ? blocks[0] : null;  // (the old block may linger for a moment)
        button = block && block.querySelector('[class*="st-key-pz_a_"] button');
        settled = !!(button && tok(block, 'st-key-pz_pair_') === tok(button.closest('[class*="st-key-pz_a_"]'), 'st-key-pz_a_'));
    }
    if (!settled) return null;
    const card = block.querySelector('[class*="st-key-pz_card_a_"]');
    const caption = [...block.querySelectorAll('[data-testid="stCaptionContainer"]')]
        .map(e => e.innerText).find(t => t.startsWith('Pair '));
    const shown = {pair: caption ? caption.slice(5).split(' · ')[0] : null,
                   a_text: card ? card.querySelector('[data-testid="stText"]').innerText : null,
                   block: tok(block, 'st-key-pz_pair_'), card: card ? tok(card, 'st-key-pz_card_a_') : null,
                   button: tok(button.closest('[class*="st-key-pz_a_"]'), 'st-key-pz_a_')};
    button.click();
    return shown;
}"""


def test_twenty_fast_clicks_label_exactly_the_pairs_on_screen(browser, server):
    page = _open_profile(browser, server, "fast")
    clicks = []
    for _ in range(20):
        shown = page.evaluate(CLICK_A)
        if shown is not None:
            clicks.append(shown)
        page.wait_for_timeout(50)
    _wait_idle(page)
    _no_exception(page)
    labels = _labels(server.home, "fast")
    assert len(clicks) == 20
    # every click saw one pair: its caption, card A and button all belong to the same block
    bad = [c for c in clicks if not (c["block"] == c["card"] == c["button"] and c["pair"] and c["a_text"])]
    assert not bad, bad
    seen = {}
    for c in clicks:
        seen.setdefault(c["pair"], set()).add(c["a_text"])
    assert labels, "no click stored a label"
    assert len({pair for _, pair, _, _ in labels}) == len(labels)  # no pair twice in the profile
    for _, pair, chosen, _ in labels:
        assert pair in seen, f"label for {pair}, which no click was shown with"
        assert seen[pair] == {chosen}, f"{pair}: stored {chosen!r}, clicked with A = {seen[pair]}"
    assert _count_metric(page, len(labels)) == len(labels)
    page.screenshot(path=str(SHOTS / "labels_fast_clicks.png"), full_page=True)
    print(f"20 clicks 50 ms apart: {len(seen)} pairs shown, {len(labels)} labels stored")
    page.context.close()


# Issue 20 item 9: "A is better", then "B is better" of the same pair 100 ms later, as a hesitant user does.
CLICK_A_THEN_B = """async () => {
    let block = null, a = null, b = null;
    for (let i = 0; i < 1000 && !(block && a && b); i++) {
        if (i) await new Promise(r => setTimeout(r, 10));
        const blocks = document.querySelectorAll('[class*="st-key-pz_pair_"]');
        block = blocks.length === 1 ? blocks[0] : null;
        a = block && block.querySelector('[class*="st-key-pz_a_"] button');
        b = block && block.querySelector('[class*="st-key-pz_b_"] button');
    }
    if (!block || !a || !b) return null;
    const caption = [...block.querySelectorAll('[data-testid="stCaptionContainer"]')]
        .map(e => e.innerText).find(t => t.startsWith('Pair '));
    const text = letter => block.querySelector('[class*="st-key-pz_card_' + letter + '_"] [data-testid="stText"]').innerText;
    const shown = {pair: caption ? caption.slice(5).split(' · ')[0] : null, a_text: text('a'), b_text: text('b')};
    a.click();
    await new Promise(r => setTimeout(r, 100));
    shown.b_clicked = b.isConnected;  // the same pair's B button, if the page has not replaced it yet
    if (b.isConnected) b.click();
    return shown;
}"""


def test_a_then_b_100_ms_later_never_keeps_the_later_click(browser, server):
    page = _open_profile(browser, server, "hesitant")
    rounds = []
    for _ in range(9):
        shown = page.evaluate(CLICK_A_THEN_B)
        assert shown is not None
        rounds.append(shown)
        page.wait_for_timeout(400)
        _wait_idle(page)
    _no_exception(page)
    stored = {pair: chosen for _, pair, chosen, _ in _labels(server.home, "hesitant")}
    for r in rounds:
        assert stored.get(r["pair"]) in (r["a_text"], None), (r, stored.get(r["pair"]))  # never B's answer
    kept_a = sum(stored.get(r["pair"]) == r["a_text"] for r in rounds)
    both_refused = sum(r["pair"] not in stored for r in rounds)
    assert kept_a + both_refused == 9 and kept_a >= 1
    page.screenshot(path=str(SHOTS / "labels_a_then_b.png"), full_page=True)
    print(f"A then B 100 ms apart, 9 rounds: A kept {kept_a}, both refused {both_refused}, B kept 0")
    page.context.close()


# The note a stored label leaves (N counts the profile's labels), and how the page's current one is read.
SAVED_NOTE = r"Saved label \d+ of this profile[^\n]*"
NOTE_JS = "p => { const m = new RegExp(p).exec(document.body.innerText); return m ? m[0] : null; }"


def _label_and_wait(page) -> None:
    """Click "A is better" and wait until this click was answered: a new "Saved label N ..." note (the one
    already on the page is from the previous click) or a refusal; then until the page is idle."""
    before = page.evaluate(NOTE_JS, SAVED_NOTE)
    page.get_by_role("button", name="A is better").click()
    page.wait_for_function(
        """([p, before]) => { const t = document.body.innerText, m = new RegExp(p).exec(t);
        return (m !== null && m[0] !== before) || t.includes('already has a label'); }""",
        arg=[SAVED_NOTE, before],
        timeout=60_000,
        polling=50,  # (not every frame: innerText lays the page out)
    )
    _wait_idle(page)


def _count_metric(page, expected: int | None = None, timeout_s: float = 60) -> int:
    """The page's "Labels in this profile"; with `expected`, once it shows that (a loaded server may take a
    moment to start the rerun of the last click), or what it shows at the timeout."""
    deadline = time.time() + timeout_s
    while True:
        text = page.locator('[data-testid="stMetric"]').filter(has_text="Labels in this profile").inner_text()
        value = int(text.split()[-1])
        if expected is None or value == expected or time.time() > deadline:
            return value
        page.wait_for_timeout(200)


def test_one_profile_in_two_browser_sessions(browser, server):
    one = _open_profile(browser, server, "duo")
    two = _open_profile(browser, server, "duo")
    for _ in range(2):
        for page in (one, two):
            _label_and_wait(page)
    rows = _labels(server.home, "duo")
    sessions = {s for *_, s in rows}
    assert len(sessions) == 2 and len(rows) == 4  # the sessions are shown different pairs: no click refused
    for page in (one, two):
        page.get_by_role("button", name="Skip").click()
        _wait_idle(page)
        assert _count_metric(page, len(rows)) == len(rows), (
            "each session's profile is rebuilt from every stored label"
        )
    # Undo in session one removes session one's newest label only
    mine = [r for r in rows if r[3] == rows[0][3]]
    theirs = [r for r in rows if r[3] != rows[0][3]]
    one.get_by_role("button", name="Undo my last label").click()
    _wait_text(one, "Undone: your last label")
    _wait_idle(one)
    after = _labels(server.home, "duo")
    assert [r[0] for r in after] == sorted(r[0] for r in mine[:-1] + theirs)
    _label_and_wait(two)  # label ids are never reused: the undone one stays unused
    newest = _labels(server.home, "duo")[-1][0]
    assert newest > max(r[0] for r in rows)
    one.get_by_role("button", name="Skip").click()
    _wait_idle(one)
    assert _count_metric(one, len(_labels(server.home, "duo"))) == len(_labels(server.home, "duo"))
    one.screenshot(path=str(SHOTS / "labels_two_sessions.png"), full_page=True)
    one.context.close()
    two.context.close()


def test_kill_9_of_the_server_keeps_every_confirmed_label(browser, server):
    page = _open_profile(browser, server, "survivor")
    confirmed = 0
    for _ in range(5):
        page.get_by_role("button", name="A is better").click()
        _wait_text(page, f"Saved label {confirmed + 1} of this profile")
        confirmed += 1
        _wait_idle(page)
    page.context.close()
    server.kill9()
    assert len(_labels(server.home, "survivor")) == confirmed
    server.start()
    page = _open_profile(
        browser, server, "survivor"
    )  # the link lands on the profile, rebuilt from the labels
    assert _count_metric(page, confirmed) == confirmed
    with sqlite3.connect(server.home / "labels.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    page.screenshot(path=str(SHOTS / "labels_after_kill9.png"), full_page=True)
    page.context.close()
