"""Secrets never leave the environment: not in logs, events, run config, metadata or files.

The pipeline runs as it is deployed (the project's definitions, resources from the
environment, Dagster's CLI, a process per step) with recognisable secrets: the GitLab token,
and for Elasticsearch a user's password (as deploy/'s compose file gives it), a wrong
password, and an API key. The stand-ins record the credentials each run sent, so the test
knows every secret was in fact used; then every byte the pipeline wrote or printed is
searched for them, and Dagster's storage is read back through Dagster itself.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance
from dagster_shared.serdes import serialize_value

from gitlab_es_pipeline_tests.pipeline import INDEX
from gitlab_es_pipeline_tests.repos import commit_files, init_repo
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn
from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn
from gitlab_es_pipeline_tests.standins.http import Request, Response

ROOT = Path(__file__).resolve().parents[1]
GITLAB_SECRET = "glpat-CANARY-gitlab-7f3a9c"
ES_SECRET = "CANARY-elastic-key-52be1d"
ES_USER = "pipeline"
ES_PASSWORD = "CANARY-elastic-password-90c4e7"
WRONG_PASSWORD = ES_PASSWORD + "-wrong"  # contains the password: searched for with it
SECRETS = (GITLAB_SECRET, ES_SECRET, ES_PASSWORD)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _files_containing(folder: Path, needle: bytes) -> list[str]:
    return [
        str(path) for path in folder.rglob("*") if path.is_file() and needle in path.read_bytes()
    ]


def _parquet_text(folder: Path) -> str:
    """The Parquet files' rows as text (their pages are compressed: bytes would hide them)."""
    return "\n".join(
        str(pq.read_table(path).to_pylist()) for path in sorted(folder.rglob("*.parquet"))
    )


