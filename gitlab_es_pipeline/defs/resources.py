"""Dagster resources: configuration from the environment, clients built from it."""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any, overload
from urllib.parse import urlsplit

from dagster import ConfigurableResource, EnvVar, get_dagster_logger
from pydantic import Field, field_validator, model_validator

from gitlab_es_pipeline.clients.elasticsearch import LineIndex
from gitlab_es_pipeline.clients.engines import ENGINE_SETTINGS, Connection, SearchEngine, connect
from gitlab_es_pipeline.clients.gitlab import GitLabSource
from gitlab_es_pipeline.core.filtering import (
    DEFAULT_EXCLUDED_PATHS,
    DEFAULT_MAX_FILE_BYTES,
    compile_globs,
)
from gitlab_es_pipeline.core.lines import DEFAULT_MAX_LINE_CHARS

DEFAULT_INDEX = "gitlab-lines"


# Validation errors name the field and the problem, never the value given: it may be a secret.
_HIDE_INPUT = {**ConfigurableResource.model_config, "hide_input_in_errors": True}


class GitLabResource(ConfigurableResource):
    """The GitLab instance to index. The token needs read_api and read_repository."""

    model_config = _HIDE_INPUT  # type: ignore[assignment]

    url: str = Field(description="Base URL of the GitLab instance, e.g. https://gitlab.example.com")
    token: str = Field(description="Personal, group or project access token (GITLAB_TOKEN)")
    groups: str = Field(
        default="",
        description="Comma-separated group full paths; discovery is limited to their projects, "
        "subgroups included. Empty: every project the token can see.",
    )
    request_timeout_seconds: float = Field(default=60.0)
    max_retries: int = Field(default=10, description="Retries of a 429/5xx answer per request")
    verify_tls: bool = Field(
        default=True, description="Check GitLab's certificate (off only with a logged warning)"
    )
    ca_bundle: str = Field(
        default="", description="CA bundle (PEM file) to check GitLab's certificate against"
    )
    archive_format: str = Field(default="tar.gz", description="tar.gz (less traffic) or tar")
    archive_attempts: int = Field(
        default=3,
        ge=1,
        description="Archive downloads per run when one breaks off mid-body (files already "
        "read are not read again); gitlab.com allows 5 archive requests a minute per project",
    )
    archive_retry_seconds: float = Field(
        default=15.0, ge=0, description="Wait before the first new archive request (doubles)"
    )
    allow_insecure_http: bool = Field(
        default=False,
        description="Send the token over plain http:// to a host other than this one (a "
        "network you trust); refused otherwise, and warned about when allowed",
    )
    removal_guard_share: float = Field(
        default=0.10,
        ge=0,
        le=1,
        description="Discovery removes at most this share of the partitions at once; more "
        "needs a person's confirmation (run config allow_mass_removal)",
    )
    removal_guard_count: int = Field(
        default=2,
        ge=0,
        description="...or this many, when that is more (a small fleet, where 10 % is 1)",
    )

    @field_validator("url", mode="before")
    @classmethod
    def _url_with_scheme(cls, value: str) -> str:
        return _checked_url(value, "GITLAB_URL", "https://gitlab.example.com", api_suffix=True)

    @field_validator("token", mode="before")
    @classmethod
    def _token_given(cls, value: str) -> str:
        return _checked_secret(value, "GITLAB_TOKEN")

    @model_validator(mode="after")
    def _token_not_in_clear(self) -> GitLabResource:
        _refuse_credentials_in_clear(
            self.url, isinstance(self.token, str), self.allow_insecure_http, "GITLAB", "token"
        )
        return self

    def group_paths(self) -> list[str]:
        return [g.strip().strip("/") for g in self.groups.split(",") if g.strip().strip("/")]

    def source(self) -> GitLabSource:
        return GitLabSource(
            self.url,
            self.token,
            timeout=self.request_timeout_seconds,
            max_retries=self.max_retries,
            ssl_verify=_tls_verification("GitLab", self.verify_tls, self.ca_bundle),
        )


class IndexingResource(ConfigurableResource):
    """What gets indexed and how it is cut: the tunables of the line documents."""

    max_file_bytes: int = Field(default=DEFAULT_MAX_FILE_BYTES, description="Larger files skipped")
    max_line_chars: int = Field(
        default=DEFAULT_MAX_LINE_CHARS, description="Longer lines cut and flagged line_truncated"
    )
    excluded_paths: list[str] = Field(
        default=list(DEFAULT_EXCLUDED_PATHS),
        description="gitignore-like globs of paths never indexed",
    )
    row_group_lines: int = Field(default=8192, description="Lines per Parquet row group")
    progress_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How often a long step says in the run log how far it has got (0: always)",
    )
    max_files_fetched_alone: int = Field(
        default=100,
        description="An incremental run fetches up to this many changed files one by one; "
        "more, and it streams the archive instead",
    )
    keep_line_documents: bool = Field(
        default=True,
        description="Keep each repository's line_documents Parquet (a full copy of its "
        "changed source) after es_index wrote it; false drops it once the write succeeded: "
        "less source on disk, but es_index can no longer be re-executed alone from the UI and "
        "the documents are not there to inspect",
    )
    compare_max_files: int = Field(
        default=1000,
        description="GitLab's diff limit (max_diff_files): a comparison with this many files "
        "may be cut off, so the tree is listed instead",
    )

    def excluded_regex(self) -> re.Pattern[str] | None:
        return compile_globs(tuple(self.excluded_paths))


