"""deploy/helm/values.yaml as Dagster's Helm chart turns it into what runs on Kubernetes,
checked with Dagster's own code: the run pod's Job built by dagster-k8s's K8sRunLauncher, and
the instance config loaded by Dagster's own config check.

There is no `helm` binary or cluster here, and the chart is on no package registry this
machine reaches, so the few chart templates that matter are modelled below, from their source
in Dagster's repository (github.com/dagster-io/dagster, helm/dagster/): each function names
the template whose rendering it repeats, for what our values set. Everything after the
rendering is Dagster's own code: dagster-k8s's launcher merges the code location's container
context over its own config and builds the Job, and Dagster loads and checks the instance.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance, instance_for_test
from dagster._config import process_config
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.launcher import LaunchRunContext
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.test_utils import create_run_for_test
from dagster_k8s import K8sRunLauncher

from gitlab_es_pipeline_tests.postgres import TempPostgres
from gitlab_es_pipeline_tests.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
VALUES_FILE = ROOT / "deploy" / "helm" / "values.yaml"
# The README's command: `helm upgrade --install dagster dagster/dagster ...`.
RELEASE = "dagster"
NAMESPACE = "gitlab-es"
ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"
JOB = "index_repository"

Values = dict[str, Any]


def _values() -> Values:
    return yaml.safe_load(VALUES_FILE.read_text())


# ---------------------------------------------------------------------------------------------
# The chart's rendering, for the parts this project relies on.


def _fullname(chart_name: str) -> str:
    """`dagster.fullname` (templates/helpers/_helpers.tpl, and the user-deployments subchart's
    templates/helpers/_helpers.tpl): the release name if it contains the chart's name, else
    `<release>-<chart>` (no name overrides in our values)."""
    return RELEASE if chart_name in RELEASE else f"{RELEASE}-{chart_name}"


def _global(values: Values) -> Values:
    return values.get("global") or {}


def _subchart(values: Values) -> Values:
    return values.get("dagster-user-deployments") or {}


def _subchart_service_account(values: Values) -> Values:
    """The subchart's `serviceAccount`, its own values.yaml's defaults (create: true, name: "",
    annotations: {}) under what ours set."""
    return {
        "create": True,
        "name": "",
        "annotations": {},
        **_subchart(values).get("serviceAccount", {}),
    }


def dagster_service_account_name(values: Values) -> str:
    """`dagster.serviceAccountName` (templates/helpers/_helpers.tpl): `global.serviceAccountName`,
    else `serviceAccount.name`, else the full name. The webserver's and the daemon's pods run
    as it, and the K8sRunLauncher's `service_account_name` in the instance is it
    (templates/helpers/instance/_run-launcher.tpl)."""
    service_account = values.get("serviceAccount") or {}
    return (
        _global(values).get("serviceAccountName")
        or service_account.get("name")
        or _fullname("dagster")
    )


def user_deployments_service_account_name(values: Values) -> str:
    """`dagsterUserDeployments.serviceAccountName` (charts/dagster-user-deployments/templates/
    helpers/_helpers.tpl): `global.serviceAccountName`, else the subchart's
    `serviceAccount.name`, else `<full name>-user-deployments`."""
    return (
        _global(values).get("serviceAccountName")
        or _subchart_service_account(values)["name"]
        or f"{_fullname('dagster-user-deployments')}-user-deployments"
    )


def service_accounts(values: Values) -> dict[str, dict[str, str]]:
    """The ServiceAccounts the release creates, by name, with their annotations:
    templates/serviceaccount.yaml (when `serviceAccount.create`), the subchart's
    templates/serviceaccount.yaml (when its `serviceAccount.create` and no
    `global.serviceAccountName`) and templates/serviceaccount_deployments.yaml (a deployment's
    own `serviceAccount` with a name and `create`)."""
    accounts: dict[str, dict[str, str]] = {}
    parent = {"create": True, "annotations": {}, **(values.get("serviceAccount") or {})}
    if parent["create"]:
        accounts[dagster_service_account_name(values)] = dict(parent["annotations"] or {})
    subchart = _subchart_service_account(values)
    if subchart["create"] and not _global(values).get("serviceAccountName"):
        accounts[user_deployments_service_account_name(values)] = dict(
            subchart["annotations"] or {}
        )
    for deployment in _subchart(values).get("deployments", []):
        own = deployment.get("serviceAccount") or {}
        if own.get("name") and own.get("create"):
            accounts[own["name"]] = dict(own.get("annotations") or {})
    return accounts


def code_server_service_account(values: Values, deployment: Values) -> str:
    """The code server pod's `serviceAccountName` (charts/dagster-user-deployments/templates/
    deployment-user.yaml): the deployment's own `serviceAccount.name`, else the subchart's."""
    own = deployment.get("serviceAccount") or {}
    return own["name"] if "name" in own else user_deployments_service_account_name(values)


def container_context(values: Values, deployment: Values) -> dict[str, Any]:
    """What the code server is started with: deployment-user.yaml sets
    DAGSTER_CLI_API_GRPC_CONTAINER_CONTEXT (read by `dagster api grpc` as --container-context)
    to `dagsterUserDeployments.k8sContainerContext` (the subchart's helpers/_helpers.tpl) as
    JSON, when `includeConfigInLaunchedRuns.enabled`. Its `service_account_name` is always
    `dagsterUserDeployments.serviceAccountName`."""
    assert deployment.get("includeConfigInLaunchedRuns", {"enabled": True})["enabled"]
    k8s: dict[str, Any] = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [
            f"{_fullname('dagster-user-deployments')}-{deployment['name']}-user-env",
            *(m["name"] for m in deployment.get("envConfigMaps", []) if "name" in m),
        ],
    }
    if deployment.get("envSecrets"):
        k8s["env_secrets"] = [s["name"] for s in deployment["envSecrets"] if "name" in s]
    for key, name in (("volumeMounts", "volume_mounts"), ("volumes", "volumes")):
        if deployment.get(key):
            k8s[name] = deployment[key]
    for key in ("labels", "resources"):
        if deployment.get(key):
            k8s[key] = deployment[key]
    k8s["namespace"] = NAMESPACE
    k8s["service_account_name"] = user_deployments_service_account_name(values)
    if isinstance(deployment.get("env"), list) and deployment["env"]:
        k8s["env"] = deployment["env"]
    # `| fromYaml | toJson`, then json.loads in `dagster api grpc`.
    return json.loads(json.dumps({"k8s": k8s}))


def run_launcher_config(values: Values) -> dict[str, Any]:
    """The instance's `run_launcher.config` (templates/helpers/instance/_run-launcher.tpl, the
    K8sRunLauncher), for what our values set; the chart's defaults for the rest
    (`loadInclusterConfig: true`, `dagsterHome` /opt/dagster/dagster_home, no
    `global.postgresqlSecretName`)."""
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    config: dict[str, Any] = {
        "load_incluster_config": launcher.get("loadInclusterConfig", True),
        "job_namespace": launcher.get("jobNamespace") or NAMESPACE,
        "service_account_name": dagster_service_account_name(values),
        "dagster_home": _global(values).get("dagsterHome") or "/opt/dagster/dagster_home",
        "instance_config_map": f"{_fullname('dagster')}-instance",
        "postgres_password_secret": _global(values).get("postgresqlSecretName")
        or f"{_fullname('dagster')}-postgresql-secret",
    }
    if launcher.get("envSecrets"):
        config["env_secrets"] = [s["name"] for s in launcher["envSecrets"] if "name" in s]
    run_k8s_config = launcher.get("runK8sConfig") or {}
    keys = {
        "containerConfig": "container_config",
        "podSpecConfig": "pod_spec_config",
        "podTemplateSpecMetadata": "pod_template_spec_metadata",
        "jobSpecConfig": "job_spec_config",
        "jobMetadata": "job_metadata",
    }
    if run_k8s_config:
        config["run_k8s_config"] = {
            keys[key]: value for key, value in run_k8s_config.items() if value
        }
    return config


def run_coordinator_block(values: Values, *, fixed_chart: bool) -> dict[str, Any]:
    """The instance's `run_coordinator` (templates/helpers/instance/_run-coordinator.tpl) for
    a QueuedRunCoordinator, from what our values set under `queuedRunCoordinator` (the chart's
    other defaults render keys that are not in question here).

    Before the fix for dagster-io/dagster#33225 the template always wrote
    `max_concurrent_runs` (-1 when unset); with it (Dagster's chart test
    `test_concurrency_with_defaults_user_scenario`, helm/dagster/schema/schema_tests/
    test_concurrency.py), only when `concurrency.enabled` is off or the value is set."""
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"
    queued = coordinator["config"]["queuedRunCoordinator"]
    concurrency_enabled = bool((values.get("concurrency") or {}).get("enabled"))
    config: dict[str, Any] = {}
    max_runs = queued.get("maxConcurrentRuns")
    if not fixed_chart or not concurrency_enabled or max_runs is not None:
        config["max_concurrent_runs"] = -1 if max_runs is None else max_runs
    if queued.get("tagConcurrencyLimits"):
        config["tag_concurrency_limits"] = queued["tagConcurrencyLimits"]
    if queued.get("dequeueIntervalSeconds"):
        config["dequeue_interval_seconds"] = queued["dequeueIntervalSeconds"]
    block: dict[str, Any] = {
        "module": "dagster.core.run_coordinator",
        "class": "QueuedRunCoordinator",
    }
    if config:
        block["config"] = config
    return block


def concurrency_block(values: Values) -> dict[str, Any] | None:
    """The instance's `concurrency` (templates/configmap-instance.yaml renders
    templates/helpers/instance/_concurrency.tpl only when `concurrency.enabled`), with the
    template's own refusals of limits set twice."""
    concurrency = values.get("concurrency") or {}
    if not concurrency.get("enabled"):
        return None
    pools = concurrency.get("pools") or {}
    runs = concurrency.get("runs") or {}
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    for key, set_twice in (
        ("maxConcurrentRuns", lambda v: v.get("maxConcurrentRuns") is not None),
        ("tagConcurrencyLimits", lambda v: bool(v.get("tagConcurrencyLimits"))),
    ):
        if set_twice(runs) and set_twice(queued):
            raise AssertionError(
                f"helm template fails: Cannot set both concurrency.runs.{key} and "
                f"dagsterDaemon.runCoordinator.config.queuedRunCoordinator.{key}"
            )
    block: dict[str, Any] = {}
    rendered_pools = {
        name: pools[key]
        for key, name in (
            ("defaultLimit", "default_limit"),
            ("granularity", "granularity"),
            ("opGranularityRunBuffer", "op_granularity_run_buffer"),
        )
        if pools.get(key) is not None
    }
    if rendered_pools:
        block["pools"] = rendered_pools
    rendered_runs: dict[str, Any] = {}
    if runs.get("maxConcurrentRuns") is not None:
        rendered_runs["max_concurrent_runs"] = runs["maxConcurrentRuns"]
    if runs.get("tagConcurrencyLimits"):
        rendered_runs["tag_concurrency_limits"] = [
            {
                "key": t["key"],
                **({"value": t["value"]} if t.get("value") else {}),
                "limit": t["limit"],
            }
            for t in runs["tagConcurrencyLimits"]
        ]
    if rendered_runs:
        block["runs"] = rendered_runs
    return block


