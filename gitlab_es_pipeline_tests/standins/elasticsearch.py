"""An Elasticsearch 9 stand-in: indices with mappings, aliases, _bulk, _refresh, _count, _search.

It speaks the REST API as the official client expects it (X-Elastic-Product header, the
compatible-with media types, error bodies with type and reason) and keeps documents in memory.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cmp_to_key
from typing import Any
from urllib.parse import unquote

from gitlab_es_pipeline_tests.standins.http import Request, Response, StandInServer

VERSION = "9.1.0"
# Index settings every index shows, whether set or not; a setting reset with null shows these.
DEFAULT_INDEX_SETTINGS = {"number_of_shards": "1", "number_of_replicas": "1"}
MAX_ID_BYTES = 512
MAX_CONTENT_LENGTH = 100 * 1024 * 1024
_MEDIA = re.compile(r"application/vnd\.elasticsearch\+(json|x-ndjson)\s*;\s*compatible-with=(\d+)")


@dataclass
class Index:
    name: str
    mappings: dict[str, Any]
    settings: dict[str, Any]
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    visible: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: Counter[str] = field(default_factory=Counter)
    visible_versions: dict[str, int] = field(default_factory=dict)
    last_refresh: float = field(default_factory=time.monotonic)
    seq_no: int = 0

    @property
    def refresh_interval(self) -> float | None:
        value = str(self.settings.get("index", {}).get("refresh_interval", "1s"))
        if value == "-1":
            return None
        if value.endswith("ms"):
            return float(value[:-2]) / 1000
        return float(value.rstrip("s"))

    def refresh(self) -> None:
        self.visible = dict(self.docs)
        self.visible_versions = {doc_id: self.versions[doc_id] for doc_id in self.docs}
        self.last_refresh = time.monotonic()

    def shown_settings(self) -> dict[str, Any]:
        """As GET _settings shows them: the defaults every index has, values as strings."""
        return {"index": {**DEFAULT_INDEX_SETTINGS, **self.settings.get("index", {})}}

    def searchable(self) -> dict[str, dict[str, Any]]:
        interval = self.refresh_interval
        if interval is not None and time.monotonic() - self.last_refresh >= interval:
            self.refresh()
        return self.visible


MAX_RESULT_WINDOW = 10_000  # index.max_result_window's default


def _error(status: int, type_: str, reason: str, **extra: Any) -> Response:
    cause = {"type": type_, "reason": reason, **extra}
    return Response(status, {"error": {"root_cause": [cause], **cause}, "status": status})


def _alias_is_an_index(alias: str) -> Response:
    return _error(
        400,
        "invalid_alias_name_exception",
        f"Invalid alias name [{alias}]: an index or data stream exists with the same name as "
        "the alias",
    )


class ElasticsearchStandIn(StandInServer):
    def __init__(
        self,
        api_key: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        count_only: bool = False,
        major: int = 9,
    ) -> None:
        super().__init__()
        # The server's major version: it accepts clients asking for its own major or the one
        # before (REST compatibility), and refuses a newer one as Elasticsearch does.
        self.major = major
        self.indices: dict[str, Index] = {}
        self.aliases: dict[str, dict[str, dict[str, Any]]] = {}  # alias -> index -> options
        self.api_key = api_key
        self.basic_auth = basic_auth
        self.requests: list[tuple[str, str]] = []
        self.bulk_actions: Counter[str] = Counter()
        # Benchmarks: accept every bulk item and only count, so the figures measure the client.
        self.count_only = count_only
        self.bulk_requests = 0
        self.bulk_bytes = 0
        # Fault injection: (action, meta, source) -> an item result to answer instead, or None;
        # and request -> a whole response to answer instead (an outage, an overload), or None.
        self.item_faults: list[Any] = []
        self.faults: list[Callable[[Request], Response | None]] = []
        self._lock = threading.RLock()

    # -- test API ---------------------------------------------------------------------------
    def documents(self, name: str) -> dict[str, dict[str, Any]]:
        """Every document (refreshed or not) of the indices behind a name, by id."""
        with self._lock:
            out: dict[str, dict[str, Any]] = {}
            for index in self._resolve(name):
                out.update(copy.deepcopy(index.docs))
            return out

    # -- plumbing -----------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        with self._lock:
            self.requests.append((request.method, request.raw_path))
            injected = next((r for f in self.faults if (r := f(request)) is not None), None)
            if injected is not None:
                return injected
            try:
                response = (
                    self._authorised(request) or self._negotiated(request) or self._route(request)
                )
            except (ValueError, KeyError, TypeError) as exc:
                response = _error(
                    400, "parsing_exception", f"stand-in could not parse the request: {exc}"
                )
        filter_path = request.query.get("filter_path")
        if (
            filter_path
            and response.content_type == "application/json"
            and response.body
            and not response.filtered
        ):
            response.body = json.dumps(
                _filtered(json.loads(response.body), filter_path.split(",")),
                separators=(",", ":"),
            ).encode()
        response.headers["X-Elastic-Product"] = "Elasticsearch"
        accept = request.headers.get("Accept") or ""
        match = _MEDIA.search(accept)
        if match and response.content_type == "application/json":
            response.content_type = (
                f"application/vnd.elasticsearch+json;compatible-with={match.group(2)}"
            )
        return response

    def _authorised(self, request: Request) -> Response | None:
        if self.api_key is None and self.basic_auth is None:
            return None
        auth = request.headers.get("Authorization") or ""
        if self.api_key is not None and auth == f"ApiKey {self.api_key}":
            return None
        if self.basic_auth is not None:
            import base64

            expected = base64.b64encode(":".join(self.basic_auth).encode()).decode()
            if auth == f"Basic {expected}":
                return None
        response = _error(401, "security_exception", "unable to authenticate user for REST request")
        response.headers["WWW-Authenticate"] = 'Basic realm="security", charset="UTF-8", ApiKey'
        return response

    def _negotiated(self, request: Request) -> Response | None:
        accepted = (str(self.major - 1), str(self.major))
        for header in ("Accept", "Content-Type"):
            value = request.headers.get(header) or ""
            match = _MEDIA.search(value)
            if match and match.group(2) not in accepted:
                return _error(
                    400,
                    "media_type_header_exception",
                    "Invalid media-type value on headers [Accept, Content-Type]",
                    caused_by={
                        "type": "status_exception",
                        "reason": f"{header} version must be either version {accepted[1]} or "
                        f"{accepted[0]}, but found {match.group(2)}. {header}={value}",
                    },
                )
        if len(request.body) > MAX_CONTENT_LENGTH:
            return _error(413, "content_too_long_exception", "request body is too large")
        return None

    def _route(self, request: Request) -> Response:
        parts = [unquote(p) for p in request.raw_path.strip("/").split("/") if p]
        method = request.method
        if parts == ["__standin", "stats"]:
            stats = {
                "bulk_requests": self.bulk_requests,
                "bulk_bytes": self.bulk_bytes,
                **{f"bulk_{k}": v for k, v in self.bulk_actions.items()},
            }
            if method == "DELETE":
                self.bulk_requests = self.bulk_bytes = 0
                self.bulk_actions.clear()
            return Response(200, stats)
        if not parts:
            return Response(
                200,
                {
                    "name": "stand-in",
                    "cluster_name": "stand-in",
                    "cluster_uuid": "stand-in",
                    "version": {
                        "number": VERSION if self.major == 9 else f"{self.major}.19.0",
                        "build_flavor": "default",
                        "lucene_version": "10.2.0",
                    },
                    "tagline": "You Know, for Search",
                },
            )
        if parts == ["_bulk"]:
            return self._bulk(request, None)
        if parts == ["_aliases"] and method == "POST":
            return self._update_aliases(request.json() or {})
        if parts[0] == "_alias" and len(parts) == 2:
            return self._get_alias(parts[1], method)
        name, rest = parts[0], parts[1:]
        if not rest:
            if method == "HEAD":
                return Response(200 if self._resolve(name) else 404)
            if method == "PUT":
                return self._create_index(name, request.json() or {})
            if method == "DELETE":
                return self._delete_index(name)
            if method == "GET":
                return self._get_index(name)
        op = rest[0]
        if op == "_bulk":
            return self._bulk(request, name)
        if op in (
            "_refresh",
            "_mapping",
            "_settings",
            "_count",
            "_search",
            "_alias",
            "_doc",
            "_delete_by_query",
        ):
            targets = self._resolve(name)
            if not targets:
                return _error(
                    404, "index_not_found_exception", f"no such index [{name}]", index=name
                )
            if op == "_refresh":
                for index in targets:
                    index.refresh()
                return Response(
                    200,
                    {"_shards": {"total": len(targets), "successful": len(targets), "failed": 0}},
                )
            if op == "_mapping":
                if method == "PUT":  # new fields only, as Elasticsearch allows
                    new = (request.json() or {}).get("properties", {})
                    for index in targets:
                        have = index.mappings.setdefault("properties", {})
                        for name, spec in new.items():
                            if name in have and have[name].get("type") != spec.get("type"):
                                return _error(
                                    400,
                                    "illegal_argument_exception",
                                    f"mapper [{name}] cannot be changed from type "
                                    f"[{have[name].get('type')}] to [{spec.get('type')}]",
                                )
                    for index in targets:
                        index.mappings["properties"].update(copy.deepcopy(new))
                        if "_meta" in (request.json() or {}):  # replaced whole, as in ES
                            index.mappings["_meta"] = copy.deepcopy(request.json()["_meta"])
                    return Response(200, {"acknowledged": True})
                return Response(200, {i.name: {"mappings": i.mappings} for i in targets})
            if op == "_settings":
                if method == "PUT":
                    for index in targets:
                        _merge(index.settings, _nest_settings(request.json() or {}))
                    return Response(200, {"acknowledged": True})
                return Response(200, {i.name: {"settings": i.shown_settings()} for i in targets})
            if op == "_alias" and len(rest) == 2 and len(targets) == 1:
                return self._one_alias(method, targets[0], rest[1], request.json() or {})
            if op == "_alias":
                return self._get_alias("*", "GET", targets)
            if op == "_count":
                body = request.json() or {}
                hits = self._matching(targets, body.get("query"))
                return Response(
                    200, {"count": len(hits), "_shards": {"total": 1, "successful": 1, "failed": 0}}
                )
            if op == "_search":
                return self._search(targets, request.json() or {})
            if op == "_delete_by_query":
                refresh = request.query.get("refresh") in ("", "true")
                return self._delete_by_query(targets, request.json() or {}, refresh)
            if op == "_doc" and len(rest) == 2 and method in ("PUT", "POST", "DELETE"):
                kind = "delete" if method == "DELETE" else "index"
                item = self._bulk_item(kind, {"_id": rest[1]}, request.json(), name)
                if request.query.get("refresh") in ("", "true", "wait_for") and "_index" in item:
                    self.indices[item["_index"]].refresh()
                if "error" in item:
                    return _error(item["status"], item["error"]["type"], item["error"]["reason"])
                return Response(item["status"], item)
            if op == "_doc" and len(rest) == 2:
                for index in targets:
                    if rest[1] in index.docs:
                        return Response(
                            200,
                            {
                                "_index": index.name,
                                "_id": rest[1],
                                "found": True,
                                "_source": index.docs[rest[1]],
                            },
                        )
                return Response(404, {"_index": name, "_id": rest[1], "found": False})
        return _error(
            400, "illegal_argument_exception", f"unsupported request [{method} {request.raw_path}]"
        )

    # -- indices and aliases ------------------------------------------------------------------
    def _resolve(self, name: str) -> list[Index]:
        names = set()
        for pattern in name.split(","):
            for index in self.indices:
                if fnmatch.fnmatchcase(index, pattern):
                    names.add(index)
            for alias, members in self.aliases.items():
                if fnmatch.fnmatchcase(alias, pattern):
                    names.update(members)
        return [self.indices[n] for n in sorted(names) if n in self.indices]

    def _write_index(self, name: str) -> Index | str:
        if name in self.indices:
            return self.indices[name]
        members = self.aliases.get(name)
        if not members:
            return f"no such index [{name}]"
        writers = [i for i, opts in members.items() if opts.get("is_write_index")]
        if len(members) == 1:
            return self.indices[next(iter(members))]
        if len(writers) == 1:
            return self.indices[writers[0]]
        return (
            f"no write index is defined for alias [{name}]. The write index may be explicitly "
            "disabled using is_write_index=false or the alias points to multiple indices "
            "without one being designated as a write index"
        )

    def _create_index(self, name: str, body: dict[str, Any]) -> Response:
        if name in self.indices:
            return _error(
                400,
                "resource_already_exists_exception",
                f"index [{name}/stand-in] already exists",
                index=name,
            )
        if name in self.aliases:
            return _error(
                400,
                "invalid_index_name_exception",
                f"Invalid index name [{name}], already exists as alias",
                index=name,
            )
        if name != name.lower() or name.startswith(("_", "-", "+")):
            return _error(
                400, "invalid_index_name_exception", f"Invalid index name [{name}]", index=name
            )
        unknown = _unknown_type(body.get("mappings") or {})
        if unknown:
            return _error(
                400,
                "mapper_parsing_exception",
                f"Failed to parse mapping: {unknown}",
                caused_by={"type": "mapper_parsing_exception", "reason": unknown},
            )
        for alias in body.get("aliases") or {}:
            if alias in self.indices:
                return _alias_is_an_index(alias)
        settings = _nest_settings(body.get("settings") or {})
        self.indices[name] = Index(name, body.get("mappings") or {"properties": {}}, settings)
        for alias, opts in (body.get("aliases") or {}).items():
            self.aliases.setdefault(alias, {})[name] = dict(opts or {})
        return Response(200, {"acknowledged": True, "shards_acknowledged": True, "index": name})

    def _delete_index(self, name: str) -> Response:
        if name not in self.indices:
            return _error(404, "index_not_found_exception", f"no such index [{name}]", index=name)
        del self.indices[name]
        for members in self.aliases.values():
            members.pop(name, None)
        self.aliases = {a: m for a, m in self.aliases.items() if m}
        return Response(200, {"acknowledged": True})

    def _get_index(self, name: str) -> Response:
        targets = self._resolve(name)
        if not targets:
            return _error(404, "index_not_found_exception", f"no such index [{name}]", index=name)
        out = {}
        for index in targets:
            aliases = {
                a: opts for a, m in self.aliases.items() for i, opts in m.items() if i == index.name
            }
            out[index.name] = {
                "aliases": aliases,
                "mappings": index.mappings,
                "settings": index.shown_settings(),
            }
        return Response(200, out)

    def _get_alias(self, alias: str, method: str, targets: list[Index] | None = None) -> Response:
        out: dict[str, Any] = {}
        allowed = {i.name for i in targets} if targets is not None else None
        for name, members in self.aliases.items():
            if not fnmatch.fnmatchcase(name, alias):
                continue
            for index, opts in members.items():
                if allowed is None or index in allowed:
                    out.setdefault(index, {"aliases": {}})["aliases"][name] = opts
        if method == "HEAD":
            return Response(200 if out else 404)
        if not out and targets is None:
            return Response(404, {"error": f"alias [{alias}] missing", "status": 404})
        return Response(200, out)

    def _update_aliases(self, body: dict[str, Any]) -> Response:
        """All actions or none: every one is checked before any is applied."""
        actions = []
        for action in body.get("actions", []):
            ((kind, spec),) = action.items()
            index, alias = spec.get("index"), spec.get("alias")
            if index not in self.indices:
                return _error(
                    404, "index_not_found_exception", f"no such index [{index}]", index=index
                )
            if kind == "remove" and index not in self.aliases.get(alias, {}):
                return _error(404, "aliases_not_found_exception", f"aliases [{alias}] missing")
            actions.append((kind, index, alias, spec))
        for kind, index, alias, spec in actions:
            if kind == "add":
                opts = {k: v for k, v in spec.items() if k not in ("index", "alias")}
                self.aliases.setdefault(alias, {})[index] = opts
            elif kind == "remove":
                self.aliases[alias].pop(index, None)
            elif kind == "remove_index":
                self._delete_index(index)
        self.aliases = {a: m for a, m in self.aliases.items() if m}
        return Response(200, {"acknowledged": True, "errors": False})

    def _one_alias(self, method: str, index: Index, alias: str, body: dict[str, Any]) -> Response:
        """PUT and DELETE /<index>/_alias/<alias>, GET of one index's aliases."""
        if method == "PUT":
            if alias in self.indices:
                return _alias_is_an_index(alias)
            self.aliases.setdefault(alias, {})[index.name] = dict(body)
            return Response(200, {"acknowledged": True})
        if method == "DELETE":
            if index.name not in self.aliases.get(alias, {}):
                return _error(404, "aliases_not_found_exception", f"aliases [{alias}] missing")
            del self.aliases[alias][index.name]
            self.aliases = {a: m for a, m in self.aliases.items() if m}
            return Response(200, {"acknowledged": True})
        return self._get_alias(alias, method, [index])

    # -- documents ----------------------------------------------------------------------------
    def _bulk(self, request: Request, default_index: str | None) -> Response:
        self.bulk_requests += 1
        self.bulk_bytes += len(request.body)
        if self.count_only:
            return self._count_only_bulk(request.body, request.query.get("filter_path"))
        content_type = request.headers.get("Content-Type") or ""
        if "ndjson" not in content_type and "json" not in content_type:
            # Plain application/json is read as NDJSON too; anything else is refused.
            return _error(
                406,
                "media_type_header_exception",
                f"Content-Type header [{content_type}] is not supported",
            )
        if not request.body:
            return _error(400, "parse_exception", "request body is required")
        started = time.monotonic()
        lines = request.body.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        else:
            return _error(
                400,
                "illegal_argument_exception",
                "The bulk request must be terminated by a newline [\\n]",
            )
        too_long = [
            doc_id
            for line in lines
            if line.startswith(b'{"') and b'"_id"' in line
            for doc_id in [str(dict(next(iter(json.loads(line).values()), {})).get("_id", ""))]
            if len(doc_id.encode()) > MAX_ID_BYTES
        ]
        if too_long:  # refused whole, before any item is applied
            return _error(
                400,
                "action_request_validation_exception",
                f"Validation Failed: 1: id [{too_long[0]}] is too long, must be no longer than "
                f"512 bytes but was: {len(too_long[0].encode())};",
            )
        items, errors, i = [], False, 0
        refresh = request.query.get("refresh") in ("", "true", "wait_for")
        touched: set[str] = set()
        while i < len(lines):
            try:
                action = json.loads(lines[i])
            except ValueError:
                return _error(
                    400, "x_content_parse_exception", f"Malformed action/metadata line [{i + 1}]"
                )
            ((kind, meta),) = action.items()
            i += 1
            source = None
            if kind in ("index", "create", "update"):
                if i >= len(lines):
                    return _error(
                        400,
                        "illegal_argument_exception",
                        "Validation Failed: 1: no requests added;",
                    )
                source = json.loads(lines[i])
                i += 1
            elif kind != "delete":
                return _error(
                    400,
                    "illegal_argument_exception",
                    f"Malformed action/metadata line [{i}], "
                    f"expected one of [create, delete, index, update] but found [{kind}]",
                )
            self.bulk_actions[kind] += 1
            item = next(
                (r for f in self.item_faults if (r := f(kind, meta, source)) is not None), None
            )
            if item is None:
                item = self._bulk_item(kind, meta, source, meta.get("_index") or default_index)
            errors = errors or "error" in item
            if "_index" in item:
                touched.add(item["_index"])
            items.append({kind: item})
        if refresh:
            for name in touched:
                if name in self.indices:
                    self.indices[name].refresh()
        took = int((time.monotonic() - started) * 1000)
        return Response(200, {"errors": errors, "took": took, "items": items})

    def _count_only_bulk(self, body: bytes, filter_path: str | None) -> Response:
        """Accept and count, at C speed: the benchmark measures the client, not this server.

        Each operation is acknowledged (so the client's item accounting holds); nothing is
        stored or checked. The response is built already filtered as filter_path asks.
        """
        newlines = body.count(b"\n")
        deletes = body.count(b'\n{"delete"') + body.startswith(b'{"delete"')
        indexes = (newlines - deletes) // 2
        self.bulk_actions["delete"] += deletes
        self.bulk_actions["index"] += indexes
        paths = filter_path.split(",") if filter_path else None
        with_result = paths is None or any(p.endswith(".result") for p in paths)

        def item(action: str, status: int, result: str) -> bytes:
            fields = f'"status":{status}' + (f',"result":"{result}"' * with_result)
            return f'{{"{action}":{{{fields}}}}}'.encode()

        items = b",".join(
            [item("index", 201, "created")] * indexes + [item("delete", 200, "deleted")] * deletes
        )
        response = Response(200, b'{"errors":false,"took":0,"items":[' + items + b"]}")
        response.filtered = True
        return response

    def _bulk_item(
        self, kind: str, meta: dict[str, Any], source: Any, target: str | None
    ) -> dict[str, Any]:
        doc_id = meta.get("_id")
        if target is None:
            return {
                "_id": doc_id,
                "status": 400,
                "error": {
                    "type": "action_request_validation_exception",
                    "reason": "Validation Failed: 1: index is missing;",
                },
            }
        index = self._write_index(target)
        if isinstance(index, str) and index.startswith("no such index") and kind != "delete":
            # A write to a name that is neither index nor alias creates an index by that name,
            # its mapping guessed from the document (action.auto_create_index defaults to true).
            created = self._create_index(
                target, {"mappings": _dynamic_mapping(source if isinstance(source, dict) else {})}
            )
            if created.status == 200:
                index = self.indices[target]
        if isinstance(index, str):
            status = 404 if index.startswith("no such index") else 400
            type_ = "index_not_found_exception" if status == 404 else "illegal_argument_exception"
            return {
                "_index": target,
                "_id": doc_id,
                "status": status,
                "error": {"type": type_, "reason": index},
            }
        base = {"_index": index.name, "_id": doc_id}
        if doc_id is not None and len(str(doc_id).encode()) > MAX_ID_BYTES:
            return {
                **base,
                "status": 400,
                "error": {
                    "type": "illegal_argument_exception",
                    "reason": f"id [{doc_id}] is too long, must be no longer than 512 bytes but was: "
                    f"{len(str(doc_id).encode())}",
                },
            }
        if kind == "delete":
            if doc_id is None:  # as Elasticsearch: a delete names its document
                return {
                    **base,
                    "status": 400,
                    "error": {
                        "type": "action_request_validation_exception",
                        "reason": "Validation Failed: 1: id is missing;",
                    },
                }
            if doc_id in index.docs:
                del index.docs[doc_id]
                index.versions[doc_id] += 1
                return {
                    **base,
                    "_version": index.versions[doc_id],
                    "result": "deleted",
                    "status": 200,
                }
            return {
                **base,
                "_version": index.versions[doc_id] + 1,
                "result": "not_found",
                "status": 404,
            }
        if doc_id is None:
            doc_id = f"auto-{index.seq_no}"
            base["_id"] = doc_id
        if kind == "update":
            if doc_id not in index.docs:
                return {
                    **base,
                    "status": 404,
                    "error": {
                        "type": "document_missing_exception",
                        "reason": f"[{doc_id}]: document missing",
                    },
                }
            source = {**index.docs[doc_id], **(source or {}).get("doc", {})}
        if kind == "create" and doc_id in index.docs:
            return {
                **base,
                "status": 409,
                "error": {
                    "type": "version_conflict_engine_exception",
                    "reason": f"[{doc_id}]: version conflict, document already exists",
                },
            }
        problem = _mapping_problem(index.mappings, source)
        if problem:
            return {**base, "status": 400, "error": problem}
        existed = doc_id in index.docs
        index.docs[doc_id] = source
        index.versions[doc_id] += 1
        index.seq_no += 1
        return {
            **base,
            "_version": index.versions[doc_id],
            "result": "updated" if existed else "created",
            "status": 200 if existed else 201,
            "_seq_no": index.seq_no,
            "_primary_term": 1,
            "_shards": {"total": 1, "successful": 1, "failed": 0},
        }

    def _matching(
        self, targets: list[Index], query: dict[str, Any] | None
    ) -> list[tuple[str, str, dict[str, Any]]]:
        out = []
        for index in targets:
            for doc_id, doc in index.searchable().items():
                if _matches(index.mappings, query or {"match_all": {}}, doc_id, doc):
                    out.append((index.name, doc_id, doc))
        return out

    def _search(self, targets: list[Index], body: dict[str, Any]) -> Response:
        window = int(body.get("from", 0)) + int(body.get("size", 10))
        if window > MAX_RESULT_WINDOW:  # as index.max_result_window's default refuses it
            cause = {
                "type": "illegal_argument_exception",
                "reason": "Result window is too large, from + size must be less than or equal "
                f"to: [{MAX_RESULT_WINDOW}] but was [{window}]. See the scroll api for a more "
                "efficient way to request large data sets. This limit can be set by changing "
                "the [index.max_result_window] index level setting.",
            }
            error = {
                "root_cause": [cause],
                "type": "search_phase_execution_exception",
                "reason": "all shards failed",
                "phase": "query",
                "grouped": True,
                "failed_shards": [{"shard": 0, "index": targets[0].name, "reason": cause}],
            }
            return Response(400, {"error": error, "status": 400})
        hits = self._matching(targets, body.get("query"))
        aggs = body.get("aggs", body.get("aggregations"))
        aggregations = None
        if aggs is not None:
            mappings = {i.name: i.mappings for i in targets}
            try:
                aggregations = {
                    name: _aggregate(spec, [(mappings[i], d) for i, _, d in hits])
                    for name, spec in aggs.items()
                }
            except _AggregationError as exc:
                return _error(400, "illegal_argument_exception", str(exc))
        sort = [
            (name, order.get("order", "asc") if isinstance(order, dict) else order)
            for spec in body.get("sort") or []
            for name, order in (spec.items() if isinstance(spec, dict) else [(spec, "asc")])
        ]
        for name, order in reversed(sort):
            hits.sort(
                key=lambda h: (h[2].get(name) is None, h[2].get(name)), reverse=order == "desc"
            )
        after = body.get("search_after")
        if after is not None:  # the hits after the one whose sort values these are
            if any(order == "desc" for _, order in sort):
                raise ValueError("search_after with a descending sort")
            hits = [h for h in hits if [h[2].get(name) for name, _ in sort] > list(after)]
        start, size = int(body.get("from", 0)), int(body.get("size", 10))
        page = hits[start : start + size]
        return Response(
            200,
            {
                "took": 1,
                "timed_out": False,
                "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                "hits": {
                    "total": {"value": len(hits), "relation": "eq"},
                    "max_score": 1.0 if page else None,
                    "hits": [
                        {
                            "_index": i,
                            "_id": d,
                            "_score": 1.0,
                            "_source": s,
                            **({"sort": [s.get(name) for name, _ in sort]} if sort else {}),
                        }
                        for i, d, s in page
                    ],
                },
                **({"aggregations": aggregations} if aggregations is not None else {}),
            },
        )

    def _delete_by_query(
        self, targets: list[Index], body: dict[str, Any], refresh: bool
    ) -> Response:
        """As Elasticsearch does it: the documents a search sees now (the last refresh), each
        deleted unless it changed since (a version conflict, counted: conflicts=proceed)."""
        deleted = conflicts = 0
        for index in targets:
            for doc_id, doc in list(index.searchable().items()):
                if not _matches(
                    index.mappings, body.get("query") or {"match_all": {}}, doc_id, doc
                ):
                    continue
                if index.versions[doc_id] != index.visible_versions.get(doc_id):
                    conflicts += 1
                    continue
                del index.docs[doc_id]
                index.versions[doc_id] += 1
                deleted += 1
            if refresh:
                index.refresh()
        return Response(
            200,
            {
                "took": 1,
                "timed_out": False,
                "total": deleted + conflicts,
                "deleted": deleted,
                "failures": [],
                "version_conflicts": conflicts,
            },
        )