class ElasticsearchResource(ConfigurableResource):
    """The cluster and index that hold the line documents."""

    model_config = _HIDE_INPUT  # type: ignore[assignment]

    url: str = Field(description="Elasticsearch URL, e.g. https://es.example.com:9200")
    engine: str = Field(
        default="auto",
        description="elasticsearch, opensearch, or auto: as the cluster's root answer says",
    )
    api_key: str | None = Field(default=None, description="ELASTICSEARCH_API_KEY (preferred)")
    username: str | None = Field(default=None)
    password: str | None = Field(default=None)
    index: str = Field(default=DEFAULT_INDEX, description="Index or alias that searches use")
    bulk_max_bytes: int = Field(default=4 * 1024 * 1024, description="Bytes per _bulk request")
    bulk_max_docs: int = Field(default=10000, description="Documents per _bulk request")
    bulk_max_retries: int = Field(
        default=8, description="Retries of a refused _bulk request or of its rejected items"
    )
    bulk_initial_backoff_seconds: float = Field(
        default=1.0,
        gt=0,
        description="First wait before such a retry (doubles, with jitter, up to 60 s)",
    )
    bulk_workers: int = Field(
        default=2,
        ge=1,
        description="Concurrent _bulk requests per run (runs are limited by the "
        "elasticsearch pool; mind the cluster's write thread pool queue)",
    )
    request_timeout_seconds: float = Field(default=120.0)
    verify_certs: bool = Field(
        default=True,
        description="Check the cluster's certificate (off only with a logged warning)",
    )
    ca_certs: str = Field(
        default="", description="CA bundle (PEM file) to check the cluster's certificate against"
    )
    allow_insecure_http: bool = Field(
        default=False,
        description="Send the API key or password over plain http:// to a host other than "
        "this one (a network you trust); refused otherwise, and warned about when allowed",
    )

    @field_validator("url", mode="before")
    @classmethod
    def _url_with_scheme(cls, value: str) -> str:
        return _checked_url(value, "ELASTICSEARCH_URL", "https://es.example.com:9200")

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        if isinstance(value, str) and value not in ENGINE_SETTINGS:
            raise ValueError(f"ELASTICSEARCH_ENGINE must be one of {', '.join(ENGINE_SETTINGS)}")
        return value

    @model_validator(mode="after")
    def _credentials_not_in_clear(self) -> ElasticsearchResource:
        given = any(isinstance(v, str) and v for v in (self.api_key, self.password))
        _refuse_credentials_in_clear(
            self.url, given, self.allow_insecure_http, "ELASTICSEARCH", "API key or password"
        )
        return self

    def connection(self) -> Connection:
        return Connection(
            url=self.url,
            api_key=self.api_key or None,
            username=self.username or None,
            password=self.password,
            verify=_tls_verification("Elasticsearch", self.verify_certs, self.ca_certs),
            timeout=self.request_timeout_seconds,
        )

    def shown_url(self) -> str:
        """The URL as logs may show it: credentials in it left out."""
        return _without_userinfo(self.url)

    def search_engine(self) -> SearchEngine:
        """Elasticsearch or OpenSearch, as the cluster says (or ELASTICSEARCH_ENGINE)."""
        return connect(self.connection(), self.engine)

    def client(self) -> Any:
        """The engine's own Python client (elasticsearch-py or opensearch-py)."""
        return self.search_engine().client

    def line_index(self) -> LineIndex:
        return LineIndex(
            self.search_engine(),
            self.index,
            max_chunk_bytes=self.bulk_max_bytes,
            max_chunk_docs=self.bulk_max_docs,
            max_retries=self.bulk_max_retries,
            initial_backoff=self.bulk_initial_backoff_seconds,
            workers=self.bulk_workers,
        )


