"""The README's first command on a fresh checkout, against the real OpenSearch node of the
tests: a new virtual environment, the package installed as the README says and nothing else,
`dev`, one discovery from the UI, and then every line searchable exactly as `git grep -F`
finds it (issue 28, point 1: the first command did not work against OpenSearch)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from gitlab_es_pipeline_tests.opensearch_node import OpenSearchNode
from gitlab_es_pipeline_tests.processes import (
    free_port,
    launch_materialization,
    stop,
    wait_until_serving,
)
from gitlab_es_pipeline_tests.repos import commit_files, init_repo, run_git
from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn
from gitlab_es_pipeline_tests.test_daemon import wait_until

pytestmark = pytest.mark.opensearch

ROOT = Path(__file__).resolve().parents[1]
REPOS = {
    "acme/api": {"api.py": "def handler(request):\n    return 'ok'  # the api\n"},
    "acme/web": {"web/index.js": "export const handler = () => 'ok';\n", "README.md": "# web\n"},
}


def readme_first_command() -> str:
    """The README's first shell block: the command that installs and runs the pipeline."""
    block = re.search(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert block is not None
    return block[1].strip()


def fresh_checkout(folder: Path) -> None:
    """The project's files as a clone has them: tracked and new files, not what git ignores
    (the developer's .venv, caches, .dagster_home)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)


def test_the_readmes_first_command_indexes_into_opensearch_on_a_fresh_install(
    tmp_path: Path, gitlab_server: GitLabStandIn, opensearch: OpenSearchNode
) -> None:
    command = readme_first_command()
    assert command.startswith("python3 -m venv .venv && ") and command.endswith(" dev")
    for name, files in REPOS.items():
        repo = init_repo(tmp_path / "repos" / name)
        commit_files(repo, files)
        gitlab_server.add_project(name, str(repo))
    checkout = tmp_path / "checkout"
    fresh_checkout(checkout)
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DAGSTER_", "VIRTUAL_ENV", "PYTHON", "GITLAB_", "ELASTICSEARCH_"))
    }
    env["PATH"] = os.pathsep.join(
        p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(ROOT))
    )  # a new shell: the developer's .venv not on it
    env.update(
        GITLAB_URL=gitlab_server.url,
        GITLAB_TOKEN=gitlab_server.token,
        ELASTICSEARCH_URL=opensearch.url,
        HOOK_RECEIVER_PORT=str(free_port()),
        DAGSTER_DISABLE_TELEMETRY="yes",
        # The sensor's listing every 5 s, not every minute: discovery's new partitions are
        # taken up at the next listing, and the test need not wait a minute for it.
        HEAD_SENSOR_POLL_SECONDS="5",
    )
    log = tmp_path / "first-command.log"
    with log.open("wb") as sink:
        # The README's command; only the UI's port is chosen here (3000 may be taken).
        server = subprocess.Popen(
            ["bash", "-c", f"{command} -h 127.0.0.1 -p {port}"],
            cwd=checkout,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    cli = checkout / ".venv" / "bin" / "gitlab-es-pipeline"
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url, server, log, seconds=900)  # the install, from PyPI's cache
        said = log.read_text()
        assert f"GitLab at {gitlab_server.url}: ok (token accepted)" in said, said
        assert f"at {opensearch.url}: ok (opensearch-py " in said, said
        launch_materialization(url, ["repositories"])  # the README's step 1

        def indexed() -> bool:
            done = subprocess.run(
                [str(cli), "status", "--json"],
                cwd=checkout,
                env=env,
                capture_output=True,
                text=True,
            )
            rows = json.loads(done.stdout or "[]")
            return len(rows) == len(REPOS) and all(r["state"] == "up to date" for r in rows)

        wait_until(indexed, 240, "both repositories indexed", log)
    finally:
        # The shell's command list: `dev` (then `dagster dev`) may run under bash, not as it.
        os.killpg(server.pid, signal.SIGTERM)
        stop(server)
    for needle in ("handler", "ok"):
        found = subprocess.run(
            [str(cli), "search", "-F", needle, "-n", "100"],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
        )
        assert found.returncode == 0, found.stderr
        hits = sorted(line for line in found.stdout.splitlines() if not line.startswith(" "))
        expected = []
        for name in REPOS:
            grep = run_git(tmp_path / "repos" / name, "grep", "-n", "-F", needle, "HEAD")
            for line in grep.splitlines():  # HEAD:path:number:content
                path, number, content = line.removeprefix("HEAD:").split(":", 2)
                expected.append(f"{name}:{path}:{number}: {content}")
        assert hits == sorted(expected), found.stdout