def _dagster_storage_text(home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every run (its config and tags) and every event of every run (messages, errors, asset
    metadata), as Dagster reads them back from the storage the runs wrote."""
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        texts = [serialize_value(run) for run in runs]
        for run in runs:
            texts += [serialize_value(entry) for entry in instance.all_logs(run.run_id)]
    return "\n".join(texts)


def test_secrets_appear_nowhere_the_pipeline_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gitlab = GitLabStandIn(token=GITLAB_SECRET).start()
    es = ElasticsearchStandIn(api_key=ES_SECRET, basic_auth=(ES_USER, ES_PASSWORD)).start()
    # The credentials each step of the test sent: the stand-ins refuse any others.
    phase = "setup"
    sent: dict[str, set[str]] = defaultdict(set)

    def gitlab_credentials(request: Request, path: str) -> None:  # after its token check
        sent[f"gitlab {phase}"].add(request.headers.get("PRIVATE-TOKEN") or "")

    def es_credentials(request: Request) -> None:  # before its check
        sent[f"es {phase}"].add(request.headers.get("Authorization") or "")

    try:
        for key in ("team/app", "team/lib", "team/denied"):
            repo = init_repo(tmp_path / key.replace("/", "_"))
            commit_files(repo, {"main.py": "print('hello')\n" * 5, "README.md": "# x\n"})
            gitlab.add_project(key, str(repo))
        denied = gitlab._find_project("team/denied")
        assert denied is not None

        def forbidden(request: Request, path: str) -> Response | None:
            if f"/projects/{denied.id}/" in path:  # an error path gets logged too
                return Response(403, {"message": "403 Forbidden"})
            return None

        gitlab.faults += [gitlab_credentials, forbidden]
        es.faults.append(es_credentials)
        home = tmp_path / "home"
        home.mkdir()
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
        env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("DAGSTER_PG", "ELASTICSEARCH_", "GITLAB_"))
            },
            "DAGSTER_HOME": str(home),
            "GITLAB_URL": gitlab.url,
            "GITLAB_TOKEN": GITLAB_SECRET,
            "ELASTICSEARCH_URL": es.url,
            "ELASTICSEARCH_INDEX": INDEX,
            "PARQUET_STORAGE_URL": str(tmp_path / "parquet"),
            "INDEX_STEP_RETRIES": "0",
        }
        password = {**env, "ELASTICSEARCH_USERNAME": ES_USER, "ELASTICSEARCH_PASSWORD": ES_PASSWORD}
        wrong = {**password, "ELASTICSEARCH_PASSWORD": WRONG_PASSWORD}
        api_key = {**env, "ELASTICSEARCH_API_KEY": ES_SECRET}
        dagster = [sys.executable, "-m", "dagster", "asset", "materialize"]
        module = ["-m", "gitlab_es_pipeline.definitions"]
        one = "file_manifest,line_documents,es_index"
        printed = b""
        for phase, args, environment, succeeds in (
            ("discovery", ["--select", "repositories"], password, True),
            ("app, password", ["--select", one, "--partition", "team/app"], password, True),
            ("lib, wrong password", ["--select", one, "--partition", "team/lib"], wrong, False),
            ("lib, API key", ["--select", one, "--partition", "team/lib"], api_key, True),
            ("denied, API key", ["--select", one, "--partition", "team/denied"], api_key, False),
        ):
            done = subprocess.run(
                [*dagster, *module, *args],
                env=environment,
                cwd=ROOT,
                capture_output=True,
                timeout=300,
            )
            assert (done.returncode == 0) is succeeds, (phase, done.stderr.decode()[-3000:])
            printed += done.stdout + done.stderr
        # The command line with the user and password: a search that finds, the status, and
        # both with a wrong password (refused, said in one line).
        script = str(Path(sys.executable).parent / "gitlab-es-pipeline")
        for phase, args, environment, status in (
            ("cli", ["search", "-F", "print('hello')"], password, 0),
            ("cli", ["status", "--no-heads"], password, None),
            ("cli, wrong password", ["search", "hello"], wrong, 2),
            ("cli, wrong password", ["status", "--no-heads"], wrong, 2),
        ):
            done = subprocess.run(
                [script, *args], env=environment, cwd=ROOT, capture_output=True, timeout=120
            )
            assert status is None or done.returncode == status, (phase, done.stderr.decode())
            printed += done.stdout + done.stderr

        # Every secret was in fact given and used: each run sent exactly the credentials it
        # was given, to a stand-in that refuses any others.
        token = {GITLAB_SECRET}
        assert dict(sent) == {
            "gitlab discovery": token,
            "gitlab app, password": token,
            "gitlab lib, wrong password": token,
            "gitlab lib, API key": token,
            "gitlab denied, API key": token,
            # Discovery lists the index's repositories (orphans) with the password too.
            "es discovery": {_basic(ES_USER, ES_PASSWORD)},
            "es app, password": {_basic(ES_USER, ES_PASSWORD)},
            "es lib, wrong password": {_basic(ES_USER, WRONG_PASSWORD)},
            "es lib, API key": {f"ApiKey {ES_SECRET}"},
            # A run looks at the cluster before it reads (a client missing fails it there).
            "es denied, API key": {f"ApiKey {ES_SECRET}"},
            "es cli": {_basic(ES_USER, ES_PASSWORD)},
            "es cli, wrong password": {_basic(ES_USER, WRONG_PASSWORD)},
        }
        # It ran for real: documents indexed, the failures recorded in Dagster's storage.
        assert len(es.documents(INDEX)) == 12  # team/app's and team/lib's 6 lines
        assert b"team/app" in printed and b"main.py" in printed
        assert b"team/denied" in printed and b"HTTP 403" in printed
        stored = _dagster_storage_text(home, monkeypatch)
        parquet = _parquet_text(tmp_path / "parquet")
        # ... and what is searched holds what the runs did (so a secret would be in it too).
        assert _files_containing(home, b"HTTP 403")  # the event log, as files
        assert _files_containing(home / "storage", b"team/app")  # the compute logs
        for text in (stored, parquet):
            assert "team/app" in text and "team/lib" in text
        assert "HTTP 403" in stored and "HTTP 401" in stored  # team/denied, the wrong password
        assert "es_index" in stored and "dagster/row_count" in stored
        assert "main.py" in parquet and "print('hello')" in parquet

        leaks = {
            (secret, where)
            for secret in SECRETS
            for where, found in (
                ("printed", secret.encode() in printed),
                ("Dagster's storage, read by Dagster", secret in stored),
                ("a file under DAGSTER_HOME", bool(_files_containing(home, secret.encode()))),
                ("a Parquet file", bool(_files_containing(tmp_path / "parquet", secret.encode()))),
                ("a Parquet file's rows", secret in parquet),
                ("an indexed document", secret in str(es.documents(INDEX))),
            )
            if found
        }
        assert leaks == set()
    finally:
        gitlab.stop()
        es.stop()
