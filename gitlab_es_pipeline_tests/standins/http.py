"""A small threaded HTTP/1.1 server base shared by the stand-ins."""

from __future__ import annotations

import json
import socket
import ssl
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from typing_extensions import Self


class Request:
    def __init__(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        parts = urlsplit(handler.path)
        self.method = handler.command
        self.raw_path = parts.path
        self.query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        self.headers = handler.headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Response:
    def __init__(
        self,
        status: int = 200,
        body: bytes | Any = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
        stream: Any = None,
    ) -> None:
        self.status = status
        if not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body, separators=(",", ":")).encode()  # compact, as both send it
        self.body = bytes(body)
        self.headers = dict(headers or {})
        self.content_type = content_type
        self.stream = stream  # an iterator of bytes: sent with chunked transfer encoding
        self.filtered = False  # the body already honours the request's filter_path
        self.reset = False  # no answer at all: the connection is reset (TCP RST)
        self.bare = False  # sent with only the given headers (e.g. a 429 with no rate headers)

    @classmethod
    def connection_reset(cls) -> Response:
        """What a client sees when a proxy or a restarting server drops the connection."""
        response = cls(status=0)  # no HTTP status at all; recorded as 0
        response.reset = True
        return response


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up (a killed run, a pooled connection dropped) is not an error of
    the stand-in: no traceback for it in the output. Every other error is still printed."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class StandInServer:
    """Runs `self.handle(request) -> Response` for every request, on a background thread."""

    def __init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "stand-in"
            # Headers and body go out in separate writes; with Nagle's algorithm the body
            # would wait for the client's delayed ACK (40 ms a response on Linux), a cost no
            # real server has.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                response = owner.handle(Request(self, body))
                if response.reset:
                    # SO_LINGER 0: close() sends RST, not FIN, and drops what was unsent.
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.close_connection = True
                    return
                self.send_response(response.status)
                self.send_header("Content-Type", response.content_type)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                if response.stream is not None:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    try:
                        for chunk in response.stream:
                            if chunk:
                                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.write(b"0\r\n\r\n")
                    except owner.BrokenStream:
                        self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(response.body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

        self._scheme = "http"
        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def use_tls(self, certfile: str, keyfile: str) -> Self:
        """Serve HTTPS with this certificate (call before start)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile, keyfile)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._scheme = "https"
        return self

    class BrokenStream(Exception):
        """Raised by a stream to cut the connection mid-body (fault injection)."""

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"{self._scheme}://{host!s}:{port}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def handle(self, request: Request) -> Response:  # pragma: no cover - overridden
        raise NotImplementedError
