"""Secrets never leave the environment: not in logs, events, run config, metadata or files.

The pipeline runs as it is deployed (the project's definitions, resources from the
environment, Dagster's CLI, a process per step) with recognisable secrets; then every byte it
wrote or printed is searched for them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from gitlab_es_pipeline_tests.pipeline import INDEX
from gitlab_es_pipeline_tests.repos import commit_files, init_repo
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn
from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn
from gitlab_es_pipeline_tests.standins.http import Request, Response

ROOT = Path(__file__).resolve().parents[1]
GITLAB_SECRET = "glpat-CANARY-gitlab-7f3a9c"
ES_SECRET = "CANARY-elastic-key-52be1d"
ES_PASSWORD = "CANARY-elastic-password-90c4e7"


def _files_containing(folder: Path, needle: bytes) -> list[str]:
    return [
        str(path) for path in folder.rglob("*") if path.is_file() and needle in path.read_bytes()
    ]


def test_secrets_appear_nowhere_the_pipeline_writes(tmp_path: Path) -> None:
    gitlab = GitLabStandIn(token=GITLAB_SECRET).start()
    es = ElasticsearchStandIn(api_key=ES_SECRET, basic_auth=("pipeline", ES_PASSWORD)).start()
    try:
        for key in ("team/app", "team/denied"):
            repo = init_repo(tmp_path / key.replace("/", "_"))
            commit_files(repo, {"main.py": "print('hello')\n" * 5, "README.md": "# x\n"})
            gitlab.add_project(key, str(repo))
        denied = gitlab._find_project("team/denied")
        assert denied is not None

        def forbidden(request: Request, path: str) -> Response | None:
            if f"/projects/{denied.id}/" in path:  # an error path gets logged too
                return Response(403, {"message": "403 Forbidden"})
            return None

        gitlab.faults.append(forbidden)
        home = tmp_path / "home"
        home.mkdir()
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PG")},
            "DAGSTER_HOME": str(home),
            "GITLAB_URL": gitlab.url,
            "GITLAB_TOKEN": GITLAB_SECRET,
            "ELASTICSEARCH_URL": es.url,
            "ELASTICSEARCH_API_KEY": ES_SECRET,
            "ELASTICSEARCH_INDEX": INDEX,
            "PARQUET_STORAGE_URL": str(tmp_path / "parquet"),
            "INDEX_STEP_RETRIES": "0",
        }
        dagster = [sys.executable, "-m", "dagster", "asset", "materialize"]
        module = ["-m", "gitlab_es_pipeline.definitions"]
        printed = b""
        for args, succeeds in (
            (["--select", "repositories"], True),
            (
                ["--select", "file_manifest,line_documents,es_index", "--partition", "team/app"],
                True,
            ),
            (
                ["--select", "file_manifest,line_documents,es_index", "--partition", "team/denied"],
                False,
            ),
        ):
            done = subprocess.run(
                [*dagster, *module, *args], env=env, cwd=ROOT, capture_output=True, timeout=300
            )
            assert (done.returncode == 0) is succeeds, done.stderr.decode()[-3000:]
            printed += done.stdout + done.stderr
        # The command line, with a user and password instead of the API key: a search that
        # finds, the status, and both with a wrong password (refused, said in one line).
        script = str(Path(sys.executable).parent / "gitlab-es-pipeline")
        cli_env = {k: v for k, v in env.items() if k != "ELASTICSEARCH_API_KEY"}
        cli_env.update(ELASTICSEARCH_USERNAME="pipeline", ELASTICSEARCH_PASSWORD=ES_PASSWORD)
        wrong = {**cli_env, "ELASTICSEARCH_PASSWORD": ES_PASSWORD + "-wrong"}
        for args, environment, status in (
            (["search", "-F", "print('hello')"], cli_env, 0),
            (["status", "--no-heads"], cli_env, None),
            (["search", "hello"], wrong, 2),
            (["status", "--no-heads"], wrong, 2),
        ):
            done = subprocess.run(
                [script, *args], env=environment, cwd=ROOT, capture_output=True, timeout=120
            )
            assert status is None or done.returncode == status, done.stderr.decode()
            printed += done.stdout + done.stderr
        assert b"team/app" in printed and b"main.py" in printed
        # It ran for real: documents indexed, the failure recorded in Dagster's storage.
        assert len(es.documents(INDEX)) == 6
        assert b"team/denied" in printed and b"HTTP 403" in printed
        assert _files_containing(home, b"HTTP 403")  # the scan reads the storage
        for secret in (GITLAB_SECRET, ES_SECRET, ES_PASSWORD):
            needle = secret.encode()
            assert needle not in printed
            assert _files_containing(home, needle) == []  # event log, runs, compute logs
            assert _files_containing(tmp_path / "parquet", needle) == []
            assert all(secret not in str(doc) for doc in es.documents(INDEX).values())
    finally:
        gitlab.stop()
        es.stop()
