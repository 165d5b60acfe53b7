"""deploy/: the compose file resolves, the image's entry points and files exist and load, the
production dagster.yaml loads against a real PostgreSQL, and the Helm values name only what
the image and the project provide.

No Docker engine is needed: `docker-compose config` (Debian's docker-compose package) only
reads files, and the image's commands are run here as they would run in the container.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, QueuedRunCoordinator
from dagster._core.scheduler.instigation import InstigatorType

from gitlab_es_pipeline_tests.postgres import TempPostgres
from gitlab_es_pipeline_tests.processes import free_port, stop

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DAGSTER_BIN = Path(sys.executable).parent


def _compose(*args: str, env_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed: apt-get install -y docker-compose")
    command = ["docker-compose", "-f", str(DEPLOY / "docker-compose.yml")]
    if env_file is not None:
        command += ["--env-file", str(env_file)]
    clean_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env=clean_env, cwd=DEPLOY
    )


def _env_example() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


@pytest.fixture(scope="module")
def compose() -> dict:
    result = _compose("config", env_file=DEPLOY / ".env.example")
    assert result.returncode == 0, result.stderr
    assert "$${" not in result.stdout, "a variable was left unresolved"
    return yaml.safe_load(result.stdout)


def test_compose_runs_the_five_services_with_health_checks_and_volumes(compose: dict) -> None:
    services = compose["services"]
    assert {"postgres", "elasticsearch", "code", "webserver", "daemon"} <= set(services)
    for name in ("postgres", "elasticsearch", "code", "webserver", "daemon"):
        # The code service's check is the image's own HEALTHCHECK (checked below).
        if name != "code":
            assert services[name]["healthcheck"]["test"], name
    mounts = {
        name: {v.split(":")[1] for v in service.get("volumes", [])}
        for name, service in services.items()
    }
    assert "/var/lib/postgresql/data" in mounts["postgres"]
    assert "/usr/share/elasticsearch/data" in mounts["elasticsearch"]
    # Runs execute in the code container: the Parquet files live there.
    assert "/opt/dagster/parquet" in mounts["code"]
    # Step logs are written by runs (code) and shown by the webserver.
    assert "/opt/dagster/logs" in mounts["code"] & mounts["webserver"]
    assert set(compose["volumes"]) >= {"postgres-data", "elasticsearch-data", "parquet"}


def test_compose_takes_secrets_from_the_env_file_and_gives_them_only_where_needed(
    compose: dict,
) -> None:
    example = _env_example()
    services = compose["services"]
    es = services["elasticsearch"]["environment"]
    assert es["xpack.security.enabled"] == "true"
    assert es["ELASTIC_PASSWORD"] == example["ELASTIC_PASSWORD"]
    code = services["code"]["environment"]
    assert code["GITLAB_TOKEN"] == example["GITLAB_TOKEN"]
    # The pipeline's own user, never the superuser, whose password only es-setup gets.
    assert code["ELASTICSEARCH_USERNAME"] == "gitlab_es_pipeline"
    assert code["ELASTICSEARCH_PASSWORD"] == example["ES_PIPELINE_PASSWORD"]
    assert example["ELASTIC_PASSWORD"] not in code.values()
    holders = {n for n, s in services.items() if "ELASTIC_PASSWORD" in s.get("environment", {})}
    assert holders == {"elasticsearch", "es-setup", "kibana-setup"}
    assert services["code"]["depends_on"]["es-setup"]["condition"] == (
        "service_completed_successfully"
    )
    assert code["DAGSTER_PG_PASSWORD"] == example["POSTGRES_PASSWORD"]
    for name in ("webserver", "daemon"):
        assert "GITLAB_TOKEN" not in services[name]["environment"], name
        assert "ELASTICSEARCH_PASSWORD" not in services[name]["environment"], name
    # Kibana only on request.
    assert services["kibana"]["profiles"] == ["kibana"]


def test_compose_makes_least_privilege_users_for_the_pipeline_and_for_search(
    compose: dict,
) -> None:
    """The roles es-setup puts, read back from the command the container runs."""
    import json
    import re

    command = compose["services"]["es-setup"]["command"][-1]
    bodies = {
        name: json.loads(body.replace("$$INDEX", "gitlab-lines").replace('\\"', '"'))
        for name, body in re.findall(r'put (\S+) "(\{.*?\})";', command)
    }
    writer = bodies["role/gitlab_es_pipeline_writer"]
    reader = bodies["role/gitlab_es_pipeline_reader"]
    for role in (writer, reader):
        assert role["cluster"] == []  # no cluster privilege at all
        (grant,) = role["indices"]
        assert grant["names"] == ["gitlab-lines", "gitlab-lines-*"]  # its index and versions
    assert set(writer["indices"][0]["privileges"]) == {
        "create_index",
        "manage",  # settings during a first load, mapping fields added in place, refresh
        "read",  # counts and the sweep's delete by query
        "write",  # documents indexed and deleted
        "view_index_metadata",
    }
    assert set(reader["indices"][0]["privileges"]) == {"read", "view_index_metadata"}
    assert bodies["user/gitlab_es_pipeline"]["roles"] == ["gitlab_es_pipeline_writer"]
    assert bodies["user/gitlab_es_search"]["roles"] == ["gitlab_es_pipeline_reader"]


def test_compose_refuses_to_run_without_the_passwords(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "\n".join(f"{k}={v}" for k, v in _env_example().items() if k != "POSTGRES_PASSWORD")
    )
    result = _compose("config", env_file=env_file)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def _dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def test_everything_the_image_copies_exists_and_the_compose_file_builds_it(compose: dict) -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [line for line in _dockerfile().splitlines() if line.startswith("COPY ")]
    copied = [source for line in copies for source in line.split()[1:-1]]
    # The image needs the project's metadata, its package and the instance and workspace files.
    needed = {
        "pyproject.toml",
        "constraints.txt",
        "gitlab_es_pipeline",
        "deploy/dagster.yaml",
        "deploy/workspace.yaml",
    }
    assert needed <= set(copied), copied
    for source in copied:
        assert (ROOT / source).exists(), source
        # ... and is sent to the builder (the build context leaves out .venv, tests).
        parts = Path(source).parts
        sent = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        assert not any(fnmatch.fnmatch(p, pattern) for p in sent for pattern in ignored)
    build = compose["services"]["code"]["build"]
    assert Path(build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


# The Elasticsearch client is left to the install command: its major must match the cluster's.
_ES_CLIENT = {"elasticsearch", "elastic-transport"}
# dagster-k8s is in the dev extra too (test_kubernetes.py builds the run Job with it).
_IMAGE_ONLY = {"dagster-aws"}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _constraints() -> dict[str, str]:
    """constraints.txt as {package: version}: exact pins only."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            name, sep, version = requirement.partition("==")
            assert sep and re.fullmatch(r"[\w.]+", version.strip()), line
            pins[_normalized(name.strip())] = version.strip()
    return pins


