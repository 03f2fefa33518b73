"""RFC 9457 problem details: the one place where errors become HTTP responses."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.dependencies.utils import get_flat_params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import Scope

from models_store.errors import AlreadyExistsError, IntegrityError, NotFoundError, StaleStateError, StoreError
from unlearnd.ingest.errors import DatasetTooLargeError, InvalidDatasetError, InvalidModelError
from unlearnd.logs import REQUEST_ID, REQUEST_ID_HEADER
from unlearning.errors import UnlearningError

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
V2_ERROR_JSON = "application/json"
"""The media type of a problem under /v2/: what Open Inference Protocol clients and servers use for errors (KServe's
Python client shows a server's `error` only from an application/json answer)."""


def app_path(scope: Scope) -> str:
    """The request's path as the app's routes and OpenAPI document write it: behind a root path, without it (only
    where the root path ends a segment, as Starlette's router strips it)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        return path[len(root):]
    return path


def _under_v2(scope: Scope) -> bool:
    return f"{app_path(scope)}/".startswith("/v2/")


def problem_media_type(scope: Scope) -> str:
    """application/problem+json (RFC 9457), or V2_ERROR_JSON under /v2/."""
    return V2_ERROR_JSON if _under_v2(scope) else PROBLEM_JSON


def problem_body(scope: Scope, status: int, title: str, detail: str | None = None,
                 **extensions: Any) -> dict[str, Any]:
    """An RFC 9457 problem document about the request of `scope`; under /v2/ with one more member, `error` (the
    detail, or the title), the member Open Inference Protocol clients read."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status,
                            "instance": scope.get("path", "")}
    if detail:
        body["detail"] = detail
    if _under_v2(scope):
        body["error"] = detail or title
    body.update(extensions)
    return body


class Problem(Exception):
    """Raise from a route to answer with a problem (`problem_response`)."""

    def __init__(self, status: int, title: str, detail: str | None = None,
                 headers: dict[str, str] | None = None, **extensions: Any):
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.headers, self.extensions = headers or {}, extensions


class ProblemFieldError(BaseModel):
    loc: list[str | int] = Field(..., description="Where: 'body', 'query', 'path' or 'header', then the field.")
    msg: str


class ProblemDetails(BaseModel):
    """The OpenAPI schema `Problem`: what every error answers, as `application/problem+json` (under /v2/, with
    `error`, as `application/json`)."""

    model_config = ConfigDict(title="Problem", extra="allow", json_schema_extra={"examples": [{
        "type": "about:blank", "title": "Not found", "status": 404,
        "detail": "no request fr_0123456789abcdef", "instance": "/v1/forget-requests/fr_0123456789abcdef"}]})

    type: str = Field("about:blank", description="Always about:blank: `title` is the HTTP status phrase or a "
                                                 "short summary.")
    title: str
    status: int
    detail: str | None = Field(None, description="What is wrong, in one line.")
    instance: str | None = Field(None, description="The path that answered.")
    errors: list[ProblemFieldError] | None = Field(None, description="422 from request validation: every "
                                                   "field error (at most 20).")
    error: str | None = Field(None, description="Only under /v2/: the detail (or title) again, the member Open "
                                                "Inference Protocol clients read.")


PROBLEM_REF = "#/components/schemas/Problem"
_PROBLEM_DESCRIPTIONS = {
    400: "The body cannot be parsed: not UTF-8 JSON, or a malformed multipart form",
    401: "No API key, or not a valid one (`WWW-Authenticate: Bearer`)",
    403: "The key's role may not call this endpoint",
    404: "No such model, request or dataset",
    409: "Conflicts with the current state",
    413: "Body too large",
    422: "Invalid request: the detail names the field",
    503: "Integrity check failed or a dependency is unavailable",
}


def problem_responses(*statuses: int, descriptions: Mapping[int, str] | None = None,
                      media_type: str = PROBLEM_JSON) -> dict[int | str, Any]:
    """`responses=` for a route: each status documented as `media_type` with the Problem schema (a route's own
    `description` wins); `document_problems` gives those of /v2/ routes V2_ERROR_JSON."""
    descriptions = descriptions or {}
    return {status: {"description": descriptions.get(status) or _PROBLEM_DESCRIPTIONS.get(status)
                     or HTTPStatus(status).phrase,
                     "content": {media_type: {"schema": {"$ref": PROBLEM_REF}}}} for status in statuses}