# -- mapping ---------------------------------------------------------------------------------
def _is_integer(v: Any) -> bool:
    """Numbers, and strings holding one: Elasticsearch coerces them by default."""
    if isinstance(v, bool):
        return False
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            return False
    return isinstance(v, (int, float)) and float(v).is_integer()


_TYPE_CHECKS = {
    "long": _is_integer,
    "integer": lambda v: _is_integer(v) and -(2**31) <= float(v) < 2**31,
    "boolean": lambda v: isinstance(v, bool) or v in ("true", "false", ""),
    "keyword": lambda v: isinstance(v, (str, int, float, bool)),
    "text": lambda v: isinstance(v, (str, int, float, bool)),
    "wildcard": lambda v: isinstance(v, (str, int, float, bool)),
}

# Field types Elasticsearch knows (the ones a mapping here may use); others are refused.
KNOWN_TYPES = frozenset(
    {
        *_TYPE_CHECKS,
        "object",
        "nested",
        "date",
        "float",
        "double",
        "short",
        "byte",
        "binary",
        "ip",
        "match_only_text",
        "constant_keyword",
        "flattened",
        "dense_vector",
        "half_float",
        "scaled_float",
        "unsigned_long",
        "version",
        "geo_point",
        "alias",
        "search_as_you_type",
    }
)


