"""A small Python client of the unlearnd API over httpx: every /v1 endpoint, one error type, polite retries.

    from unlearnd.client import Client

    with Client("http://127.0.0.1:8000", api_key=GOV) as api:
        accepted = api.submit("digits-cnn", classes=[3], reason="DSR-2026-0042")
        done = api.wait(accepted["id"], on_progress=lambda r: print(r["progress"]["fraction"]))
        receipt = api.receipt(done["id"])

Answers are the API's JSON (dicts, typed below where the shape is fixed); an error answer raises `UnlearndError`
carrying the RFC 9457 problem document. Retries are a short loop here (no retry library is a dependency): a 429
or 503 answer is retried after its `Retry-After` (seconds or an HTTP date; else an exponential backoff), a
connection that could not be opened is retried for every method, and one that broke after the request was sent
only for requests that are safe to repeat (GET, DELETE, and forget requests, which always carry an
Idempotency-Key, so the server answers a repeat with the first answer).
"""

from __future__ import annotations

import json
import mimetypes
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal, TypedDict

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "reverted"})
"""Statuses a forget request does not leave by itself (`reverted` only follows `succeeded`)."""
Method = Literal["auto", "forget_vector", "zero_shot"]


class Progress(TypedDict, total=False):
    stage: str
    """queued, waiting to retry, loading, calibrating, optimising, verifying, publishing, done or cancelled."""
    stage_fraction: float | None
    fraction: float
    elapsed_s: float | None
    eta_s: float | None
    """None until the worker has measured a rate."""
    attempt: int | None


class ForgetRequest(TypedDict, total=False):
    id: str
    model: str
    classes: list[int] | None
    samples: list[str] | None
    method: str
    reason: str | None
    status: str
    progress: Progress
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    result: dict[str, Any] | None
    attempts: int
    callback_url: str | None
    callback: dict[str, Any] | None
    cancel_requested: bool


class ForgetRequestPage(TypedDict):
    data: list[ForgetRequest]
    count: int
    next_cursor: str | None


