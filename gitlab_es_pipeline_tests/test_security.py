"""Credentials go where they are meant to and nowhere else.

- The GitLab token never follows a redirect to another origin (requests strips only the
  Authorization header there; python-gitlab sends the token as PRIVATE-TOKEN). Tested over real
  HTTP: a GitLab-like server on 127.0.0.1 redirects to a second server, which records what it got.
- Credentials over plain http:// are allowed only to loopback addresses, judged by parsing the
  address, not by the first characters of the host name.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import ValidationError

from gitlab_es_pipeline.clients.gitlab import GitLabError, GitLabSource, token_may_follow
from gitlab_es_pipeline.defs.resources import ElasticsearchResource, GitLabResource

TOKEN = "glpat-CANARY-redirect-3d9e1a"
# (status, headers, body) for a request's path and headers
Answer = Callable[[str, dict[str, str]], tuple[int, dict[str, str], bytes]]


class _Server:
    """A tiny HTTP/1.1 server on a thread: answers with `answer`, records every request."""

    def __init__(self, host: str, answer: Answer) -> None:
        owner = self
        self.received: list[tuple[str, dict[str, str]]] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                headers = dict(self.headers.items())
                owner.received.append((self.path, headers))
                status, extra, body = answer(self.path, headers)
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer((host, 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://{host}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@contextmanager
def _serving(host: str, answer: Answer) -> Iterator[_Server]:
    server = _Server(host, answer)
    try:
        yield server
    finally:
        server.stop()


def _loopback_host_available(host: str) -> bool:
    try:
        with socket.socket() as probe:
            probe.bind((host, 0))
    except OSError:
        return False
    return True


def _authorised(headers: dict[str, str]) -> bool:
    lowered = {k.lower(): v for k, v in headers.items()}
    return lowered.get("private-token") == TOKEN


def _project_json(path: str) -> dict[str, Any]:
    return {"id": 7, "path_with_namespace": "team/app", "default_branch": "main", "path": path}


def _answer_anything(path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """What an unrelated host might answer: content, no questions asked."""
    if "/repository/" in path:
        return 200, {"Content-Type": "application/octet-stream"}, b"not from GitLab"
    return 200, {"Content-Type": "application/json"}, json.dumps(_project_json(path)).encode()


_FETCHES: dict[str, Callable[[GitLabSource], object]] = {
    "api": lambda source: source.project("team/app"),
    "archive (streamed)": lambda source: b"".join(source.archive_chunks(7, "a" * 40)),
    "raw blob (streamed)": lambda source: source.raw_blob(7, "b" * 40),
}


@pytest.mark.parametrize("fetch", list(_FETCHES))
@pytest.mark.parametrize("elsewhere_host", ["127.0.0.2", "127.0.0.1"])
def test_the_token_never_follows_a_redirect_to_another_origin(
    fetch: str, elsewhere_host: str
) -> None:
    """127.0.0.2 is another host (Linux routes all of 127.0.0.0/8 to loopback); 127.0.0.1 on
    another port is the same host but another origin: both are refused."""
    if not _loopback_host_available(elsewhere_host):
        pytest.skip(f"{elsewhere_host} is not a loopback address here")
    with _serving(elsewhere_host, _answer_anything) as elsewhere:

        def redirect(path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
            return 302, {"Location": elsewhere.url + path}, b""

        with _serving("127.0.0.1", redirect) as gitlab:
            source = GitLabSource(gitlab.url, TOKEN, timeout=10, max_retries=0)
            error: GitLabError | None = None
            try:
                _FETCHES[fetch](source)
            except GitLabError as exc:
                error = exc
            assert gitlab.received and _authorised(gitlab.received[0][1])
            for _, headers in elsewhere.received:
                assert TOKEN not in json.dumps(headers), f"the token reached {elsewhere.url}"
            # Refused before it is sent: the other origin sees no request at all.
            assert elsewhere.received == []
    assert error is not None
    message = str(error)
    assert "redirect" in message and elsewhere.url in message and "GITLAB_URL" in message
    assert TOKEN not in message and "PRIVATE-TOKEN" not in message.upper()
    assert not error.permanent  # a moved instance or a maintenance page: not the repository


def test_a_redirect_within_gitlab_keeps_working_with_the_token() -> None:
    """A renamed project answers 301 to its new path on the same host: followed, token and all,
    for API answers and streamed downloads alike."""

    def answer(path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if "old" in path:
            return 301, {"Location": path.replace("old", "new")}, b""  # relative, as GitLab
        if not _authorised(headers):
            return 401, {"Content-Type": "application/json"}, b'{"message":"401 Unauthorized"}'
        return _answer_anything(path, headers)

    with _serving("127.0.0.1", answer) as gitlab:
        source = GitLabSource(gitlab.url, TOKEN, timeout=10, max_retries=0)
        assert source.project("team/old")["id"] == 7
        assert b"".join(source.archive_chunks(7, "old")) == b"not from GitLab"
        assert source.raw_blob(7, "old") == b"not from GitLab"
    assert [("old" in p, _authorised(h)) for p, h in gitlab.received] == [
        (True, True),
        (False, True),
    ] * 3


@pytest.mark.parametrize(
    ("old", "new", "follows"),
    [
        ("http://gitlab.example.com/a", "http://gitlab.example.com/b", True),
        ("https://gitlab.example.com/a", "https://gitlab.example.com:443/b", True),
        ("http://gitlab.example.com/a", "https://gitlab.example.com/a", True),  # upgrade
        ("https://gitlab.example.com/a", "http://gitlab.example.com/a", False),  # downgrade
        ("https://gitlab.example.com/a", "https://elsewhere.example/a", False),
        ("https://gitlab.example.com/a", "https://gitlab.example.com.evil.example/a", False),
        ("http://127.0.0.1:8080/a", "http://127.0.0.1:8081/a", False),
        ("http://gitlab.example.com:8080/a", "https://gitlab.example.com:8443/a", False),
    ],
)
def test_which_redirects_the_token_follows(old: str, new: str, follows: bool) -> None:
    """The same rule requests applies to an Authorization header: same host, and the same
    scheme and port, or the upgrade from http to https on the standard ports."""
    assert token_may_follow(old, new) is follows


_REFUSED = [
    "http://127.attacker.example",
    "http://127.0.0.1.attacker.example:8080",
    "http://localhost.attacker.example",
    "http://127.1",  # not an address ipaddress accepts: a name, so resolved through DNS
    "http://[::2]:8080",
    "http://10.0.0.1",
]
_LOOPBACK = [
    "http://127.0.0.5",
    "http://127.255.255.254:9200",
    "http://[::1]",
    "http://[::1]:8080",
    "http://[::ffff:127.0.0.1]:8080",
    "http://localhost",
    "http://LOCALHOST:9200",
]


@pytest.mark.parametrize("url", _REFUSED)
def test_a_host_that_only_looks_like_loopback_gets_no_credentials_over_http(url: str) -> None:
    with pytest.raises(ValidationError, match="GITLAB_URL is plain http://") as raised:
        GitLabResource(url=url, token=TOKEN)
    assert TOKEN not in str(raised.value)
    with pytest.raises(ValidationError, match="ELASTICSEARCH_URL is plain http://") as raised:
        ElasticsearchResource(url=url, api_key=TOKEN)
    assert TOKEN not in str(raised.value)


@pytest.mark.parametrize("url", _LOOPBACK)
def test_loopback_addresses_may_have_credentials_over_http(url: str) -> None:
    GitLabResource(url=url, token=TOKEN)
    ElasticsearchResource(url=url, api_key=TOKEN)