def _unknown_type(mappings: dict[str, Any]) -> str | None:
    def walk(properties: dict[str, Any]) -> str | None:
        for name, spec in properties.items():
            kind = spec.get("type", "object")
            if kind not in KNOWN_TYPES:
                return f"No handler for type [{kind}] declared on field [{name}]"
            found = walk(spec.get("properties", {})) or walk(spec.get("fields", {}))
            if found:
                return found
        return None

    return walk(mappings.get("properties", {}))


def _dynamic_mapping(source: dict[str, Any]) -> dict[str, Any]:
    """The mapping Elasticsearch makes for an index created by a write (dynamic mapping)."""
    properties: dict[str, Any] = {}
    for name, value in source.items():
        sample = value[0] if isinstance(value, list) and value else value
        if isinstance(sample, bool):
            properties[name] = {"type": "boolean"}
        elif isinstance(sample, int):
            properties[name] = {"type": "long"}
        elif isinstance(sample, float):
            properties[name] = {"type": "float"}
        elif isinstance(sample, str):
            properties[name] = {
                "type": "text",
                "fields": {"keyword": {"type": "keyword", "ignore_above": 256}},
            }
        elif isinstance(sample, dict):
            properties[name] = _dynamic_mapping(sample)
    return {"properties": properties}


def _mapping_problem(mappings: dict[str, Any], source: Any) -> dict[str, str] | None:
    if not isinstance(source, dict):
        return {
            "type": "document_parsing_exception",
            "reason": "[1:1] failed to parse: not an object",
        }
    properties = mappings.get("properties", {})
    strict = mappings.get("dynamic") == "strict"
    for name, value in source.items():
        spec = properties.get(name)
        if spec is None:
            if strict:
                return {
                    "type": "strict_dynamic_mapping_exception",
                    "reason": f"[1:2] mapping set to strict, dynamic introduction of [{name}] "
                    "within [_doc] is not allowed",
                }
            continue
        check = _TYPE_CHECKS.get(spec.get("type", "object"))
        values = value if isinstance(value, list) else [value]  # any field may hold an array
        for one in values:
            if one is not None and check is not None and not check(one):
                return {
                    "type": "document_parsing_exception",
                    "reason": f"[1:2] failed to parse field [{name}] of type [{spec.get('type')}]",
                }
    return None


