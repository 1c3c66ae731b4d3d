"""`streamlit run app.py` on a workspace, for the browser tests: start (waiting for the health check),
kill -9, stop. The server's output goes to HOME/server.log (appended: a restart keeps the first run's log)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`streamlit run app.py` of the checkout at `root` (this one by default; a benchmark passes an export of
    another ref) on the workspace `home`, reading data files from `data_dir` (default: none but the
    workspace's uploads). `flags` are extra `streamlit run` options; `started` is when start() launched it."""

    def __init__(
        self,
        home: Path,
        port: int | None = None,
        root: Path = ROOT,
        data_dir: Path | None = None,
        flags: tuple[str, ...] = (),
        env: dict | None = None,
    ):
        self.home, self.port, self.proc, self.log = home, port or free_port(), None, None
        self.root, self.data_dir, self.flags, self.extra_env = Path(root), data_dir, tuple(flags), env or {}
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = 0.0

    def start(self, timeout: float = 90) -> Server:
        env = {
            **os.environ,
            "MOE_REWARD_HOME": str(self.home),
            "MOE_REWARD_DATA_DIR": str(self.data_dir or self.home / "no-repo-data"),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        self.log = open(self.home / "server.log", "a")  # noqa: SIM115 - closed in stop() / kill9()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "app.py",
                "--server.headless",
                "true",
                "--server.address",
                "127.0.0.1",
                "--server.port",
                str(self.port),
                "--browser.gatherUsageStats",
                "false",
                *self.flags,
            ],
            cwd=self.root,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        pytest.fail(f"streamlit did not start: {(self.home / 'server.log').read_text()[-2000:]}")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.log is not None and not self.log.closed:
            self.log.close()
