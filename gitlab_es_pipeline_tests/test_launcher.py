"""`gitlab-es-pipeline dev`, the README's first command: a fresh folder, a new shell, no
warning that asks the user to act."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gitlab_es_pipeline.launcher import dev_command
from gitlab_es_pipeline_tests.processes import free_port, stop, wait_until_serving
from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "gitlab-es-pipeline"


def _new_shell_env(gitlab: GitLabStandIn | None = None) -> dict[str, str]:
    """The environment of a new shell in which the README's variables were exported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "PYTHONWARN"))}
    env.update(
        GITLAB_URL=gitlab.url if gitlab else "http://127.0.0.1:9",
        GITLAB_TOKEN=gitlab.token if gitlab else "glpat-not-used",
        ELASTICSEARCH_URL="http://127.0.0.1:9",
        DAGSTER_DISABLE_TELEMETRY="yes",
    )
    return env


def test_dev_prepares_the_instance_folder_and_starts_without_a_warning_to_act_on(
    tmp_path: Path, gitlab_server: GitLabStandIn
) -> None:
    folder = tmp_path / "checkout"  # as a clone of the project: its dagster.yaml at the top
    folder.mkdir()
    (folder / "dagster.yaml").write_bytes((ROOT / "dagster.yaml").read_bytes())
    port = free_port()
    log = tmp_path / "dev.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [str(SCRIPT), "dev", "-h", "127.0.0.1", "-p", str(port)],
            cwd=folder,
            env=_new_shell_env(gitlab_server),  # the sensor's ticks get an answer
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", server, log)
        home = folder / ".dagster_home"
        # The instance is the prepared folder, on the project's dagster.yaml.
        assert (home / "dagster.yaml").read_bytes() == (ROOT / "dagster.yaml").read_bytes()
        # Dagster's SQLite storage is made there: the runs and schedules databases.
        assert (home / "history" / "runs.db").is_file(), sorted(p.name for p in home.iterdir())
        assert (home / "schedules").is_dir()
    finally:
        stop(server)
    output = log.read_text()
    assert f"Dagster instance in {home}" in output
    assert "will not be used" not in output, output
    assert "Warning" not in output.replace("BetaWarning", "Warning"), output

    # Started again: the folder's dagster.yaml is kept (a user may have edited it).
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text() + "\n# mine\n")
    done = subprocess.run(
        [str(SCRIPT), "dev", "--help"], cwd=folder, env=_new_shell_env(), capture_output=True
    )
    assert done.returncode == 0, done.stderr
    assert (home / "dagster.yaml").read_text().endswith("# mine\n")


@pytest.mark.parametrize("quiet", [False, True])
def test_the_yaml_logging_beta_warning_is_silenced_only_by_the_launchers_environment(
    tmp_path: Path, quiet: bool
) -> None:
    """Every run process opens the instance and its JSON log handler; Dagster warns there."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_bytes((ROOT / "dagster.yaml").read_bytes())
    env = {**_new_shell_env(), "DAGSTER_HOME": str(home)}
    if quiet:
        _, env = dev_command(home, [])
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from dagster import DagsterInstance; DagsterInstance.get().get_handlers()",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert ("yaml-defined logging" in done.stderr) is not quiet, done.stderr


def test_without_a_dagster_yaml_to_copy_dev_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An install without the project's files (a wheel) and an empty DAGSTER_HOME."""
    from gitlab_es_pipeline import launcher
    from gitlab_es_pipeline.cli import main

    monkeypatch.setattr(launcher, "PROJECT", tmp_path / "no-project")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert main(["dev"]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("gitlab-es-pipeline dev: ") and "put a dagster.yaml there" in error