def _pip_installs(script: str) -> list[str]:
    """The `pip install` commands of a shell script or Dockerfile (lines joined), but pip's
    own upgrade."""
    lines = script.replace("\\\n", " ").splitlines()
    return [
        line
        for line in lines
        if re.search(r"\bpip install\b", line)
        and not line.lstrip().startswith("#")
        and "--upgrade pip" not in line
    ]


def _needed(project: str, extras: set[str]) -> set[str]:
    """Every installed distribution the project needs with these extras, its own included."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    found: dict[str, set[str]] = {}
    todo = [(project, set(extras))]
    while todo:
        name, wanted = todo.pop()
        try:
            dist = distribution(name)
        except PackageNotFoundError:  # a requirement not for this platform, or missing
            continue
        key = _normalized(dist.metadata["Name"])
        if key in found and wanted <= found[key]:
            continue
        found[key] = found.get(key, set()) | wanted
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(
                req.marker.evaluate({"extra": extra}) for extra in wanted or {""}
            ):
                todo.append((req.name, set(req.extras)))
    return set(found)


def test_ci_and_the_image_install_with_the_constraints_the_tests_ran_with() -> None:
    """CI and the image install with constraints.txt, whose Dagster is the one installed here:
    the Dagster that the tests ran with is the Dagster the image ships."""
    from importlib.metadata import distributions, version

    ci = _pip_installs((ROOT / ".ci" / "run").read_text())
    image = _pip_installs(_dockerfile())
    assert len(ci) == 2 and len(image) == 1, (ci, image)  # .venv and .venv-es8; the image
    for command in ci + image:
        assert "-c constraints.txt" in command, command
    # The image copies the file into its working directory before installing.
    dockerfile = _dockerfile()
    copy = re.search(r"^COPY .*\bconstraints\.txt\b.* \./$", dockerfile, re.MULTILINE)
    install = re.search(r"^RUN pip install\b", dockerfile, re.MULTILINE)
    assert copy and install and copy.start() < install.start()
    pins = _constraints()
    installed = {_normalized(d.metadata["Name"]): d.version for d in distributions()}
    # Every Dagster package installed here, and its SQL toolkit, pinned at its version.
    family = {name for name in installed if name.startswith("dagster")} | {"sqlalchemy", "alembic"}
    assert {"dagster", "dagster-webserver", "dagster-postgres", "dagster-graphql"} <= family
    assert {"dagster-pipes", "dagster-shared"} <= family
    assert {name: pins.get(name) for name in family} == {name: installed[name] for name in family}
    assert pins["dagster"] == version("dagster")
    # The image's own Dagster libraries are of the same release as dagster-postgres.
    assert {pins[name] for name in _IMAGE_ONLY} == {version("dagster-postgres")}
    # A full freeze: every package the project needs (its extras' too) is pinned at the
    # version installed here, but the Elasticsearch client, which is not pinned at all (an
    # 8.x client installs with the same file); nothing else is pinned.
    needed = _needed("gitlab_es_pipeline", {"opensearch", "dev"}) - {"gitlab-es-pipeline"}
    assert needed - set(pins) == _ES_CLIENT
    assert set(pins) - needed == _IMAGE_ONLY
    assert {name: pins[name] for name in needed - _ES_CLIENT} == {
        name: installed[name] for name in needed - _ES_CLIENT
    }


def _instruction(name: str) -> list[str]:
    """An exec-form instruction of the Dockerfile (CMD, or HEALTHCHECK's CMD) as argv."""
    text = _dockerfile().replace("\\\n", " ")
    found = re.search(rf"^{name}\b.*?(\[.*\])\s*$", text, re.MULTILINE)
    assert found, name
    return yaml.safe_load(found.group(1))


@pytest.fixture
def deploy_home(tmp_path: Path, postgres: TempPostgres) -> Iterator[dict[str, str]]:
    """The image's environment: deploy/dagster.yaml as $DAGSTER_HOME/dagster.yaml, a fresh
    PostgreSQL database, the DAGSTER_PG_* variables that compose sets."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    database = f"deploy{os.getpid()}{free_port()}"
    postgres.new_database(database)
    env = {
        "PATH": f"{DAGSTER_BIN}:{os.environ['PATH']}",
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(postgres.port),
        "DAGSTER_PG_USER": postgres.user,
        "DAGSTER_PG_PASSWORD": "not-checked-by-trust-auth",
        "DAGSTER_PG_DB": database,
        "DAGSTER_DISABLE_TELEMETRY": "yes",
        "GITLAB_URL": "https://gitlab.example.com",
        "GITLAB_TOKEN": "glpat-deploy-test",
        "ELASTICSEARCH_URL": "http://127.0.0.1:9",
        "PARQUET_STORAGE_URL": str(tmp_path / "parquet"),
    }
    yield env


def test_the_deploy_instance_loads_on_postgres_with_its_limits(deploy_home: dict[str, str]) -> None:
    info = subprocess.run(
        ["dagster", "instance", "info"], capture_output=True, text=True, env=deploy_home
    )
    assert info.returncode == 0, info.stderr
    assert "run_storage: PostgresRunStorage" in info.stdout
    assert "event_log_storage: PostgresEventLogStorage" in info.stdout
    old = {k: os.environ.get(k) for k in deploy_home}
    os.environ.update(deploy_home)
    try:
        with DagsterInstance.get() as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
            assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
            assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
            assert instance.run_coordinator.dequeue_interval_seconds == 1
            concurrency = instance.get_concurrency_config()
            assert concurrency.run_queue_config.max_concurrent_runs == 4
            limits = concurrency.run_queue_config.tag_concurrency_limits
            assert limits[0]["key"] == "dagster/partition" and limits[0]["limit"] == 1
            assert concurrency.pool_config.default_pool_limit == 4
            assert instance.run_monitoring_enabled
            assert instance.run_monitoring_max_runtime_seconds == 10800
            assert instance.compute_log_manager.__class__.__name__ == "LocalComputeLogManager"
            retention = instance.get_tick_retention_settings(InstigatorType.SENSOR)
            assert {status.value: days for status, days in retention.items()}["SKIPPED"] == 7
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_the_image_quiets_the_launchers_warnings_and_no_others(
    deploy_home: dict[str, str],
) -> None:
    from gitlab_es_pipeline.cli.dev import QUIET

    found = re.search(r'PYTHONWARNINGS="([^"]*)"', _dockerfile())
    assert found
    entries = found.group(1).split(",")
    assert set(entries) <= set(QUIET) and "yaml-defined logging" in found.group(1)
    # A run process of the image loads deploy/dagster.yaml's log handlers: the beta warning
    # shows without the image's PYTHONWARNINGS, and not with it.
    probe = "from dagster import DagsterInstance; DagsterInstance.get().get_handlers()"
    for warnings in ("", found.group(1)):
        done = subprocess.run(
            [sys.executable, "-c", probe],
            env={**deploy_home, "PYTHONWARNINGS": warnings},
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert ("yaml-defined logging" in done.stderr) is not bool(warnings), done.stderr


def test_the_image_serves_the_definitions_the_workspace_names(
    deploy_home: dict[str, str], tmp_path: Path
) -> None:
    """The image's CMD starts the code server; its HEALTHCHECK passes; the webserver's and
    daemon's workspace file loads the code location from it."""
    port = free_port()
    command = [str(port) if arg == "4000" else arg for arg in _instruction("CMD")]
    command = [a if a != "0.0.0.0" else "127.0.0.1" for a in command]
    log = tmp_path / "code-server.log"
    # Its output goes to a file: an unread pipe fills up and stalls the server.
    with log.open("wb") as sink:
        server = subprocess.Popen(command, env=deploy_home, stdout=sink, stderr=subprocess.STDOUT)
    try:
        health = [str(port) if arg == "4000" else arg for arg in _instruction("HEALTHCHECK")]
        deadline = time.monotonic() + 120
        while True:
            check = subprocess.run(health, capture_output=True, text=True, env=deploy_home)
            if check.returncode == 0:
                break
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, check.stderr
            time.sleep(1)
        workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
        (location,) = workspace["load_from"]
        assert location["grpc_server"]["host"] == "code"  # the compose service
        location["grpc_server"].update(host="127.0.0.1", port=port)
        local = tmp_path / "workspace.yaml"
        local.write_text(yaml.safe_dump(workspace))
        validate = subprocess.run(
            ["dagster", "definitions", "validate", "-w", str(local)],
            capture_output=True,
            text=True,
            env=deploy_home,
        )
        assert validate.returncode == 0, validate.stdout + validate.stderr
        assert "gitlab_es_pipeline" in validate.stdout + validate.stderr
    finally:
        stop(server)


def test_helm_values_name_only_what_the_image_and_the_project_provide() -> None:
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "gitlab_es_pipeline.definitions"]
    assert _instruction("CMD")[-2:] == deployment["dagsterApiGrpcArgs"]  # as the image runs it
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", (ROOT / "README.md").read_text()))
    for variable in deployment["env"]:
        assert variable["name"] in documented, variable["name"]
    # Secrets go to the run pods too, by name.
    secret = deployment["envSecrets"][0]["name"]
    assert values["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"][0]["name"] == secret
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False
    # The same one-run-per-repository rule as dagster.yaml.
    project = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    ours = project["concurrency"]["runs"]["tag_concurrency_limits"]
    theirs = values["concurrency"]["runs"]["tagConcurrencyLimits"]
    assert [(t["key"], t["value"], t["limit"]) for t in theirs] == [
        (t["key"], t["value"], t["limit"]) for t in ours
    ]


