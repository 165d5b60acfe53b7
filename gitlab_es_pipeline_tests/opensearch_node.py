"""A real OpenSearch node for the tests and bench/: jars from Maven Central, a small launcher.

`mvn dependency:copy-dependencies` on the pom in opensearch/ fetches the server and the
modules the pipeline needs (the local Maven repository caches them); the installed JDK
compiles opensearch/OpenSearchNode.java, which starts a `Node` with those modules on its
classpath: single-node discovery, HTTP on a free loopback port, data in a folder of the
caller's. Built once per machine into a cache folder keyed by the two files' contents.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from gitlab_es_pipeline_tests.processes import free_port, stop

SOURCES = Path(__file__).resolve().parent / "opensearch"
CACHE = Path(
    os.environ.get(
        "OPENSEARCH_NODE_CACHE", Path.home() / ".cache" / "gitlab_es_pipeline" / "opensearch-node"
    )
)


class NodeUnavailable(RuntimeError):
    """The node cannot be built or started here; the message says what is missing."""


def build() -> Path:
    """The folder with lib/ (jars) and classes/ (the launcher), built when missing."""
    pom, launcher = SOURCES / "pom.xml", SOURCES / "OpenSearchNode.java"
    key = hashlib.sha256(pom.read_bytes() + launcher.read_bytes()).hexdigest()[:12]
    target = CACHE / key
    if (target / "ready").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    # pytest-xdist's workers may all want the node at once: one builds, the others wait.
    with open(CACHE / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "ready").exists():
            _build(target, pom, launcher)
    return target


def _build(target: Path, pom: Path, launcher: Path) -> None:
    missing = [tool for tool in ("java", "javac", "mvn") if shutil.which(tool) is None]
    if missing:
        raise NodeUnavailable(
            f"{', '.join(missing)} not found: the OpenSearch tests need a JDK 17 and Maven "
            "(apt-get install -y openjdk-17-jdk-headless maven)"
        )
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    _run(
        "mvn",
        "-q",
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={target / 'lib'}",
    )
    _run("javac", "-cp", str(target / "lib" / "*"), "-d", str(target / "classes"), str(launcher))
    (target / "ready").touch()


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NodeUnavailable(
            f"{command[0]} failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}"
        )


class OpenSearchNode:
    """One node; `kill` and `start` again keep its data (a crash and a restart)."""

    api_key = None  # no security plugin: no credentials

    def __init__(self, home: Path, heap: str = "512m", port: int | None = None) -> None:
        self.home = home
        self.heap = heap
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> OpenSearchNode:
        built = build()
        self.home.mkdir(parents=True, exist_ok=True)
        log = (self.home / "node.out").open("ab")
        classpath = f"{built / 'classes'}{os.pathsep}{built / 'lib' / '*'}"
        self.process = subprocess.Popen(
            [
                "java",
                f"-Xms{self.heap}",
                f"-Xmx{self.heap}",
                "-XX:+UseG1GC",
                "-Dlog4j2.formatMsgNoLookups=true",
                "-cp",
                classpath,
                "OpenSearchNode",
                str(self.home),
                str(self.port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NodeUnavailable(f"the node exited: {self._log_tail()}")
            try:
                # Green when new; after a restart, yellow is as good as it gets for an index
                # that asks for a replica (one node cannot hold it): every primary is back.
                health = requests.get(
                    f"{self.url}/_cluster/health",
                    params={
                        "wait_for_status": "yellow",
                        "wait_for_no_initializing_shards": "true",
                        "timeout": "5s",
                    },
                    timeout=10,
                )
                if health.ok and not health.json()["timed_out"]:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise NodeUnavailable(f"no healthy cluster within {timeout:.0f} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        path = self.home / "node.out"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def kill(self) -> None:
        """As a crash: no shutdown, nothing flushed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop(self.process)

    # -- reading the index from outside the pipeline ---------------------------------------------
    def request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        response = requests.request(
            method, f"{self.url}/{path.lstrip('/')}", json=body, params=params, timeout=120
        )
        response.raise_for_status()
        return response.json() if response.content else None

    def documents(self, name: str) -> dict[str, dict[str, Any]]:
        """Every document behind a name, by id (refreshed first: what is written, not only
        what searches see yet)."""
        if requests.head(f"{self.url}/{name}", timeout=30).status_code == 404:
            return {}
        self.request("POST", f"{name}/_refresh")
        out: dict[str, dict[str, Any]] = {}
        page = self.request(
            "POST", f"{name}/_search", {"size": 5000, "sort": ["_doc"]}, scroll="2m"
        )
        while page["hits"]["hits"]:
            out.update({hit["_id"]: hit["_source"] for hit in page["hits"]["hits"]})
            page = self.request(
                "POST", "_search/scroll", {"scroll": "2m", "scroll_id": page["_scroll_id"]}
            )
        self.request("DELETE", "_search/scroll", {"scroll_id": [page["_scroll_id"]]})
        return out

    def delete_all_indices(self) -> None:
        for row in self.request("GET", "_cat/indices", format="json"):
            if not row["index"].startswith("."):
                self.request("DELETE", row["index"])