def _roles_in(dependant: Any) -> tuple[str, ...] | None:
    call = dependant.call
    if call is not None and getattr(call, "__qualname__", "").startswith("require_roles."):
        return tuple(inspect.getclosurevars(call).nonlocals.get("roles", ()))
    for sub in dependant.dependencies:
        roles = _roles_in(sub)
        if roles is not None:
            return roles
    return None


def document_problems(router: APIRouter, *, all_roles: Sequence[str]) -> None:
    """Make the OpenAPI say what the error handlers send, on every route of `router` (before it is
    included): 400 where FastAPI parses a body, 401/403 where it needs a key (403 only when some role is
    refused), 404 where it has path parameters, 422 where it takes input, each a `Problem` as the route's
    problems are served (application/problem+json; V2_ERROR_JSON under /v2/); an error response the route
    documents without a body gets that body, and one with a Problem body gets that media type. FastAPI's
    `HTTPValidationError` is then never used. Idempotent."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        statuses: list[int] = [400] if route.body_field is not None else []
        roles = _roles_in(route.dependant)
        if roles is not None:
            statuses += [401] + ([403] if set(all_roles) - set(roles) else [])
        if route.param_convertors:  # path parameters name something that may not exist
            statuses.append(404)
        if (get_flat_params(route.dependant) or route.body_field is not None
                or "requestBody" in (route.openapi_extra or {})):
            statuses.append(422)
        media_type = problem_media_type({"path": route.path})
        documented = problem_responses(*statuses, media_type=media_type)
        for status, response in route.responses.items():  # the route's own word wins
            code = int(status) if str(status).isdigit() else 0
            if code >= 400 and "content" not in response and "model" not in response:
                response = {**problem_responses(code, media_type=media_type)[code], **response}
            elif code >= 400 and set(response.get("content", {})) == {PROBLEM_JSON}:
                response = {**response, "content": {media_type: response["content"][PROBLEM_JSON]}}
            documented[status] = response
        route.responses = documented


def add_openapi_schemas(app: FastAPI, schemas: Sequence[type[BaseModel]] = ()) -> None:
    """Add `Problem` and `schemas` (models routes reference by $ref from `openapi_extra`) to the OpenAPI
    components."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()  # cached by FastAPI on app.openapi_schema; the additions below are idempotent
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (ProblemDetails, *schemas):
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in model_schema.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components.setdefault("Problem" if model is ProblemDetails else model.__name__,
                                  model_schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


_HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def _allowed_methods(request: Request, allow: str | None) -> str:
    """Every method the API takes at the request's path, for a 405's Allow header (RFC 9110, section 15.5.6).
    Starlette names only those of the first route that matches the path; a path served by several routes (GET and
    POST /v1/models) takes the methods of them all, as the OpenAPI document lists them."""
    table = getattr(request.app.state, "methods_by_path", None)
    if table is None:
        table = request.app.state.methods_by_path = [
            (compile_path(path)[0], {method.upper() for method in operations if method in _HTTP_METHODS})
            for path, operations in request.app.openapi()["paths"].items()]
    path = app_path(request.scope)
    methods = {method.strip() for method in (allow or "").split(",") if method.strip()}
    for pattern, taken in table:
        if pattern.match(path):
            methods |= taken
    if "GET" in methods:
        methods.add("HEAD")  # service.head.HeadAsGet
    return ", ".join(sorted(methods))


def problem_response(request: Request, status: int, title: str, detail: str | None = None,
                     headers: dict[str, str] | None = None, **extensions: Any) -> JSONResponse:
    return JSONResponse(problem_body(request.scope, status, title, detail, **extensions), status_code=status,
                        media_type=problem_media_type(request.scope), headers=headers)


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
    (StaleStateError, 409, "State changed meanwhile"),
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
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request, headers.get("Allow"))
        return problem_response(request, exc.status_code, title, detail, headers=headers or None)

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
        # Starlette calls this outside every middleware, once RequestContext is done: the request id is taken
        # back from the scope, for the log line and the header.
        request_id = request.scope.get("state", {}).get(REQUEST_ID)
        with structlog.contextvars.bound_contextvars(**{REQUEST_ID: request_id} if request_id else {}):
            log.exception("unhandled error on %s", request.url.path)
        return problem_response(request, 500, "Internal server error",
                                headers={REQUEST_ID_HEADER: request_id} if request_id else None)