def test_run_executor_from_the_environment() -> None:
    code = (
        "from gitlab_es_pipeline.definitions import defs;"
        "print(defs.resolve_job_def('index_repository').executor_def.name)"
    )

    def executor(value: str | None) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ["PATH"]}
        if value is not None:
            env["RUN_EXECUTOR"] = value
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
        )

    assert executor(None).stdout.strip() == "in_process"
    assert executor("multiprocess").stdout.strip() == "multiprocess"
    wrong = executor("celery")
    assert wrong.returncode != 0 and "RUN_EXECUTOR" in wrong.stderr


# Keys the official chart's schema (helm/dagster/schema, pydantic models with extra="forbid")
# allows in the blocks this project sets; a misspelt key is refused by `helm install`.
_CHART_KEYS = {
    "concurrency": {"enabled", "pools", "runs"},
    "concurrency.pools": {"defaultLimit", "granularity", "opGranularityRunBuffer"},
    "concurrency.runs": {"maxConcurrentRuns", "tagConcurrencyLimits"},
    "dagsterDaemon.runCoordinator": {"enabled", "type", "config"},
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator": {
        "maxConcurrentRuns",
        "tagConcurrencyLimits",
        "dequeueIntervalSeconds",
        "dequeueNumWorkers",
        "dequeueUseThreads",
    },
    "pythonLogs": {"pythonLogLevel", "managedPythonLoggers", "dagsterHandlerConfig"},
    "computeLogManager": {"type", "config"},
    "serviceAccount": {"create", "name", "annotations"},
    "global": {
        "postgresqlSecretName",
        "dagsterHome",
        "serviceAccountName",
        "celeryConfigSecretName",
        "dagsterInstanceConfigMap",
    },
}


