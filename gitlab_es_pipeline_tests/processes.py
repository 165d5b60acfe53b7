"""Server processes the tests start: a port to give them, and a stop that always ends them."""

from __future__ import annotations

import socket
import subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """Ask it to end; kill it when it has not after 30 s (a slow shutdown is not the test's
    subject, and a process left behind would hold its port)."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