def storage_block(values: Values, postgres: TempPostgres, database: str) -> dict[str, Any]:
    """The instance's `storage` (templates/helpers/instance/_postgresql.tpl) with our values'
    user, scheme and port block, pointed at the test's real PostgreSQL server (no TLS here,
    so without the values' `sslmode: require`)."""
    postgresql = values["postgresql"]
    assert postgresql["enabled"] is False
    return {
        "postgres": {
            "postgres_db": {
                "username": postgres.user,
                "password": {"env": "DAGSTER_PG_PASSWORD"},
                "hostname": "127.0.0.1",
                "db_name": database,
                "port": postgres.port,
                "params": {},
                "scheme": postgresql["postgresqlScheme"],
            }
        }
    }


# ---------------------------------------------------------------------------------------------
# Point 8 of issue 28: one annotated service account for every Dagster pod, run pods included.


class _RecordingBatchApi:
    """Kubernetes' BatchV1Api as far as the launcher calls it: keeps the Job it is given."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, Any]] = []

    def create_namespaced_job(self, body: Any, namespace: str, **_: Any) -> Any:
        self.jobs.append((namespace, body))
        return body


def _launched_job(values: Values, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    """The Job dagster-k8s's K8sRunLauncher creates for a run of the code location, from the
    launcher config the chart writes into the instance and the container context the code
    server reports with each run."""
    import dagster_k8s.launcher

    # In a cluster the launcher reads the pod's own service-account token; here nothing is sent.
    monkeypatch.setattr(dagster_k8s.launcher, "load_kubernetes_config", lambda **_: None)
    processed = process_config(K8sRunLauncher.config_type(), run_launcher_config(values))
    assert processed.success and processed.value is not None, processed.errors
    batch_api = _RecordingBatchApi()
    launcher = K8sRunLauncher(
        k8s_client_batch_api=batch_api, k8s_client_core_api=object(), **processed.value
    )
    (deployment,) = _subchart(values)["deployments"]
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    origin = JobPythonOrigin(
        job_name=JOB,
        repository_origin=RepositoryPythonOrigin(
            executable_path=sys.executable,
            code_pointer=ModuleCodePointer("gitlab_es_pipeline.definitions", "defs"),
            container_image=image,
            entry_point=["dagster"],
            container_context=container_context(values, deployment),
        ),
    )
    with instance_for_test() as instance:
        launcher.register_instance(instance)
        run = create_run_for_test(instance, job_name=JOB, job_code_origin=origin)
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    ((namespace, job),) = batch_api.jobs
    return namespace, job


def test_every_dagster_pod_runs_as_the_one_annotated_service_account(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The S3 bucket (Parquet, step logs) is reached with the AWS role of the service
    account's `eks.amazonaws.com/role-arn` annotation: the webserver and the daemon, the code
    server, and each run's pod (the Job dagster-k8s builds, where the code location's
    container context overrides the launcher's account) must all run as that account."""
    values = _values()
    annotated = {
        name
        for name, annotations in service_accounts(values).items()
        if annotations.get(ROLE_ANNOTATION)
    }
    assert len(annotated) == 1, service_accounts(values)
    (account,) = annotated
    (deployment,) = _subchart(values)["deployments"]
    namespace, job = _launched_job(values, monkeypatch)
    pod = job.spec.template.spec
    assert {
        "webserver and daemon": dagster_service_account_name(values),
        "code server": code_server_service_account(values, deployment),
        "run pod": pod.service_account_name,
    } == dict.fromkeys(("webserver and daemon", "code server", "run pod"), account)
    # The rest of the Job is the values' too: the run pod gets the secrets, the image the code
    # server reports, and goes away a day after it finished.
    assert namespace == NAMESPACE
    (container,) = pod.containers
    assert container.image == "registry.example.com/gitlab-es-pipeline:0.1.0"
    secrets = {source.secret_ref.name for source in container.env_from if source.secret_ref}
    assert "gitlab-es-pipeline-secrets" in secrets
    env = {variable.name: variable.value for variable in container.env}
    assert env["PARQUET_STORAGE_URL"].startswith("s3://")
    assert job.spec.ttl_seconds_after_finished == 86400


