"""The search engine behind the index: Elasticsearch 8/9 or OpenSearch 2/3, one interface.

The requests are the same on both (the same mapping, NDJSON bulk bodies, delete by query);
what differs is the Python client (elasticsearch-py takes keyword arguments and checks the
`X-Elastic-Product` header, opensearch-py takes `body=` as elasticsearch-py 7 did) and its
exceptions. Each engine here is a small class with the calls the pipeline makes; errors come
out as EngineError (the cluster answered) or EngineUnreachable (it did not).
"""

from __future__ import annotations

import re
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import requests
import urllib3

Engine = Literal["elasticsearch", "opensearch"]
ENGINE_SETTINGS = ("auto", "elasticsearch", "opensearch")

# OpenSearch gained the `wildcard` field type, which the mapping needs, in 2.15.
OPENSEARCH_MINIMUM = (2, 15)


class EngineError(Exception):
    """The cluster refused a request: its status, error type and reason."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(f"HTTP {status} {error}: {reason}")
        self.status = status
        self.error = error
        self.reason = reason


class EngineSetupError(EngineError):
    """The engine and this installation or configuration do not fit: trying again cannot help."""

    def __init__(self, error: str, reason: str) -> None:
        super().__init__(0, error, reason)


class EngineUnreachable(Exception):
    """No answer: connection refused, timed out, TLS failed."""


@dataclass(frozen=True)
class Connection:
    """How to reach the cluster; the same settings serve both engines."""

    url: str
    api_key: str | None = None
    username: str | None = None
    password: str | None = None
    verify: bool | str = True  # True (system CAs), a CA bundle's path, or False
    timeout: float = 120.0

    def __repr__(self) -> str:  # credentials never appear in logs or exceptions
        return f"Connection(url={self.url!r})"


# -- bulk responses, read by counting -----------------------------------------------------------


class AcceptedBulk(dict[str, Any]):
    """A bulk response whose items all succeeded, read by counting instead of decoding.

    Decoding the 10,000 items of a bulk response costs a microsecond each, as much as a
    tenth of all the CPU the pipeline spends per line; with no errors, all the writer needs
    is how many items got which status. `items` is still there, decoded on first access.
    """

    _ACTIONS = (b"index", b"create", b"update", b"delete")
    _STATUSES = (200, 201, 404)

    def __init__(self, raw: bytes) -> None:
        super().__init__(errors=False)
        self.raw = raw

    def __missing__(self, key: str) -> Any:
        import json

        decoded = json.loads(self.raw)
        self.update(decoded)
        return decoded[key]

    def status_counts(self) -> Counter[tuple[str, int]] | None:
        """(action, status) -> items, or None when the compact form is not recognised."""
        counts: Counter[tuple[str, int]] = Counter()
        for action in self._ACTIONS:
            for status in self._STATUSES:
                n = self.raw.count(b'{"%s":{"status":%d' % (action, status))
                if n:
                    counts[(action.decode(), status)] = n
        return counts if counts.total() == self.raw.count(b'"status":') else None


def accepted_bulk(data: bytes) -> AcceptedBulk | None:
    """The response undecoded when it is a bulk answer without errors, else None."""
    items_at = data.find(b'"items":[')
    if items_at != -1 and b'"errors":false' in data[:items_at]:
        return AcceptedBulk(data)
    return None


# -- the engines --------------------------------------------------------------------------------


class SearchEngine:
    """The calls the pipeline makes, as plain dicts in and out."""

    engine: Engine
    client: Any  # the library's own client

    def info(self) -> dict[str, Any]:
        raise NotImplementedError

    def index_exists(self, index: str) -> bool:
        raise NotImplementedError

    def get_mapping(self, index: str) -> dict[str, Any]:
        raise NotImplementedError

    def put_mapping(
        self,
        index: str,
        properties: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        raise NotImplementedError

    def create_index(self, index: str, body: dict[str, Any]) -> None:
        raise NotImplementedError

    def get_settings(self, index: str) -> dict[str, Any]:
        raise NotImplementedError

    def put_settings(self, index: str, settings: dict[str, Any]) -> None:
        raise NotImplementedError

    def bulk(self, index: str, body: bytes, filter_path: str) -> dict[str, Any]:
        raise NotImplementedError

    def refresh(self, index: str) -> None:
        raise NotImplementedError

    def count(self, index: str, query: dict[str, Any]) -> int:
        raise NotImplementedError

    def delete_by_query(self, index: str, query: dict[str, Any], **params: Any) -> dict[str, Any]:
        raise NotImplementedError

    def search(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


class ElasticsearchEngine(SearchEngine):
    engine: Engine = "elasticsearch"

    def __init__(self, connection: Connection) -> None:
        from elastic_transport import JsonSerializer, NdjsonSerializer
        from elasticsearch import Elasticsearch

        class BulkResponseSerializer(JsonSerializer):
            def loads(self, data: bytes) -> Any:
                return accepted_bulk(data) or super().loads(data)

        class BulkBodySerializer(NdjsonSerializer):
            """A body already built as bytes goes out as it is, not copied."""

            def dumps(self, data: Any) -> bytes:
                if isinstance(data, bytes) and data.endswith(b"\n"):
                    return data
                return super().dumps(data)

        auth: dict[str, Any] = {}
        if connection.api_key:
            auth["api_key"] = connection.api_key
        elif connection.username:
            auth["basic_auth"] = (connection.username, connection.password or "")
        self.client = Elasticsearch(
            connection.url,
            request_timeout=connection.timeout,
            retry_on_timeout=True,
            max_retries=3,
            serializers={
                JsonSerializer.mimetype: BulkResponseSerializer(),
                NdjsonSerializer.mimetype: BulkBodySerializer(),
            },
            **auth,
            **_tls_options(connection),
        )

    @contextmanager
    def _translated(self) -> Iterator[None]:
        from elastic_transport import TransportError
        from elasticsearch import ApiError, UnsupportedProductError

        try:
            yield
        except UnsupportedProductError:
            raise EngineSetupError(
                "unsupported_product",
                "the cluster does not say it is Elasticsearch (no X-Elastic-Product header); "
                "if it is OpenSearch, set ELASTICSEARCH_ENGINE=opensearch or leave it unset",
            ) from None
        except ApiError as exc:
            reason = _client_major_mismatch(exc) or str(exc.message)
            raise EngineError(exc.meta.status, str(exc.error), reason) from None
        except TransportError as exc:
            raise EngineUnreachable(str(exc)) from None

    def info(self) -> dict[str, Any]:
        with self._translated():
            return dict(self.client.info().body)

    def index_exists(self, index: str) -> bool:
        try:
            with self._translated():
                return bool(self.client.indices.exists(index=index))
        except EngineError as exc:
            if exc.status != 400:
                raise
        with self._translated():  # a HEAD answer has no body: ask again with GET to learn why
            self.client.indices.get(index=index)
        raise EngineError(400, "bad_request", f"HEAD {index} refused, GET allowed")

    def get_mapping(self, index: str) -> dict[str, Any]:
        with self._translated():
            return dict(self.client.indices.get_mapping(index=index).body)

    def put_mapping(
        self,
        index: str,
        properties: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        with self._translated():
            self.client.indices.put_mapping(index=index, properties=properties, meta=meta)

    def create_index(self, index: str, body: dict[str, Any]) -> None:
        with self._translated():
            self.client.indices.create(index=index, **body)

    def get_settings(self, index: str) -> dict[str, Any]:
        with self._translated():
            return dict(self.client.indices.get_settings(index=index).body)

    def put_settings(self, index: str, settings: dict[str, Any]) -> None:
        with self._translated():
            self.client.indices.put_settings(index=index, settings=settings)

    def bulk(self, index: str, body: bytes, filter_path: str) -> dict[str, Any]:
        with self._translated():
            return self.client.bulk(index=index, operations=body, filter_path=filter_path).body

    def refresh(self, index: str) -> None:
        with self._translated():
            self.client.indices.refresh(index=index)

    def count(self, index: str, query: dict[str, Any]) -> int:
        with self._translated():
            return int(self.client.count(index=index, query=query)["count"])

    def delete_by_query(self, index: str, query: dict[str, Any], **params: Any) -> dict[str, Any]:
        with self._translated():
            return dict(self.client.delete_by_query(index=index, query=query, **params).body)

    def search(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._translated():
            return dict(self.client.search(index=index, **body).body)


class OpenSearchEngine(SearchEngine):
    engine: Engine = "opensearch"

    def __init__(self, connection: Connection) -> None:
        try:
            from opensearchpy import OpenSearch
            from opensearchpy.serializer import JSONSerializer
        except ImportError:
            # A dependency of the package: missing only from an environment set up otherwise.
            raise EngineSetupError(
                "client_missing",
                "the cluster is OpenSearch and the opensearch-py client is not installed in "
                f"this environment: {sys.executable} -m pip install 'opensearch-py>=2.8,<4'",
            ) from None
        if connection.api_key:
            raise EngineSetupError(
                "api_key_unsupported",
                "ELASTICSEARCH_API_KEY is set, and OpenSearch has no Elasticsearch API keys: "
                "give its user in ELASTICSEARCH_USERNAME and ELASTICSEARCH_PASSWORD",
            )

        class BulkResponseSerializer(JSONSerializer):
            def loads(self, s: str) -> Any:
                return accepted_bulk(s.encode("utf-8", "surrogatepass")) or super().loads(s)

        auth: dict[str, Any] = {}
        if connection.username:
            auth["http_auth"] = (connection.username, connection.password or "")
        self.client = OpenSearch(
            connection.url,
            timeout=connection.timeout,
            retry_on_timeout=True,
            max_retries=3,
            serializers={JSONSerializer.mimetype: BulkResponseSerializer()},
            pool_maxsize=8,  # one connection per concurrent bulk sender (urllib3 keeps 1)
            **auth,
            **_tls_options(connection),
        )

    @contextmanager
    def _translated(self) -> Iterator[None]:
        from opensearchpy.exceptions import ConnectionError, TransportError

        try:
            yield
        except ConnectionError as exc:  # timeouts and TLS failures too
            raise EngineUnreachable(str(exc.info or exc.error)) from None
        except TransportError as exc:
            status = exc.status_code if isinstance(exc.status_code, int) else 0
            raise EngineError(status, str(exc.error), _opensearch_reason(exc.info)) from None

    def info(self) -> dict[str, Any]:
        with self._translated():
            return dict(self.client.info())

    def index_exists(self, index: str) -> bool:
        with self._translated():
            return bool(self.client.indices.exists(index=index))

    def get_mapping(self, index: str) -> dict[str, Any]:
        with self._translated():
            return dict(self.client.indices.get_mapping(index=index))

    def put_mapping(
        self,
        index: str,
        properties: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        body: dict[str, Any] = {}
        if properties is not None:
            body["properties"] = properties
        if meta is not None:
            body["_meta"] = meta
        with self._translated():
            self.client.indices.put_mapping(index=index, body=body)

    def create_index(self, index: str, body: dict[str, Any]) -> None:
        with self._translated():
            self.client.indices.create(index=index, body=body)

    def get_settings(self, index: str) -> dict[str, Any]:
        with self._translated():
            return dict(self.client.indices.get_settings(index=index))

    def put_settings(self, index: str, settings: dict[str, Any]) -> None:
        with self._translated():
            self.client.indices.put_settings(index=index, body=settings)

    def bulk(self, index: str, body: bytes, filter_path: str) -> dict[str, Any]:
        with self._translated():
            return self.client.bulk(index=index, body=body, params={"filter_path": filter_path})

    def refresh(self, index: str) -> None:
        with self._translated():
            self.client.indices.refresh(index=index)

    def count(self, index: str, query: dict[str, Any]) -> int:
        with self._translated():
            return int(self.client.count(index=index, body={"query": query})["count"])

    def delete_by_query(self, index: str, query: dict[str, Any], **params: Any) -> dict[str, Any]:
        wire = {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()}
        with self._translated():
            return dict(
                self.client.delete_by_query(index=index, body={"query": query}, params=wire)
            )

    def search(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._translated():
            return dict(self.client.search(index=index, body=body))


def _tls_options(connection: Connection) -> dict[str, Any]:
    if not connection.url.startswith("https:"):  # the clients refuse TLS options for http://
        return {}
    options: dict[str, Any] = {"verify_certs": connection.verify is not False}
    if isinstance(connection.verify, str):
        options["ca_certs"] = connection.verify
    if connection.verify is False:
        options["ssl_show_warn"] = False  # warned once, by the resource
    return options


def _client_major_mismatch(exc: Any) -> str | None:
    """What to do when the cluster refuses this client's major version, else None.

    Each client sends `compatible-with=<its major>`; a cluster accepts its own major and the
    one before, so a 9.x client is refused by 8.x clusters (400 media_type_header_exception).
    """
    from elasticsearch import __versionstr__

    if exc.meta.status != 400 or exc.error != "media_type_header_exception":
        return None
    major = int(__versionstr__.split(".")[0])
    return (
        f"the cluster refuses Elasticsearch client {__versionstr__} (an older cluster): the "
        f"client's major version must match the cluster's; for {major - 1}.x clusters install "
        f"'elasticsearch>={major - 1}.13,<{major}' (see docs/operations.md)"
    )


def _opensearch_reason(info: Any) -> str:
    if isinstance(info, dict):
        error = info.get("error")
        if isinstance(error, dict):
            return str(error.get("reason") or error.get("type"))
        if error is not None:
            return str(error)
    return str(info)


# -- which engine -------------------------------------------------------------------------------


def detect_engine(connection: Connection, setting: str = "auto") -> Engine:
    """The engine the cluster says it is (its root answer), checked against the setting.

    Elasticsearch marks every answer with `X-Elastic-Product: Elasticsearch`; OpenSearch's
    root answer says `version.distribution: opensearch`. A user without the right to read the
    root (`cluster:monitor/main`) gets 403: then the header decides, or the setting does.
    """
    if setting not in ENGINE_SETTINGS:
        raise EngineSetupError(
            "engine_setting", f"ELASTICSEARCH_ENGINE must be one of {', '.join(ENGINE_SETTINGS)}"
        )
    headers = {"Accept": "application/json"}
    auth = None
    if connection.api_key:
        headers["Authorization"] = f"ApiKey {connection.api_key}"
    elif connection.username:
        auth = (connection.username, connection.password or "")
    try:
        with warnings.catch_warnings():  # verification off is warned about once, by the resource
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            answer = requests.get(
                connection.url + "/",
                headers=headers,
                auth=auth,
                verify=connection.verify,
                timeout=min(connection.timeout, 30.0),
            )
    except requests.RequestException as exc:
        raise EngineUnreachable(unreachable_reason(exc)) from None
    said: Engine | None = None
    version = ""
    if answer.headers.get("X-Elastic-Product") == "Elasticsearch":
        said = "elasticsearch"
    if answer.ok:
        try:
            root = answer.json().get("version", {})
        except ValueError:
            root = {}
        version = str(root.get("number", ""))
        said = "opensearch" if root.get("distribution") == "opensearch" else "elasticsearch"
    if said is None:
        if setting != "auto":
            return setting  # type: ignore[return-value]
        # Answers that say nothing of the engine (Elasticsearch leaves its header off
        # unauthenticated answers; a proxy or a starting node answers for the cluster):
        # a passing fault is waited out, refused credentials are said as such.
        if answer.status_code == 429 or answer.status_code >= 500:
            raise EngineUnreachable(f"GET / answered HTTP {answer.status_code}")
        if answer.status_code == 401:
            raise EngineError(
                401,
                "security_exception",
                "the cluster refused the credentials (HTTP 401): check ELASTICSEARCH_API_KEY, "
                "or ELASTICSEARCH_USERNAME and ELASTICSEARCH_PASSWORD",
            )
        raise EngineSetupError(
            "engine_unknown",
            f"cannot tell whether the cluster is Elasticsearch or OpenSearch (GET / answered "
            f"{answer.status_code}); set ELASTICSEARCH_ENGINE",
        )
    if setting != "auto" and setting != said:
        raise EngineSetupError(
            "engine_mismatch",
            f"ELASTICSEARCH_ENGINE={setting}, but the cluster answers as {said} {version}".rstrip(),
        )
    if said == "opensearch" and version and _release(version) < OPENSEARCH_MINIMUM:
        raise EngineSetupError(
            "engine_version",
            f"OpenSearch {version}: the pipeline needs 2.15 or later (the wildcard field type)",
        )
    return said


def unreachable_reason(exc: Exception) -> str:
    """Why a connection failed, in a few words ("[Errno 111] Connection refused"), not the
    client's whole chain of wrapped exceptions."""
    text = str(exc)
    found = re.search(
        r"\[Errno -?\d+\][^'\")\]]*|timed out|certificate verify failed|"
        r"Remote end closed connection without response|GET / answered HTTP \d+",
        text,
    )
    if found:
        return found.group(0).strip()
    # A short message of its own (not a client's chain of wrapped exceptions), else the type.
    return text if text and len(text) <= 80 and "(" not in text else type(exc).__name__


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:2])


def connect(connection: Connection, setting: str = "auto") -> SearchEngine:
    engine = detect_engine(connection, setting)
    return (
        OpenSearchEngine(connection) if engine == "opensearch" else ElasticsearchEngine(connection)
    )
