"""ASGI middleware that answers HEAD wherever GET is served (RFC 9110, section 9.3.2: the same status and headers,
no content). FastAPI routes declare GET only, so without it a HEAD is 405."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_content(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        as_get = {**scope, "method": "GET"}  # a copy: the server still sees HEAD and sends no content
        try:
            await self.app(as_get, receive, without_content)
        finally:
            if "route" in as_get:  # what the router matched, for the metrics' route label
                scope["route"] = as_get["route"]
