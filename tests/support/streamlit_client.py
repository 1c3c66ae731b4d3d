"""A headless Streamlit client: one browser session over the server's websocket, without a browser.

It speaks the protocol the Streamlit frontend speaks (`BackMsg` in, `ForwardMsg` out, `/_stcore/stream`):
opens a session on a page, keeps the element tree the server sends (by delta path, with the fragment each
element belongs to, dropped when a run no longer draws it, as the frontend does), and clicks buttons or
sets text inputs by sending the widget states a browser would send (a click on a button inside a
fragment reruns that fragment only, as in a browser). Every message is timestamped when it arrives, so a
benchmark can time "click sent -> element rendered" on the server's side of the wire, for many sessions at
once (`bench/bench_annotators.py`), on machines where many browsers do not fit.

What it does not do: run JavaScript, draw charts, or cache messages (it declares no cached hashes, so the
server always sends whole messages).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState
from websockets.sync.client import connect


class ClientError(RuntimeError):
    """The server sent an exception element, closed the socket, or a wait timed out."""


@dataclass
class Node:
    element: object  # streamlit.proto.Element_pb2.Element, or None for a block
    fragment: str  # the fragment that drew it ("" outside any fragment)
    run: int  # which run drew it last


@dataclass
class Run:
    """One script run as this client saw it: when it was asked for, when it finished, what it drew."""

    number: int
    fragment: str
    sent: float
    finished: float | None = None
    status: int | None = None
    arrivals: list[tuple[float, tuple, object]] = field(default_factory=list)  # (time, path, element)


class StreamlitSession:
    """One session of a `streamlit run` server at `url` ("http://127.0.0.1:PORT"), on `page` ("" for
    the main page, or a page's URL path such as "Personalize"), with `query` as its link's parameters."""

    def __init__(self, url: str, page: str = "", query: dict | None = None, timeout: float = 120.0):
        self.url, self.page, self.timeout = url.rstrip("/"), page, timeout
        self.query = urlencode(query or {}, doseq=True)
        self.nodes: dict[tuple, Node] = {}
        self.widgets: dict[str, WidgetState] = {}  # values this client set (kept across runs, as a browser)
        self.runs: list[Run] = []
        self.page_hash = ""
        self.exceptions: list[str] = []
        self._cond = threading.Condition()
        self._closed: str | None = None
        self._ws = None
        self._reader: threading.Thread | None = None
        self._current: Run | None = None

    # ------------------------------------------------------------------ connection
    def open(self) -> StreamlitSession:
        """Connect and run the page once (waits for that first run to finish)."""
        ws_url = self.url.replace("http://", "ws://").replace("https://", "wss://") + "/_stcore/stream"
        self._ws = connect(ws_url, subprotocols=["streamlit"], max_size=None, open_timeout=self.timeout)
        self._reader = threading.Thread(
            target=self._read, daemon=True, name=f"st-client-{uuid.uuid4().hex[:6]}"
        )
        self._reader.start()
        self._rerun(fragment="", widgets=[])
        self.wait_finished()
        return self

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # noqa: BLE001 - closing a socket the server already closed
                pass
        if self._reader is not None:
            self._reader.join(timeout=5)

    def __enter__(self) -> StreamlitSession:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, msg: BackMsg) -> None:
        assert self._ws is not None
        self._ws.send(msg.SerializeToString())

    def _rerun(self, fragment: str, widgets: list[WidgetState]) -> Run:
        msg = BackMsg()
        cs = msg.rerun_script
        cs.query_string = self.query
        cs.page_script_hash = self.page_hash
        cs.page_name = self.page
        if fragment:
            cs.fragment_id = fragment
        cs.widget_states.widgets.extend(list(self.widgets.values()) + widgets)
        with self._cond:
            run = Run(len(self.runs) + 1, fragment, time.perf_counter())
            self.runs.append(run)
            self._current = run
        self._send(msg)
        return run

    def _read(self) -> None:
        assert self._ws is not None
        try:
            for raw in self._ws:
                now = time.perf_counter()
                msg = ForwardMsg()
                msg.ParseFromString(raw if isinstance(raw, bytes) else raw.encode())
                self._on_message(msg, now)
        except Exception as exc:  # noqa: BLE001 - the socket closed (server stopped, or close())
            with self._cond:
                self._closed = f"{type(exc).__name__}: {exc}"
                self._cond.notify_all()
            return
        with self._cond:
            self._closed = "the server closed the connection"
            self._cond.notify_all()

    def _on_message(self, msg: ForwardMsg, now: float) -> None:
        kind = msg.WhichOneof("type")
        with self._cond:
            run = self._current
            if kind == "new_session":
                self.page_hash = msg.new_session.page_script_hash or self.page_hash
            elif kind == "navigation":  # st.navigation: the page this session is on
                self.page_hash = msg.navigation.page_script_hash or self.page_hash
            elif kind == "delta":
                path = tuple(msg.metadata.delta_path)
                delta = msg.delta
                which = delta.WhichOneof("type")
                element = delta.new_element if which == "new_element" else None
                number = run.number if run else 0
                self.nodes[path] = Node(element, delta.fragment_id, number)
                if element is not None and element.WhichOneof("type") == "exception":
                    self.exceptions.append(element.exception.message)
                if run is not None:
                    run.arrivals.append((now, path, element))
            elif kind == "script_finished":
                if msg.script_finished == ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                    pass  # st.rerun(): the server runs the script again for this same request
                elif run is not None and run.finished is None:
                    run.finished, run.status = now, msg.script_finished
                    # as the frontend does: what this run did not draw again is gone
                    stale = [
                        p
                        for p, n in self.nodes.items()
                        if n.run != run.number and (not run.fragment or n.fragment == run.fragment)
                    ]
                    for p in stale:
                        del self.nodes[p]
            elif kind == "page_info_changed":
                pass
            self._cond.notify_all()

    # ------------------------------------------------------------------ waiting
    def wait_finished(self, run: Run | None = None, timeout: float | None = None) -> Run:
        """Wait for `run` (default: the newest) to finish; raises ClientError on a timeout."""
        deadline = time.perf_counter() + (timeout or self.timeout)
        with self._cond:
            run = run or self._current
            assert run is not None
            while run.finished is None:
                left = deadline - time.perf_counter()
                if self._closed:
                    raise ClientError(f"connection lost: {self._closed}")
                if left <= 0:
                    raise ClientError(
                        f"run {run.number} did not finish within {timeout or self.timeout:.0f} s"
                    )
                self._cond.wait(min(left, 0.5))
            return run

    def wait_for(self, run: Run, test: Callable[[object], bool], timeout: float | None = None) -> float:
        """Seconds from `run`'s request to the first element of that run for which `test(element)` holds."""
        deadline = time.perf_counter() + (timeout or self.timeout)
        seen = 0
        with self._cond:
            while True:
                for at, _path, element in run.arrivals[seen:]:
                    if element is not None and test(element):
                        return at - run.sent
                seen = len(run.arrivals)
                if run.finished is not None:
                    raise ClientError(f"run {run.number} finished without the element")
                if self._closed:
                    raise ClientError(f"connection lost: {self._closed}")
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise ClientError(f"no such element within {timeout or self.timeout:.0f} s")
                self._cond.wait(min(left, 0.5))

    # ------------------------------------------------------------------ reading the page
    def elements(self, kind: str | None = None) -> list[tuple[object, str]]:
        """(element, fragment id) of what is on the page now, in delta-path order; `kind` filters by the
        element's type ("button", "markdown", "metric", "text_input", ...)."""
        with self._cond:
            items = sorted(self.nodes.items())
        return [
            (n.element, n.fragment)
            for _, n in items
            if n.element is not None and (kind is None or n.element.WhichOneof("type") == kind)
        ]

    def texts(self) -> list[str]:
        """Markdown, captions, text, alerts and metric labels/values on the page now."""
        out = []
        for element, _ in self.elements():
            kind = element.WhichOneof("type")
            if kind == "markdown":
                out.append(element.markdown.body)
            elif kind == "text":
                out.append(element.text.body)
            elif kind == "alert":
                out.append(element.alert.body)
            elif kind == "metric":
                out.append(f"{element.metric.label}: {element.metric.body}")
            elif kind == "heading":
                out.append(element.heading.body)
        return out

    def metric(self, label: str) -> str | None:
        for element, _ in self.elements("metric"):
            if element.metric.label == label:
                return element.metric.body
        return None

    def buttons(self, label: str | None = None) -> list[tuple[object, str]]:
        return [(e, f) for e, f in self.elements("button") if label is None or e.button.label == label]

    # ------------------------------------------------------------------ acting
    def click(self, label: str, index: int = 0) -> Run:
        """Click the `index`-th enabled button labelled `label` (its fragment reruns, or the whole page);
        returns the run it started (not waited for)."""
        found = [(e, f) for e, f in self.buttons(label) if not e.button.disabled]
        if len(found) <= index:
            raise ClientError(f"no enabled button {label!r} on the page (buttons: {self._button_labels()})")
        element, fragment = found[index]
        state = WidgetState(id=element.button.id, trigger_value=True)
        return self._rerun(fragment=fragment, widgets=[state])

    def set_text(self, label: str, value: str) -> Run:
        """Type `value` into the text input labelled `label` (a whole-page rerun, as on Enter)."""
        for element, fragment in self.elements("text_input"):
            if element.text_input.label == label:
                state = WidgetState(id=element.text_input.id, string_value=value)
                self.widgets[element.text_input.id] = state
                return self._rerun(fragment=fragment, widgets=[])
        raise ClientError(f"no text input {label!r} on the page")

    def _button_labels(self) -> list[str]:
        return [e.button.label for e, _ in self.buttons()]