# ---------------------------------------------------------------------------------------------
# The `concurrency` block: the instance the chart renders from the values, loaded by Dagster.


@pytest.fixture
def chart_instance_home(
    tmp_path: Path, postgres: TempPostgres, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A $DAGSTER_HOME with the storage part of the chart's dagster.yaml on a fresh database
    of the test's PostgreSQL server; the test adds the blocks in question and writes it."""
    database = f"chart{os.getpid()}{free_port()}"
    postgres.new_database(database)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "not-checked-by-trust-auth")
    yield tmp_path, {"storage": storage_block(_values(), postgres, database)}


def _load(home: Path, instance_yaml: Mapping[str, Any]) -> DagsterInstance:
    # A block the chart leaves out (`concurrency` when not enabled) is no key at all.
    blocks = {key: block for key, block in instance_yaml.items() if block is not None}
    (home / "dagster.yaml").write_text(yaml.safe_dump(blocks))
    return DagsterInstance.from_config(str(home))


def test_the_chart_with_the_fix_for_33225_renders_an_instance_dagster_loads(
    chart_instance_home: tuple[Path, dict[str, Any]],
) -> None:
    home, instance_yaml = chart_instance_home
    values = _values()
    instance_yaml["run_coordinator"] = run_coordinator_block(values, fixed_chart=True)
    instance_yaml["concurrency"] = concurrency_block(values)
    with _load(home, instance_yaml) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert instance.run_coordinator.dequeue_interval_seconds == 1
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config.max_concurrent_runs == 20
        (limit,) = concurrency.run_queue_config.tag_concurrency_limits
        assert limit == {
            "key": "dagster/partition",
            "value": {"applyLimitPerUniqueValue": True},
            "limit": 1,
        }
        assert concurrency.pool_config.default_pool_limit == 10