class UnlearndError(Exception):
    """An error answer of the API, with its problem document (`title`, `status`, `detail`, ...), or a request
    that could not be sent (`status` None, the cause in `detail`)."""

    def __init__(self, status: int | None, problem: dict[str, Any]):
        self.status, self.problem = status, problem
        super().__init__(f"{status or 'no answer'} {problem.get('title', '')}: {problem.get('detail') or ''}".strip())

    @property
    def title(self) -> str:
        return str(self.problem.get("title", ""))

    @property
    def detail(self) -> str | None:
        return self.problem.get("detail")

    @classmethod
    def of(cls, response: httpx.Response) -> UnlearndError:
        try:
            problem = response.json()
        except ValueError:
            problem = None
        if not isinstance(problem, dict):  # not ours (a proxy's page): keep what it said
            problem = {"title": response.reason_phrase, "status": response.status_code,
                       "detail": response.text[:500] or None}
        return cls(response.status_code, problem)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry: `attempts` tries in all; waits follow `Retry-After` when the answer has
    one, else `backoff_s` doubling; no single wait is longer than `max_wait_s`."""

    attempts: int = 5
    backoff_s: float = 0.5
    max_wait_s: float = 30.0
    statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 503}))

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts counts the first try too: at least 1")


NO_RETRIES = RetryPolicy(attempts=1)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


def retry_after_s(response: httpx.Response) -> float | None:
    """The answer's Retry-After in seconds (delay-seconds or an HTTP date), or None when it has none."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class Client:
    """The unlearnd API at `base_url`, with `api_key` sent as `Authorization: Bearer <key>`."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, *, timeout_s: float = 60.0,
                 retry: RetryPolicy = RetryPolicy(), transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s,
                                  transport=transport)
        self.retry, self._sleep = retry, sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- the one place requests are sent ---------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send, retrying as `retry` says; the 2xx answer, else UnlearndError."""
        repeatable = method in _SAFE_METHODS or "Idempotency-Key" in (kwargs.get("headers") or {})
        for attempt in range(1, self.retry.attempts + 1):
            last = attempt == self.retry.attempts
            try:
                response = self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing reached the server
                if last:
                    raise UnlearndError(None, {"title": "Cannot connect", "detail": f"{self._http.base_url}: "
                                               f"{exc}"}) from exc
                self._sleep(self._backoff(attempt))
                continue
            except httpx.TransportError as exc:  # sent, but the answer was lost
                if last or not repeatable:
                    raise UnlearndError(None, {"title": "No answer", "detail": f"{method} {path}: {exc}"}) from exc
                self._sleep(self._backoff(attempt))
                continue
            if response.status_code in self.retry.statuses and not last:
                wait = retry_after_s(response)
                self._sleep(min(self.retry.max_wait_s, self._backoff(attempt) if wait is None else wait))
                continue
            if response.is_error:
                raise UnlearndError.of(response)
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _backoff(self, attempt: int) -> float:
        return min(self.retry.max_wait_s, self.retry.backoff_s * 2 ** (attempt - 1))

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # ---- health and keys -------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._json("GET", "/healthz")

    def ready(self) -> dict[str, Any]:
        """{"status": "ready", "workers": n}; UnlearndError 503 saying why not."""
        return self._json("GET", "/readyz")

    def keys(self) -> dict[str, Any]:
        """The server's Ed25519 public keys (JWKS-like): save them to check receipts offline."""
        return self._json("GET", "/v1/keys")

    # ---- models ----------------------------------------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/models")["data"]

    def model(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/models/{name}")

    def state(self, model: str) -> dict[str, Any]:
        """The served state of `model` and its history."""
        return self._json("GET", f"/v1/models/{model}/state")

    def rollback(self, model: str, state_version: int, *, reason: str | None = None,
                 reinstate: Sequence[str] = (), force: bool = False) -> dict[str, Any]:
        """Serve `state_version` again (admin); see the README on `reinstate` and `force`."""
        body = {"state_version": state_version, "reason": reason, "reinstate": list(reinstate), "force": force}
        return self._json("POST", f"/v1/models/{model}/rollback", json=body)

    def predict(self, model: str, inputs: Sequence[Any]) -> dict[str, Any]:
        """Predictions for images given as C×H×W nested lists of floats in [0, 1]."""
        return self._json("POST", f"/v1/models/{model}/predict", json={"inputs": list(inputs)})

    def predict_images(self, model: str, images: Iterable[str | Path]) -> dict[str, Any]:
        """Predictions for PNG or JPEG files, in their order (sent as one multipart body)."""
        parts = []
        for image in images:
            path = Path(image)
            media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            parts.append(("images", (path.name, path.read_bytes(), media)))
        return self._json("POST", f"/v1/models/{model}/predict", files=parts)

    # ---- forget requests -------------------------------------------------------------------------------------
    def submit(self, model: str, *, classes: Sequence[int] | None = None, samples: Sequence[str] | None = None,
               method: Method = "auto", reason: str | None = None, callback_url: str | None = None,
               idempotency_key: str | None = None) -> ForgetRequest:
        """Ask `model` to forget `classes` or `samples` (exactly one); the accepted record (status queued).

        Sent with an Idempotency-Key (a new one unless given), so a retry after a lost answer never records the
        request twice."""
        body: dict[str, Any] = {"method": method}
        if classes is not None:
            body["classes"] = list(classes)
        if samples is not None:
            body["samples"] = list(samples)
        if reason is not None:
            body["reason"] = reason
        if callback_url is not None:
            body["callback_url"] = callback_url
        headers = {"Idempotency-Key": idempotency_key or f"unlearnd-client-{uuid.uuid4().hex}"}
        return self._json("POST", f"/v1/models/{model}/forget-requests", json=body, headers=headers)

    def get(self, request_id: str) -> ForgetRequest:
        return self._json("GET", f"/v1/forget-requests/{request_id}")

    def list_requests(self, *, model: str | None = None, status: str | Sequence[str] | None = None,
                      order: Literal["asc", "desc"] = "asc", limit: int = 50,
                      cursor: str | None = None) -> ForgetRequestPage:
        """One page of requests (pass its `next_cursor` back as `cursor` for the next)."""
        statuses = [status] if isinstance(status, str) else list(status or [])
        params: dict[str, Any] = {"order": order, "limit": limit}
        if model is not None:
            params["model"] = model
        if statuses:
            params["status"] = ",".join(statuses)
        if cursor is not None:
            params["cursor"] = cursor
        return self._json("GET", "/v1/forget-requests", params=params)

    def iter_requests(self, **filters: Any) -> Iterator[ForgetRequest]:
        """Every request matching `filters` (those of `list_requests`), page after page."""
        cursor = None
        while True:
            page = self.list_requests(**filters, cursor=cursor)
            yield from page["data"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def cancel(self, request_id: str) -> ForgetRequest:
        """Cancel a request that has not finished: queued ones at once, running ones at their next progress
        report (`cancel_requested`); UnlearndError 409 when it has finished."""
        return self._json("DELETE", f"/v1/forget-requests/{request_id}")

    def receipt(self, request_id: str) -> dict[str, Any]:
        """The signed receipt of a succeeded request, exactly as issued (check it with
        `unlearnd verify-receipt`)."""
        return self._json("GET", f"/v1/forget-requests/{request_id}/receipt")

    def report_png(self, request_id: str) -> bytes:
        """The PNG report of a succeeded request: δ, examples before and after, per-class accuracy."""
        return self.request("GET", f"/v1/forget-requests/{request_id}/report.png").content

    def wait(self, request_id: str, *, timeout_s: float | None = None, max_poll_s: float = 5.0,
             on_progress: Callable[[ForgetRequest], None] | None = None) -> ForgetRequest:
        """Poll until the request has ended and return its record. Waits as the server's `Retry-After` says (at
        most `max_poll_s` between reads); `on_progress` gets every record read, the last one included.
        TimeoutError after `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            response = self.request("GET", f"/v1/forget-requests/{request_id}")
            record: ForgetRequest = response.json()
            if on_progress is not None:
                on_progress(record)
            if record["status"] in TERMINAL:
                return record
            wait = min(max_poll_s, retry_after_s(response) or max_poll_s)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"request {request_id} is still {record['status']} after {timeout_s} s")
                wait = min(wait, remaining)
            self._sleep(wait)

    # ---- registry (admin) ------------------------------------------------------------------------------------
    def register_model(self, file: str | Path, metadata: dict[str, Any], *, arch: str | None = None,
                       new_version: bool = False) -> dict[str, Any]:
        """Register a TorchScript archive, or a state_dict (.pt or .safetensors) of the bare network with `arch`;
        `new_version`: as the next version of an existing model."""
        path = Path(file)
        form = {"metadata": json.dumps(metadata), **({"arch": arch} if arch else {})}
        return self._json("POST", "/v1/models", params={"new_version": str(new_version).lower()}, data=form,
                          files={"file": (path.name, path.read_bytes(), "application/octet-stream")})

    def register_dataset(self, name: str, file: str | Path) -> dict[str, Any]:
        """Upload an .npz dataset (x_train, y_train, optional ids_train, x_test, y_test, class_names)."""
        path = Path(file)
        return self._json("POST", "/v1/datasets", data={"name": name},
                          files={"file": (path.name, path.read_bytes(), "application/octet-stream")})

    def register_dataset_source(self, name: str, source: str, root: str | None = None) -> dict[str, Any]:
        """Register data already on the server: builtin:digits, torchvision:<name> or imagefolder (with `root`)."""
        return self._json("POST", "/v1/datasets", json={"name": name, "source": source, "root": root})

    def datasets(self) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/datasets")["data"]

    def dataset(self, name: str, *, include_ids: bool = False) -> dict[str, Any]:
        return self._json("GET", f"/v1/datasets/{name}", params={"include_ids": str(include_ids).lower()})

    def audit(self, **filters: Any) -> dict[str, Any]:
        """One page of the audit log (admin): filters `action`, `request_id`, `model`, `actor`, `limit`,
        `cursor`."""
        return self._json("GET", "/v1/audit", params={k: v for k, v in filters.items() if v is not None})
