"""RFC 9457 problem details: the one place where errors become HTTP responses."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from models_store.errors import AlreadyExistsError, IntegrityError, NotFoundError, StoreError
from unlearnd.ingest.errors import DatasetTooLargeError, InvalidDatasetError, InvalidModelError
from unlearning.errors import UnlearningError

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """Raise from a route to answer with a problem+json body."""

    def __init__(self, status: int, title: str, detail: str | None = None,
                 headers: dict[str, str] | None = None, **extensions: Any):
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.headers, self.extensions = headers or {}, extensions


def problem_response(request: Request, status: int, title: str, detail: str | None = None,
                     headers: dict[str, str] | None = None, **extensions: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "instance": request.url.path}
    if detail:
        body["detail"] = detail
    body.update(extensions)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def describe_errors(errors: Sequence[Mapping[str, Any]], *, limit: int = 5, prefix: str = "",
                    unnamed: str = "") -> str:
    """Pydantic validation errors as one line for a problem's detail: "where: message; ..." for the first
    `limit`. `where` is the error's dotted location under `prefix`; one without a location is called
    `unnamed`, or shown as its bare message."""
    lines = []
    for error in errors[:limit]:
        where = ".".join(map(str, [prefix, *error["loc"]] if prefix else error["loc"])) or unnamed
        lines.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(lines)


# Domain error -> (status, title). First match wins, so subclasses come before their bases.
_DOMAIN_ERRORS: list[tuple[type[Exception], int, str]] = [
    (NotFoundError, 404, "Not found"),
    (AlreadyExistsError, 409, "Already exists"),
    (IntegrityError, 503, "Integrity check failed"),
    (StoreError, 422, "Invalid name or reference"),
    (InvalidDatasetError, 422, "Invalid dataset"),
    (DatasetTooLargeError, 413, "Dataset too large"),
    (InvalidModelError, 422, "Invalid model"),
    (UnlearningError, 422, "Invalid unlearning request"),
]


def register_exception_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(request, exc.status, exc.title, exc.detail, exc.headers, **exc.extensions)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()[:20]]
        detail = describe_errors(errors, limit=1)
        return problem_response(request, 422, "Invalid request", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = HTTPStatus(exc.status_code).phrase
        detail = str(exc.detail) if exc.detail and str(exc.detail) != title else {
            404: f"no endpoint at {request.url.path} (see /docs)",
            405: f"{request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, title)
        return problem_response(request, exc.status_code, title, detail,
                                headers=getattr(exc, "headers", None))

    for error_type, status, title in _DOMAIN_ERRORS:
        def make(status: int = status, title: str = title):
            async def _domain(request: Request, exc: Exception) -> JSONResponse:
                if status >= 500:
                    log.error("%s: %s", title, exc)
                return problem_response(request, status, title, str(exc))
            return _domain
        app.add_exception_handler(error_type, make())

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return problem_response(request, 500, "Internal server error")