def _nest_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """{"index.refresh_interval": x} and {"refresh_interval": x} -> {"index": {...}}."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key == "index" and isinstance(value, dict):
            out.setdefault("index", {}).update(value)  # keeps nulls: they reset settings
        elif key == "analysis":
            out.setdefault("index", {})["analysis"] = value
        else:
            key = key.removeprefix("index.")
            out.setdefault("index", {})[key] = value
    index = out.get("index", {})
    for key, value in index.items():  # Elasticsearch keeps settings as strings
        if isinstance(value, bool):
            index[key] = str(value).lower()
        elif isinstance(value, (int, float)):
            index[key] = str(value)
    return out


def _merge(target: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if value is None:  # null resets a setting to its default
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


# -- aggregations ----------------------------------------------------------------------------
class _AggregationError(Exception):
    """What Elasticsearch refuses with a 400 (a field without doc values, say)."""


_NUMERIC = {"long", "integer", "short", "byte", "double", "float", "half_float", "scaled_float"}


def _field_mapping(mappings: dict[str, Any], field_name: str) -> dict[str, Any] | None:
    """A field's mapping, subfields (`file_path.parts`) included; None when unmapped."""
    base, _, sub = field_name.partition(".")
    spec = mappings.get("properties", {}).get(base)
    if spec is not None and sub:
        spec = spec.get("fields", {}).get(sub)
    return spec