def _at(values: dict, dotted: str) -> dict:
    for part in dotted.split("."):
        values = values[part]
    return values


def test_helm_values_give_the_chart_what_each_readme_promise_needs() -> None:
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    for block, allowed in _CHART_KEYS.items():
        assert set(_at(values, block)) <= allowed, block
    # The run cap and one run per repository: the chart renders `concurrency` into the
    # instance only when enabled (it is off by default).
    assert values["concurrency"]["enabled"] is True
    assert values["concurrency"]["runs"]["maxConcurrentRuns"] > 0
    # The queue looked at every second, as in the project's own dagster.yaml; the limits stay
    # under `concurrency` (Dagster refuses them in both places).
    queue = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queue == {"dequeueIntervalSeconds": 1}
    # Storage: the image's driver is psycopg2 (dagster-postgres requires it); the chart's
    # default scheme would ask SQLAlchemy 2 for psycopg 3, which is not installed.
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    from importlib.metadata import requires

    assert any(r.startswith("psycopg2") for r in requires("dagster-postgres") or [])
    dockerfile = _dockerfile()
    # The run launcher's run worker lives in the user-code image, of dagster's own release.
    assert re.search(r'"dagster-k8s>=0\.29,<0\.30"', dockerfile)
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    env = {e["name"]: e.get("value") for e in deployment["env"]}
    # An s3:// Parquet store needs s3fs in the image and AWS credentials in every run pod.
    if env["PARQUET_STORAGE_URL"].startswith("s3://"):
        assert '"s3fs' in dockerfile
        role = values["serviceAccount"]["annotations"].get("eks.amazonaws.com/role-arn")
        assert values["serviceAccount"]["create"] is True and role
    # The JSON-line run logs of the README: the same handler as deploy/dagster.yaml's, and
    # compute logs kept where the webserver reads them after a run pod is gone.
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    assert (
        values["pythonLogs"]["dagsterHandlerConfig"]
        == (instance["python_logs"]["dagster_handler_config"])
    )
    assert values["computeLogManager"]["type"] == "S3ComputeLogManager"
    assert values["computeLogManager"]["config"]["s3ComputeLogManager"]["bucket"]
    assert '"dagster-aws>=0.29,<0.30"' in dockerfile