def test_a_chart_without_the_fix_renders_an_instance_every_dagster_process_refuses(
    chart_instance_home: tuple[Path, dict[str, Any]],
) -> None:
    """Why deploy/README.md and docs/operations.md ask for a chart with the fix: the older
    run-coordinator template adds `max_concurrent_runs: -1` beside `concurrency > runs`."""
    home, instance_yaml = chart_instance_home
    values = _values()
    instance_yaml["run_coordinator"] = run_coordinator_block(values, fixed_chart=False)
    instance_yaml["concurrency"] = concurrency_block(values)
    assert instance_yaml["run_coordinator"]["config"]["max_concurrent_runs"] == -1
    with pytest.raises(
        DagsterInvalidConfigError, match="incompatible with the `concurrency > runs`"
    ):
        _load(home, instance_yaml)


def test_with_an_older_chart_the_documented_fallback_keeps_the_run_limits(
    chart_instance_home: tuple[Path, dict[str, Any]],
) -> None:
    """docs/operations.md's way out for a chart without the fix: the run limits under the
    run coordinator and `concurrency.enabled: false` (pool limits then set per pool with
    `dagster instance concurrency set`)."""
    home, instance_yaml = chart_instance_home
    values = _values()
    runs = values["concurrency"]["runs"]
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    queued.update(runs)
    values["concurrency"]["enabled"] = False
    instance_yaml["run_coordinator"] = run_coordinator_block(values, fixed_chart=False)
    assert concurrency_block(values) is None
    with _load(home, instance_yaml) as instance:
        config = instance.get_concurrency_config().run_queue_config
        assert config.max_concurrent_runs == 20
        assert [t["key"] for t in config.tag_concurrency_limits] == ["dagster/partition"]


def test_every_helm_command_installs_the_chart_of_the_tested_dagster_release() -> None:
    """README.md, docs/operations.md and the values' own comment install the chart of the
    Dagster release constraints.txt pins (the one the tests ran with and the image installs),
    never a range such as `1.13.x`, and say what a host without internet access adds."""
    pin = re.search(r"^dagster==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    assert pin
    for path in (ROOT / "README.md", ROOT / "docs" / "operations.md", VALUES_FILE):
        text = path.read_text()
        commands = re.findall(
            r"helm (?:upgrade --install|template) dagster dagster/dagster\b[^\n]*", text
        )
        assert commands, path
        for command in commands:
            version = re.search(r"--version (\S+)", command)
            assert version and version.group(1) == pin.group(1), (path, command)
        assert "--skip-schema-validation" in text, path
        assert "33225" in text, path