def _doc_values(mappings: dict[str, Any], field_name: str) -> Callable[[Any], Any]:
    """How a field's values read for aggregations, refusing what Elasticsearch refuses."""
    spec = _field_mapping(mappings, field_name)
    if spec is None:
        return lambda v: None  # unmapped: no values, as Elasticsearch answers
    kind = spec.get("type", "object")
    if kind == "text":
        raise _AggregationError(
            f"Fielddata is disabled on [{field_name}]. Text fields are not optimised for "
            "operations that require per-document field data like aggregations and sorting, "
            "so these operations are disabled by default. Please use a keyword field instead."
        )
    if spec.get("doc_values") is False or kind in ("wildcard", "object"):
        raise _AggregationError(
            f"Can't load fielddata on [{field_name}] because fielddata is unsupported on "
            f"fields of type [{kind}]. Use doc values instead."
        )
    if kind in _NUMERIC:
        return lambda v: int(float(v)) if kind in ("long", "integer", "short", "byte") else float(v)
    if kind == "keyword":
        above = spec.get("ignore_above")
        return lambda v: None if above is not None and len(str(v)) > above else str(v)
    if kind == "boolean":
        return lambda v: v in (True, "true")
    raise _AggregationError(f"aggregations on [{kind}] fields are not supported by the stand-in")


