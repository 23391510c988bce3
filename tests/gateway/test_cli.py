"""`sluicegate` as a new user meets it: one-line errors, never a traceback."""

from __future__ import annotations

import gc
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def run(*args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """Run `python -m sluicegate ARGS` (after `prelude`, if any) and capture its output."""
    code = f"{prelude}\nimport runpy\nrunpy.run_module('sluicegate', run_name='__main__')"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )


def test_serve_on_a_port_in_use_prints_one_line_and_fails() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run("serve", "--backend", "http://127.0.0.1:9", "--port", str(port))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0]
    assert "in use" in lines[0]


def test_without_the_server_extras_the_command_says_what_to_install() -> None:
    """`pip install sluicegate` has no click; `sluicegate` must not die in a traceback."""
    done = run("--help", prelude="import sys; sys.modules['click'] = None")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "pip install 'sluicegate[server]'" in done.stderr


def test_serve_on_a_public_address_without_a_token_refuses_to_start() -> None:
    """/metrics and /debug would be open to the network: one line, nothing bound."""
    done = run("serve", "--backend", "http://127.0.0.1:9", "--host", "0.0.0.0", "--port", "0")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "server.auth_token" in lines[0] and "0.0.0.0" in lines[0]


def test_serve_tunes_the_collector_for_a_long_running_server() -> None:
    """`sluicegate serve` freezes what start-up loaded and makes young collections rare."""
    from sluicegate.gateway._cli import GC_YOUNG_THRESHOLD, _settle_gc

    before = gc.get_threshold()
    try:
        _settle_gc()
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