def _checked_url(value: str, variable: str, example: str, api_suffix: bool = False) -> str:
    """A malformed URL is refused when the resource is set up, in one sentence, not as a
    connection error deep in a run. (An EnvVar is checked once it is resolved.)"""
    if isinstance(value, EnvVar):
        return value
    parts = urlsplit(value.strip())
    shown = _without_userinfo(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{variable} must be a URL with a scheme, e.g. {example} (got {shown!r})")
    if api_suffix and parts.path.rstrip("/").endswith("/api/v4"):
        raise ValueError(f"{variable} is the base URL, without /api/v4 (got {shown!r})")
    return value.strip().rstrip("/")


def _without_userinfo(url: str) -> str:
    """A URL as it may be shown: `user:password@` in it becomes `***@`."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def is_loopback(host: str) -> bool:
    """A loopback address (127.0.0.0/8, ::1, ::ffff:127.x.y.z; bracketed or not) or the name
    `localhost`, judged by parsing the address: a name that merely starts like one
    (127.attacker.example) is an ordinary name, resolved by DNS. Names under .localhost
    (RFC 6761) are not taken: whether they resolve to loopback is up to the local resolver."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # Python < 3.13 says False for ::ffff:127.0.0.1
    return address.is_loopback


def _refuse_credentials_in_clear(
    url: object, credentials: bool, allowed: bool, prefix: str, what: str
) -> None:
    """Credentials over plain http:// cross the network readable by anyone on the path:
    refused unless the operator says the network is trusted (then warned about). Loopback
    traffic never leaves the machine."""
    if not isinstance(url, str) or not credentials:
        return
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "http" or is_loopback(host):
        return
    if not allowed:
        raise ValueError(
            f"{prefix}_URL is plain http:// to {host}: the {what} would cross the network "
            f"unencrypted. Use https://, or set {prefix}_ALLOW_INSECURE_HTTP=true if the "
            "network is yours alone"
        )
    get_dagster_logger().warning(
        f"{prefix}_ALLOW_INSECURE_HTTP: the {what} goes to {host} over plain http://"
    )


def _checked_secret(value: str, variable: str) -> str:
    """Never echoes the value."""
    if isinstance(value, EnvVar):
        return value
    if not value.strip():
        raise ValueError(f"{variable} is empty")
    if value != value.strip() or any(c.isspace() for c in value):
        raise ValueError(f"{variable} contains whitespace (a stray newline from a secret file?)")
    return value


def _tls_verification(service: str, verify: bool, ca_bundle: str) -> bool | str:
    """True (the system's CAs), a CA bundle's path, or False, which is said out loud."""
    if not verify:
        get_dagster_logger().warning(
            f"TLS certificate verification of {service} is OFF: its identity is not checked"
        )
        return False
    return ca_bundle or True


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    return default if not value else value not in ("0", "false", "no", "off")


@overload
def _optional_env(name: str, default: str) -> EnvVar | str: ...
@overload
def _optional_env(name: str, default: None = None) -> EnvVar | str | None: ...
def _optional_env(name: str, default: str | None = None) -> EnvVar | str | None:
    """EnvVar when the variable is set (its value stays out of the run config), else default."""
    return EnvVar(name) if os.environ.get(name) else default


def _set_in_env(**fields: str) -> dict[str, Any]:
    """Resource fields whose variables are set; the others keep the field's own default.

    The values are the variables' strings: the fields' validation converts them."""
    return {field: os.environ[name] for field, name in fields.items() if os.environ.get(name)}


def resources_from_env() -> dict[str, ConfigurableResource]:
    return {
        "gitlab": GitLabResource(
            url=EnvVar("GITLAB_URL"),
            token=EnvVar("GITLAB_TOKEN"),
            groups=_optional_env("GITLAB_GROUPS", ""),
            verify_tls=_flag("GITLAB_VERIFY_TLS", True),
            allow_insecure_http=_flag("GITLAB_ALLOW_INSECURE_HTTP", False),
            ca_bundle=os.environ.get("GITLAB_CA_BUNDLE", ""),
            **_set_in_env(
                removal_guard_share="DISCOVERY_REMOVAL_GUARD_SHARE",
                removal_guard_count="DISCOVERY_REMOVAL_GUARD_COUNT",
            ),
        ),
        "elasticsearch": ElasticsearchResource(
            url=EnvVar("ELASTICSEARCH_URL"),
            engine=os.environ.get("ELASTICSEARCH_ENGINE", "auto").strip().lower() or "auto",
            api_key=_optional_env("ELASTICSEARCH_API_KEY"),
            username=_optional_env("ELASTICSEARCH_USERNAME"),
            password=_optional_env("ELASTICSEARCH_PASSWORD"),
            index=_optional_env("ELASTICSEARCH_INDEX", DEFAULT_INDEX),
            verify_certs=_flag("ELASTICSEARCH_VERIFY_CERTS", True),
            allow_insecure_http=_flag("ELASTICSEARCH_ALLOW_INSECURE_HTTP", False),
            ca_certs=os.environ.get("ELASTICSEARCH_CA_CERTS", ""),
        ),
        "indexing": IndexingResource(keep_line_documents=_flag("KEEP_LINE_DOCUMENTS", True)),
    }