def _aggregate(spec: dict[str, Any], docs: list[tuple[dict[str, Any], dict[str, Any]]]) -> Any:
    """A `composite` aggregation of `terms` sources, as Elasticsearch answers it: buckets in
    the sources' order (asc or desc each), `size` of them after `after`, and `after_key` (the
    last bucket's key) whenever there are buckets. Documents missing a source's field make no
    bucket unless it has `missing_bucket` (null sorts first)."""
    ((kind, body),) = spec.items()
    if kind != "composite":
        raise ValueError(f"aggregation [{kind}] is not supported by the stand-in")
    sources = []
    for source in body["sources"]:
        ((name, definition),) = source.items()
        ((source_kind, options),) = definition.items()
        if source_kind != "terms" or "field" not in options:
            raise ValueError(f"composite source [{source_kind}] is not supported by the stand-in")
        sources.append(
            (name, options["field"], options.get("order", "asc"), options.get("missing_bucket"))
        )
    counts: Counter[tuple[Any, ...]] = Counter()
    for mappings, doc in docs:
        per_source: list[list[Any]] = []
        for _, field_name, _, missing_bucket in sources:
            read = _doc_values(mappings, field_name)
            raw, _ = _field_value(doc, field_name)  # a subfield reads its parent's value
            values = {read(v) for v in (raw if isinstance(raw, list) else [raw]) if v is not None}
            values.discard(None)
            if not values and not missing_bucket:
                break
            per_source.append(sorted(values) or [None])
        else:
            keys: list[tuple[Any, ...]] = [()]
            for values_of_source in per_source:
                keys = [(*k, v) for k in keys for v in values_of_source]
            counts.update(keys)
    directions = [direction for _, _, direction, _ in sources]

    def compare(a: tuple[Any, ...], b: tuple[Any, ...]) -> int:
        """Source by source, each in its order; null (missing_bucket) before any value."""
        for direction, x, y in zip(directions, a, b, strict=True):
            if x == y:
                continue
            result = -1 if x is None or (y is not None and x < y) else 1
            return result if direction == "asc" else -result
        return 0

    ordered = sorted(counts, key=cmp_to_key(compare))
    after = body.get("after")
    if after is not None:
        bound = tuple(after.get(name) for name, *_ in sources)
        ordered = [k for k in ordered if compare(k, bound) > 0]
    names = [name for name, *_ in sources]
    buckets = [
        {"key": dict(zip(names, k, strict=True)), "doc_count": counts[k]}
        for k in ordered[: int(body.get("size", 10))]
    ]
    return {"after_key": buckets[-1]["key"], "buckets": buckets} if buckets else {"buckets": []}


