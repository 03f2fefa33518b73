"""Request ids and the access log.

Every HTTP request gets an id: the client's `X-Request-ID` when it is 1 to 128 visible ASCII characters, else a new
one (uuid4 hex). It is returned in the `X-Request-ID` response header and bound to the log context, so every line
logged while the request is served carries it, and a forget request accepted by it carries it into its job
(`unlearnd.queue.enqueue_jobs`; a retry, too). With the access log on, one line per request: method, path, status,
duration_ms, client, the caller's role when its key is valid, and the request id.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.deps import role_of
from unlearnd.logs import REQUEST_ID
from unlearnd.logs import REQUEST_ID_HEADER as HEADER

_VALID = re.compile(r"[\x21-\x7e]{1,128}")
"""1 to 128 visible ASCII characters (no spaces, no control characters: safe to log and to echo)."""

log = structlog.stdlib.get_logger("unlearnd.access")


def accepted_request_id(presented: str | None) -> str:
    """The client's request id if it is valid, else a new one."""
    if presented is not None and _VALID.fullmatch(presented):
        return presented
    return uuid.uuid4().hex


def _role(scope: Scope, headers: Headers) -> str | None:
    """The role of the presented API key, None without a valid one (the key itself is never logged)."""
    scheme, _, key = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key:
        return None
    return role_of(scope["app"].state.api_keys, key.strip())


class RequestContext:
    """Pure ASGI middleware, outermost: binds the request id for everything below it, returns it, and writes the
    access log line."""

    def __init__(self, app: ASGIApp, access_log: bool = True):
        self.app, self.access_log = app, access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = accepted_request_id(headers.get(HEADER))
        scope.setdefault("state", {})[REQUEST_ID] = request_id  # for a 500, answered outside every middleware
        started, status = time.perf_counter(), 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        with structlog.contextvars.bound_contextvars(**{REQUEST_ID: request_id}):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if self.access_log:
                    client = scope.get("client")
                    query = scope.get("query_string", b"").decode("latin-1")
                    level = logging.WARNING if status >= 500 else logging.INFO
                    log.log(level, "request", method=scope["method"], path=scope["path"],
                            **({"query": query} if query else {}), status=status,
                            duration_ms=round((time.perf_counter() - started) * 1000, 2),
                            client=client[0] if client else None, role=_role(scope, headers))
