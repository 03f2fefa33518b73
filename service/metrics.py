"""Prometheus metrics (prometheus_client): what the API and the workers count, and `GET /metrics`.

Every process started by `unlearnd run` gets `PROMETHEUS_MULTIPROC_DIR=<data_dir>/metrics` (emptied by the
launcher at start), so the metrics below are written to memory-mapped files there by the API, the workers
and their work-horses alike, and the API's `/metrics` aggregates them all (prometheus_client's multiprocess
mode). Without that variable (tests, a bare uvicorn) each process keeps its own, and `/metrics` shows the
API's. The ledger-derived series (`unlearnd_forget_requests`, `unlearnd_callbacks_pending`) are computed from the
ledger at scrape time.

This module imports nothing heavy: the workers import it too, and the API must not import torch.
See docs/operations.md for the list and sample dashboards.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# ---- API ------------------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter("unlearnd_http_requests", "HTTP requests answered, by route template and status.",
                        ["method", "route", "status"])
HTTP_LATENCY = Histogram("unlearnd_http_request_duration_seconds",
                         "Time to answer an HTTP request (until the response has been sent), seconds.",
                         ["method", "route", "status"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
PREDICTIONS = Counter("unlearnd_predictions", "Images predicted (with the unlearning in force applied).",
                      ["model"])
PREDICT_BATCH = Histogram("unlearnd_predict_batch_size", "Images per /predict call that was answered.",
                          ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
FORWARD_BATCH = Histogram("unlearnd_forward_batch_size",
                          "Images per forward pass of the dynamic batcher (predictions of concurrent callers "
                          "gathered together).", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
FORGET_REQUESTS_ACCEPTED = Counter("unlearnd_forget_requests_accepted",
                                   "Forget requests accepted (202, durable in the ledger), by method.", ["method"])
INTEGRITY_REFUSALS = Counter("unlearnd_integrity_refusals",
                             "Predictions refused (503) because the served weights or artifacts do not "
                             "verify against the store.", ["model"])

# ---- workers --------------------------------------------------------------------------------------------
JOB_DURATION = Histogram("unlearnd_job_duration_seconds",
                         "Compute time of one forget job (a batch of coalesced requests), by method and "
                         "outcome (succeeded, failed, guard_refused, cancelled, stale, error), seconds.",
                         ["method", "outcome"],
                         buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600))
GUARD_REFUSALS = Counter("unlearnd_guard_refusals",
                         "Candidates refused by the utility guard (not published), by method.", ["method"])
CALLBACK_ATTEMPTS = Counter("unlearnd_callback_attempts",
                            "Callback delivery attempts by outcome: delivered, retried (failed, another attempt "
                            "follows) or failed (the last attempt failed).", ["outcome"])


def observe_job(method: str, outcome: str, started: float) -> None:
    """Record one job that started at `started` (time.monotonic()) and ended with `outcome`."""
    JOB_DURATION.labels(method, outcome).observe(time.monotonic() - started)


# ---- the HTTP middleware --------------------------------------------------------------------------------
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
"""The methods of RFC 9110 and PATCH: labelled as they are; any other token a client sends is `other`."""


class HTTPMetrics:
    """Counts and times every request by its route template (`/v1/forget-requests/{request_id}`, never the
    raw path; `unmatched` for paths no route has), method (`other` outside RFC 9110's and PATCH: a client
    must not be able to mint series) and status. Pure ASGI, outermost, so it sees
    every answer, 413s from the body limit and 500s included."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path_format", None) or getattr(scope.get("route"), "path", None)
            method = scope.get("method", "")
            labels = (method if method in HTTP_METHODS else "other", route or "unmatched", str(status))
            HTTP_REQUESTS.labels(*labels).inc()
            HTTP_LATENCY.labels(*labels).observe(time.perf_counter() - started)


# ---- ledger-derived series, computed at scrape time -----------------------------------------------------
class LedgerCollector(Collector):
    def __init__(self, ledger: Any):
        self.ledger = ledger

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "unlearnd_forget_requests", "Forget requests in the ledger by method and status (every request "
            "ever accepted; queued + running is the queue depth).", labels=["method", "status"])
        for method, status, count in self.ledger.counts_by_method_and_status():
            family.add_metric([method, status], count)
        yield family
        yield GaugeMetricFamily(
            "unlearnd_callbacks_pending", "Ended requests whose callback is not settled yet (neither delivered nor "
            "given up): attempts remain.", value=self.ledger.count_pending_callbacks())


def exposition(ledger: Any) -> bytes:
    """The text exposition: every process's metrics (multiprocess mode) or this one's, then the ledger's."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    ledger_registry = CollectorRegistry()
    ledger_registry.register(LedgerCollector(ledger))
    return generate_latest(registry) + generate_latest(ledger_registry)


def serve_worker_metrics(port: int, host: str) -> socket.socket:
    """Serve the metrics a worker and its work-horses write to PROMETHEUS_MULTIPROC_DIR over HTTP on host:port,
    from a thread of the calling process (a worker on a host of its own, whose series no API aggregates); returns
    the listening socket, which a forked work-horse closes. The directory is the worker's alone: it is emptied
    first, as `unlearnd run` empties its own (counters restart from zero), so work-horses' files do not pile up."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        raise RuntimeError(f"UNLEARND_WORKER_METRICS_PORT needs {MULTIPROC_ENV}: a directory where the "
                           "worker's work-horses write their metrics (set it in the worker's environment)")
    Path(directory).mkdir(parents=True, exist_ok=True)
    for stale in Path(directory).glob("*.db"):
        stale.unlink()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server.socket


router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response, responses={200: {
    "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
    "description": "Prometheus text exposition (see docs/operations.md)"}})
def metrics(request: Request) -> Response:
    """Prometheus metrics of the API and the workers. No authentication, like /healthz: do not expose it
    publicly (keep it on an internal network or behind the proxy's access control)."""
    return Response(exposition(request.app.state.ledger), media_type=CONTENT_TYPE_LATEST)