# -- queries ---------------------------------------------------------------------------------
def _field_value(doc: dict[str, Any], field_name: str) -> tuple[Any, str]:
    """("line_content.wildcard") -> (doc["line_content"], "wildcard")."""
    if field_name in doc:
        return doc[field_name], ""
    base, _, sub = field_name.partition(".")
    return doc.get(base), sub


def _fold(token: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", token) if not unicodedata.combining(c))


# As word_delimiter_graph splits: at lower-to-upper changes and letter/digit changes, not at
# upper-to-lower ones (`HTTPResponse` is one part, `parseHTTPResponse` two), and at the rest.
_WORD_PART = re.compile(r"[A-Z]+[a-z]*|[a-z]+|\d+|[^\W\d_]+", re.UNICODE)


def analyze(text: str, analyzer: str) -> list[str]:
    """Approximations of the project's analyzers (see core.mapping)."""
    if analyzer == "code":
        out: list[str] = []
        for token in text.split():
            parts = _WORD_PART.findall(token)
            for t in [token, *parts]:
                t = _fold(t.lower())
                if t and t not in out:
                    out.append(t)
        return out
    if analyzer == "path_parts":
        return [_fold(t.lower()) for t in re.split(r"[/._\-\s]+", text) if t]
    if analyzer == "path_prefixes":
        parts = text.split("/")
        return ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return [t.lower() for t in re.findall(r"\w+", text)]


def code_positions(text: str) -> dict[str, set[int]]:
    """The code analyzer's tokens with their positions, as flatten_graph leaves them: a
    whitespace-separated token at its first part's position, its parts one after another."""
    out: dict[str, set[int]] = {}
    position = 0
    for token in text.split():
        parts = _WORD_PART.findall(token)
        out.setdefault(_fold(token.lower()), set()).add(position)
        for offset, part in enumerate(parts):
            out.setdefault(_fold(part.lower()), set()).add(position + offset)
        position += max(1, len(parts))
    return out


def _word_matches(word: str, positions: dict[str, set[int]]) -> bool:
    """One word of a `match` query with operator and, as Lucene reads its token graph: the
    whole word, or its parts as a phrase (auto_generate_synonyms_phrase_query); a word of
    one part matches that part too."""
    parts = [_fold(p.lower()) for p in _WORD_PART.findall(word)]
    if _fold(word.lower()) in positions:
        return True
    if len(parts) == 1:
        return parts[0] in positions
    return any(
        all(start + k in positions.get(part, ()) for k, part in enumerate(parts))
        for start in positions.get(parts[0], ())
        if parts
    )


def _analyzer_of(mappings: dict[str, Any], field_name: str) -> str | None:
    base, _, sub = field_name.partition(".")
    spec = mappings.get("properties", {}).get(base, {})
    if sub:
        spec = spec.get("fields", {}).get(sub, {})
    if spec.get("type") == "text":
        return spec.get("analyzer", "standard")
    return None


def _wildcard_regex(pattern: str, case_insensitive: bool) -> re.Pattern[str]:
    """Lucene's wildcard syntax: `*` any run, `?` one character, `\\` makes the next literal."""
    out = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            out.append(re.escape(next(chars, "\\")))
        else:
            out.append(".*" if ch == "*" else "." if ch == "?" else re.escape(ch))
    return re.compile("".join(out) + r"\Z", re.DOTALL | (re.IGNORECASE if case_insensitive else 0))


def _matches(
    mappings: dict[str, Any], query: dict[str, Any], doc_id: str, doc: dict[str, Any]
) -> bool:
    ((kind, spec),) = query.items()
    if kind == "match_all":
        return True
    if kind == "ids":
        return doc_id in spec.get("values", [])
    if kind == "bool":

        def many(key: str) -> list[dict[str, Any]]:
            value = spec.get(key) or []
            return value if isinstance(value, list) else [value]

        if not all(_matches(mappings, q, doc_id, doc) for q in many("must") + many("filter")):
            return False
        if any(_matches(mappings, q, doc_id, doc) for q in many("must_not")):
            return False
        should = many("should")
        if should:
            need = int(spec.get("minimum_should_match", 0 if many("must") + many("filter") else 1))
            return sum(_matches(mappings, q, doc_id, doc) for q in should) >= need
        return True
    if kind == "exists":
        return _field_value(doc, spec["field"])[0] is not None
    ((field_name, arg),) = spec.items()
    value, _ = _field_value(doc, field_name)
    if value is None:
        return False
    if isinstance(value, list):  # a field holding an array matches when one value does
        base = field_name if field_name in doc else field_name.partition(".")[0]
        return any(_matches(mappings, query, doc_id, {**doc, base: one}) for one in value)
    analyzer = _analyzer_of(mappings, field_name)
    if kind in ("term", "terms"):
        wanted = arg if kind == "terms" else [arg.get("value") if isinstance(arg, dict) else arg]
        if analyzer:
            return any(str(w) in analyze(str(value), analyzer) for w in wanted)
        return any(value == w or str(value) == str(w) for w in wanted)
    if kind == "range":
        ops = {
            "gt": lambda a, b: a > b,
            "gte": lambda a, b: a >= b,
            "lt": lambda a, b: a < b,
            "lte": lambda a, b: a <= b,
        }
        return all(ops[op](value, bound) for op, bound in arg.items() if op in ops)
    if kind in ("prefix", "wildcard"):
        pattern = str(arg.get("value") if isinstance(arg, dict) else arg)
        insensitive = bool(isinstance(arg, dict) and arg.get("case_insensitive"))
        if kind == "prefix":
            pattern = pattern.replace("*", "\\*") + "*"
        return bool(_wildcard_regex(pattern, insensitive).match(str(value)))
    if kind == "regexp":  # the syntax Lucene and Python share: . * [] and escaped symbols
        pattern = str(arg.get("value") if isinstance(arg, dict) else arg)
        flags = re.DOTALL | (re.IGNORECASE if arg.get("case_insensitive") else 0)
        return re.fullmatch(pattern, str(value), flags) is not None
    if kind in ("match", "match_phrase"):
        text = arg.get("query") if isinstance(arg, dict) else arg
        tokens = analyze(str(value), analyzer or "keyword_like") if analyzer else [str(value)]
        wanted = analyze(str(text), analyzer) if analyzer else [str(text)]
        if kind == "match_phrase":
            n = len(wanted)
            return any(tokens[i : i + n] == wanted for i in range(len(tokens) - n + 1))
        operator = arg.get("operator", "or").lower() if isinstance(arg, dict) else "or"
        if operator == "and" and analyzer == "code":
            positions = code_positions(str(value))
            return all(_word_matches(word, positions) for word in str(text).split())
        hits = [w in tokens for w in wanted]
        return all(hits) if operator == "and" else any(hits)
    raise ValueError(f"query [{kind}] is not supported by the stand-in")


def _filtered(value: Any, paths: list[str]) -> Any:
    """Elasticsearch's response filtering (filter_path) for inclusive paths of names and `*`.

    As in Elasticsearch, objects left empty are dropped, and arrays are filtered element-wise.
    Exclusions (`-path`) and `**` are not implemented by the stand-in.
    """
    if any(p.startswith("-") or "**" in p for p in paths):
        raise ValueError("the stand-in supports only inclusive filter_path names and *")
    patterns = [p.split(".") for p in paths if p]
    kept = _filter_value(value, patterns)
    return {} if kept is _DROPPED else kept


def _filter_value(value: Any, patterns: list[list[str]]) -> Any:
    if any(not p for p in patterns):
        return value  # a pattern ended here: the whole value is kept
    if isinstance(value, list):
        kept = [_filter_value(v, patterns) for v in value]
        return [v for v in kept if v is not _DROPPED]
    if not isinstance(value, dict):
        return _DROPPED
    out = {}
    for key, item in value.items():
        rest = [p[1:] for p in patterns if p[0] in ("*", key)]
        if rest:
            kept = _filter_value(item, rest)
            if kept is not _DROPPED and kept != {}:
                out[key] = kept
    return out if out else _DROPPED


_DROPPED = object()
