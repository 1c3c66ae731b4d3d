"""Run a command where a directory is really read-only, or really full: a private mount namespace
(`unshare -m` as root, `unshare -rm` otherwise) with a read-only bind mount or a small tmpfs.

Nothing is simulated: SQLite, Python and Streamlit meet EROFS and ENOSPC as they would on a read-only
volume or a full disk. Where the machine allows no mount namespace, `available()` says why and the tests
that need one are skipped with that reason (under CI that is a failure: the check must not vanish)."""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest


@functools.cache
def _prefix() -> tuple[list[str] | None, str]:
    tries = ([["unshare", "-m"]] if os.geteuid() == 0 else []) + [["unshare", "-rm"]]
    why = "no unshare"
    for prefix in tries:
        try:
            probe = subprocess.run(
                [
                    *prefix,
                    "sh",
                    "-c",
                    "mount -t tmpfs -o size=64k tmpfs /mnt 2>&1 || "
                    "mount -t tmpfs -o size=64k tmpfs /tmp 2>&1",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            why = str(exc)
            continue
        if probe.returncode == 0:
            return prefix, ""
        why = (probe.stderr or probe.stdout).strip()[:200]
    return None, f"no private mount namespace on this machine ({why})"


def require_namespaces() -> None:
    prefix, why = _prefix()
    if prefix is None:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def run_read_only(
    directory: Path, argv: list[str], env: dict, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`argv` with `directory` mounted read-only (everything else as it is)."""
    prefix, _ = _prefix()
    d = shlex.quote(str(directory))
    script = f"mount --bind {d} {d} && mount -o remount,bind,ro {d} && exec {shlex.join(argv)}"
    return subprocess.run(
        [*prefix, "sh", "-c", script], capture_output=True, text=True, env=env, timeout=timeout
    )


def run_on_small_disk(
    mountpoint: Path, size: str, argv: list[str], env: dict, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`argv` with an empty tmpfs of `size` (e.g. '8m') mounted at `mountpoint` (which must exist)."""
    prefix, _ = _prefix()
    m = shlex.quote(str(mountpoint))
    script = f"mount -t tmpfs -o size={size} tmpfs {m} && exec {shlex.join(argv)}"
    return subprocess.run(
        [*prefix, "sh", "-c", script], capture_output=True, text=True, env=env, timeout=timeout
    )


def python() -> str:
    return sys.executable