def test_the_receiver_runs_beside_the_pipeline_in_compose_and_on_kubernetes() -> None:
    """Compose (`--profile hooks`) and deploy/helm/receiver.yaml: the command the CLI takes, the
    secret from the env file or a Secret and nowhere else in the receiver, a health check on
    the receiver's own /healthz, and the port GitLab posts to."""
    from gitlab_es_pipeline.cli.main import parser

    example = _env_example()
    result = _compose("--profile", "hooks", "config", env_file=DEPLOY / ".env.example")
    assert result.returncode == 0, result.stderr
    receiver = yaml.safe_load(result.stdout)["services"]["receiver"]
    assert receiver["profiles"] == ["hooks"]
    args = parser().parse_args(receiver["command"][1:])
    assert (args.command, args.host, args.port) == ("receiver", "0.0.0.0", 8765)
    assert receiver["environment"]["GITLAB_HOOK_SECRET"] == example["GITLAB_HOOK_SECRET"]
    assert "GITLAB_TOKEN" not in receiver["environment"]  # it never calls GitLab
    assert "/healthz" in " ".join(receiver["healthcheck"]["test"])
    assert any(str(p.get("target", p)).endswith("8765") for p in receiver["ports"])

    deployment, service = yaml.safe_load_all((DEPLOY / "helm" / "receiver.yaml").read_text())
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = parser().parse_args(container["command"][1:])
    assert (args.command, args.port) == ("receiver", container["ports"][0]["containerPort"])
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["GITLAB_HOOK_SECRET"]["valueFrom"]
    assert "value" not in env["GITLAB_HOOK_SECRET"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    selector = service["spec"]["selector"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # The image the chart's user deployment runs.
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    image = values["dagster-user-deployments"]["deployments"][0]["image"]
    assert container["image"] == f"{image['repository']}:{image['tag']}"
