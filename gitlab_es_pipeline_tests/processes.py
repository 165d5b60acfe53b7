"""Server processes the tests start: a port to give them, and a stop that always ends them."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

# Below Linux's ephemeral range (32768-60999): a port the kernel hands to a `bind(0)` (every
# stand-in's) is one a server started later on a port chosen here cannot lose to it. A port
# taken from the ephemeral range lost that race once, between the two test workers.
_CHOSEN_PORTS = range(20_000, 32_768)


def free_port() -> int:
    """A port nothing listens on, for a server started later that is told its port."""
    for _ in range(100):
        port = random.choice(_CHOSEN_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_CHOSEN_PORTS}")


def stop(process: subprocess.Popen) -> None:
    """Ask it to end; kill it when it has not after 30 s (a slow shutdown is not the test's
    subject, and a process left behind would hold its port)."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _is_dagster_webserver(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=2) as answer:
            return "dagster_webserver_version" in json.load(answer)
    except (OSError, ValueError):  # not listening yet, or another server on the port
        return False


def wait_until_serving(url: str, server: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    """Until the Dagster webserver at `url` answers as one; its log is the error when it exits
    or never does (a webserver loading the definitions takes 10-30 s here)."""
    deadline = time.monotonic() + seconds
    while not _is_dagster_webserver(url):
        if server.poll() is not None:
            raise RuntimeError(f"the webserver exited:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no Dagster webserver at {url} in {seconds} s:\n{log.read_text()}")
        time.sleep(0.5)


@contextlib.contextmanager
def serving_webserver(env: Mapping[str, str], log: Path) -> Iterator[str]:
    """dagster-webserver on the project's definitions, in this environment; its URL."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "dagster-webserver"),
        *("-m", "gitlab_es_pipeline.definitions", "-h", "127.0.0.1", "-p", str(port)),
    ]
    with log.open("wb") as sink:
        server = subprocess.Popen(command, env=dict(env), stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, server, log)
        yield url
    finally:
        stop(server)


def _launch(url: str, mutation: str, params: dict[str, Any], success: str) -> dict[str, Any]:
    """One launching mutation through the webserver's GraphQL, as the UI sends it; its
    answer, or an error with the whole body when it is not `success`."""
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": mutation, "variables": {"params": params}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=600) as answer:
        body = json.load(answer)
    (launched,) = body["data"].values()
    if launched["__typename"] != success:
        raise RuntimeError(f"not launched: {body}")
    return launched


# What the UI sends for the selected assets when its launch dialog backfills *All* partitions.
LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""


def launch_backfill_of_all(url: str, assets: Sequence[str]) -> str:
    """A backfill of every partition of these assets, as the UI launches one; its id."""
    params = {"assetSelection": [{"path": [a]} for a in assets], "allPartitions": True}
    return _launch(url, LAUNCH_BACKFILL, params, "LaunchBackfillSuccess")["backfillId"]


# What the UI's "Materialize" sends for unpartitioned assets.
LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""


def launch_materialization(url: str, assets: Sequence[str]) -> str:
    """A run materializing these (unpartitioned) assets, as the UI's Materialize button
    launches it; its run id."""
    params = {
        "selector": {
            "repositoryLocationName": "gitlab_es_pipeline.definitions",
            "repositoryName": "__repository__",
            "jobName": "__ASSET_JOB",
            "assetSelection": [{"path": [a]} for a in assets],
        },
        "mode": "default",
    }
    return _launch(url, LAUNCH_RUN, params, "LaunchRunSuccess")["run"]["runId"]
