"""Server processes the tests start: a port to give them, and a stop that always ends them."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path


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


def wait_until_serving(url: str, server: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    """Until the webserver at `url` answers; its log is the error when it exits or never does
    (a webserver loading the definitions takes 10-30 s here)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(f"{url}/server_info", timeout=2)
            return
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"the webserver exited:\n{log.read_text()}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no answer from {url} in {seconds} s:\n{log.read_text()}"
                ) from None
            time.sleep(0.5)
