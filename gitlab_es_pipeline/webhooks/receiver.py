"""The hook receiver: GitLab posts here; what it hears goes to Dagster's storage (heard.py).

An ASGI app on Starlette and uvicorn, both of which Dagster's webserver already brings. At the
door: the secret (`X-Gitlab-Token`, compared in constant time) is required unless the
receiver listens on loopback only; a body over the cap is 413, one GitLab would not send 400,
an event the pipeline has no use for 202 (counted: GitLab disables a hook whose deliveries
keep failing). A delivery is acknowledged only once it is recorded; a storage slower than
`record_timeout_seconds` gets 503 well within GitLab's 10 s, so GitLab may deliver it again.
Deliveries seen before (`Idempotency-Key`, `X-Gitlab-Event-UUID`) and pushes already recorded
at the same commit are acknowledged without recording them twice. See docs/operations.md.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from dagster import DagsterInstance
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gitlab_es_pipeline.core.webhooks import HookEvent, Kind, Malformed, delivery_id, parse
from gitlab_es_pipeline.defs.resources import is_loopback
from gitlab_es_pipeline.webhooks.heard import hear, note_delivery

_REMEMBERED = 10_000  # delivery ids and pushes kept in memory to drop duplicates
_NOTE_SECONDS = 60  # a hook that brought nothing new is noted at most this often


@dataclass
class ReceiverSettings:
    secret: str | None
    max_body_bytes: int = 1 << 20  # GitLab's push payloads hold at most 20 commits
    record_timeout_seconds: float = 5.0

    @classmethod
    def from_env(cls) -> ReceiverSettings:
        return cls(
            secret=os.environ.get("GITLAB_HOOK_SECRET") or None,
            max_body_bytes=int(os.environ.get("HOOK_MAX_BODY_BYTES", 1 << 20)),
            record_timeout_seconds=float(os.environ.get("HOOK_RECORD_TIMEOUT_SECONDS", 5)),
        )


class _Recent:
    """The last few thousand keys seen, oldest forgotten first."""

    def __init__(self, size: int = _REMEMBERED) -> None:
        self._keys: OrderedDict[object, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def seen(self, key: object) -> bool:
        with self._lock:
            return key in self._keys

    def add(self, key: object) -> None:
        with self._lock:
            self._keys[key] = None
            self._keys.move_to_end(key)
            while len(self._keys) > self._size:
                self._keys.popitem(last=False)


@dataclass
class Receiver:
    instance: Callable[[], DagsterInstance]
    settings: ReceiverSettings
    counts: Counter[str] = field(default_factory=Counter)
    last_delivery_at: float | None = None
    _deliveries: _Recent = field(default_factory=_Recent)
    _pushes: _Recent = field(default_factory=_Recent)
    _noted: dict[str, float] = field(default_factory=dict)  # hook -> when last recorded

    def _authentic(self, request: Request) -> bool:
        if self.settings.secret is None:
            return True  # loopback only (serve checks)
        given = request.headers.get("x-gitlab-token", "").encode()
        return hmac.compare_digest(given, self.settings.secret.encode())

    async def _body(self, request: Request) -> bytes | None:
        """The body, or None when it is over the cap (read no further than that)."""
        cap = self.settings.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _answer(self, status: int, outcome: str, **extra: object) -> JSONResponse:
        self.counts[outcome] += 1
        return JSONResponse({"outcome": outcome, **extra}, status_code=status)

    async def hook(self, request: Request) -> JSONResponse:
        if not self._authentic(request):
            return self._answer(401, "refused: wrong or missing X-Gitlab-Token")
        body = await self._body(request)
        if body is None:
            return self._answer(413, "refused: body over the cap")
        try:
            events = parse(body)
        except Malformed as exc:
            return self._answer(400, "refused: malformed", reason=str(exc))
        self.last_delivery_at = time.time()
        if events is None:
            return self._answer(202, "ignored: not an event the pipeline uses")
        delivery = delivery_id({k.lower(): v for k, v in request.headers.items()})
        if delivery is not None and self._deliveries.seen(delivery):
            return self._answer(202, "duplicate delivery")
        fresh = [e for e in events if not self._pushes.seen(_push_key(e))]
        kind = request.headers.get("x-gitlab-event", "hook")[:60]
        hook = f"{kind} {request.headers.get('x-gitlab-webhook-uuid', '')[:60]}".strip()
        if not fresh and time.time() - self._noted.get(hook, 0.0) >= _NOTE_SECONDS:
            # Nothing new, but the hook is alive: noted for `status`, at most once a minute.
            self._noted[hook] = time.time()
            with contextlib.suppress(Exception):  # a note lost costs nothing but the note
                with anyio.fail_after(self.settings.record_timeout_seconds):
                    await anyio.to_thread.run_sync(
                        lambda: note_delivery(self.instance(), hook), abandon_on_cancel=True
                    )
        if fresh:
            self._noted[hook] = time.time()
            try:
                with anyio.fail_after(self.settings.record_timeout_seconds):
                    await anyio.to_thread.run_sync(
                        lambda: hear(self.instance(), fresh, hook), abandon_on_cancel=True
                    )
            except Exception as exc:  # any failure to record is a 503
                reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
                return self._answer(503, "not recorded", reason=reason)
        if delivery is not None:
            self._deliveries.add(delivery)
        for event in fresh:
            self._pushes.add(_push_key(event))
        return self._answer(202, "recorded" if fresh else "duplicate push", events=len(fresh))

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def stats(self, request: Request) -> JSONResponse:
        return JSONResponse(
            {"counts": dict(self.counts), "last_delivery_at": self.last_delivery_at}
        )

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/hooks", self.hook, methods=["POST"]),
                Route("/healthz", self.health, methods=["GET"]),
                Route("/stats", self.stats, methods=["GET"]),
            ]
        )


def _push_key(event: HookEvent) -> object:
    """A push already recorded at this commit is the same want (project events never are)."""
    if event.kind is Kind.PUSH:
        return (event.project_id, event.ref, event.commit)
    return object()  # never seen


def check_exposure(host: str, settings: ReceiverSettings) -> None:
    """Without a secret, anyone who reaches the port could make the pipeline look at
    projects: refused unless only this machine can reach it."""
    if settings.secret is None and not is_loopback(host):
        raise SystemExit(
            f"gitlab-es-pipeline receiver: GITLAB_HOOK_SECRET is not set, and {host} is not a "
            "loopback address: set the secret (and the same one on the hooks), or listen on "
            "127.0.0.1"
        )


def _exit_with_parent() -> None:
    """`gitlab-es-pipeline dev`'s receiver ends when `dagster dev` does, however it ends."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)


def serve(
    host: str, port: int, settings: ReceiverSettings | None = None, exit_with_parent: bool = False
) -> None:
    import uvicorn

    settings = settings or ReceiverSettings.from_env()
    check_exposure(host, settings)
    if exit_with_parent:
        threading.Thread(target=_exit_with_parent, daemon=True).start()
    receiver = Receiver(functools.cache(DagsterInstance.get), settings)
    uvicorn.run(receiver.app(), host=host, port=port, log_level="info", access_log=False)
