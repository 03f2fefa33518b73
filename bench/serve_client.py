"""The load generator of `bench.serve`: request bodies encoded once (JSON, Open Inference Protocol V2 binary, PNG)
and a closed loop of concurrent HTTP/1.1 keep-alive calls on loopback, timed per request.

The timed calls go through `Connection` (h11 over asyncio streams) rather than a general-purpose client: the load
generator shares the machine's cores with the servers it measures, and httpx spent about 4 ms of CPU per request
at concurrency 32 here (more than the server it measured), h11 about 0.25 ms."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11
import httpx
import numpy as np

V2_DATATYPES = {np.dtype("float32"): "FP32", np.dtype("uint8"): "UINT8"}
"""numpy dtypes the benchmark sends as V2 tensors, with their protocol names."""

MISSING = (404, 405)
"""Statuses that mean the server has no such endpoint (the cell is reported as n/a, not as a failure)."""


@dataclass(frozen=True)
class Call:
    """One prepared request: sent as is, again and again."""

    path: str
    body: bytes
    headers: Mapping[str, str]
    images: int


@dataclass(frozen=True)
class Timing:
    """What one measurement saw: requests completed, images per second over the whole run, latencies."""

    images_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    latencies_s: tuple[float, ...] = field(default=(), repr=False)
    """Each request's latency, in the order sent (not in `as_dict`)."""

    def as_dict(self) -> dict[str, float]:
        return {"images_per_s": round(self.images_per_s, 1), "p50_ms": round(self.p50_ms, 3),
                "p99_ms": round(self.p99_ms, 3), "requests": self.requests}


class EndpointMissing(Exception):
    """The server answers 404/405 on this path: it does not offer the endpoint (yet)."""


class RequestFailed(RuntimeError):
    """A request got an error status, the wrong number of predictions, or no answer (`status` None)."""

    def __init__(self, path: str, status: int | None, detail: str):
        super().__init__(f"{path} answered {status}: {detail[:500]}")
        self.status, self.detail = status, detail[:500]

    @property
    def summary(self) -> str:
        return f"HTTP {self.status}" if self.status is not None else self.detail.split(":")[0]


class Connection:
    """One HTTP/1.1 keep-alive connection, spoken with h11 over asyncio streams (opened again when the server
    closes it). `post` answers (status, body); RequestFailed (status None) when no answer comes."""

    def __init__(self, base_url: str, headers: Mapping[str, str] | None = None):
        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.headers = [("Host", url.netloc), *(headers or {}).items()]
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._http = h11.Connection(h11.CLIENT)

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        try:
            return await self._exchange(path, body, headers)
        except (OSError, EOFError, h11.ProtocolError) as exc:
            self.close()
            raise RequestFailed(path, None, f"{type(exc).__name__}: {exc}") from None

    async def _exchange(self, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
            self._http = h11.Connection(h11.CLIENT)
        reader, writer = self._streams
        request = h11.Request(method="POST", target=path, headers=[
            *self.headers, *headers.items(), ("Content-Length", str(len(body)))])
        writer.write(b"".join([self._http.send(request), self._http.send(h11.Data(data=body)),
                               self._http.send(h11.EndOfMessage())]))
        status, chunks = 0, []
        while True:
            event = self._http.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(1 << 16)
                if not data:
                    raise EOFError("the server closed the connection")
                self._http.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
        if self._http.our_state is h11.DONE and self._http.their_state is h11.DONE:
            self._http.start_next_cycle()
        else:  # the server closes the connection after this answer
            self.close()
        return status, b"".join(chunks)

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def _post(client: httpx.AsyncClient, call: Call) -> httpx.Response:
    """The answer to `call`; RequestFailed when none comes (connection refused or reset, timeout)."""
    try:
        return await client.post(call.path, content=call.body, headers=call.headers)
    except httpx.HTTPError as exc:
        raise RequestFailed(call.path, None, f"{type(exc).__name__}: {exc}") from None


def timing(latencies_s: Sequence[float], images: int, elapsed_s: float) -> Timing:
    """Throughput and latency percentiles (linear interpolation between order statistics, numpy's default)."""
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    p50, p99 = np.percentile(ms, [50, 99])
    return Timing(images / elapsed_s, float(p50), float(p99), len(ms), tuple(latencies_s))


# ---- request bodies ------------------------------------------------------------------------------------------
def json_predict_call(model: str, x: np.ndarray) -> Call:
    """`POST /v1/models/{model}/predict` with the images as nested JSON float lists."""
    body = json.dumps({"inputs": x.tolist()}).encode()
    return Call(f"/v1/models/{model}/predict", body, {"Content-Type": "application/json"}, len(x))


def v2_binary_body(x: np.ndarray, input_name: str) -> tuple[bytes, dict[str, str]]:
    """Body and headers of an Open Inference Protocol V2 inference request carrying `x` as one tensor in the
    binary tensor data extension: the JSON inference header (whose length `Inference-Header-Content-Length`
    gives), then the tensor's raw little-endian bytes, row-major. Outputs come back as JSON (the default)."""
    datatype = V2_DATATYPES[x.dtype]
    raw = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<")).tobytes()
    header = json.dumps({"inputs": [{"name": input_name, "shape": list(x.shape), "datatype": datatype,
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return header + raw, {"Content-Type": "application/octet-stream",
                          "Inference-Header-Content-Length": str(len(header))}


def v2_binary_call(model: str, x: np.ndarray, input_name: str) -> Call:
    body, headers = v2_binary_body(x, input_name)
    return Call(f"/v2/models/{model}/infer", body, headers, len(x))


def png_bytes(image: np.ndarray) -> bytes:
    """One (C, H, W) uint8 image as PNG: greyscale for one channel, RGB for three."""
    from PIL import Image

    channels = image.shape[0]
    if channels not in (1, 3):
        raise ValueError(f"PNG carries 1 or 3 channels here, not {channels}")
    pixels = image[0] if channels == 1 else image.transpose(1, 2, 0)
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), mode="L" if channels == 1 else "RGB").save(out, format="PNG")
    return out.getvalue()


def png_predict_call(model: str, images: np.ndarray) -> Call:
    """`POST /v1/models/{model}/predict` with PNG images: the PNG itself as the body for one image
    (`Content-Type: image/png`), multipart/form-data with one `images` part per image for several."""
    path = f"/v1/models/{model}/predict"
    if len(images) == 1:
        return Call(path, png_bytes(images[0]), {"Content-Type": "image/png"}, 1)
    files = [("images", (f"{i}.png", png_bytes(image), "image/png")) for i, image in enumerate(images)]
    request = httpx.Request("POST", "http://unused" + path, files=files)
    return Call(path, request.read(), {"Content-Type": request.headers["Content-Type"]}, len(images))


def answered_rows(answer: Mapping) -> int:
    """How many images an answer classifies: `predictions` (v1, LitServe) or the first V2 output's shape."""
    if "predictions" in answer:
        return len(answer["predictions"])
    return int(answer["outputs"][0]["shape"][0])


# ---- load ------------------------------------------------------------------------------------------------------
def new_client(base_url: str, headers: Mapping[str, str] | None = None) -> httpx.AsyncClient:
    """httpx client for untimed calls. Idle connections are dropped after 2 s, before the servers' own keep-alive
    timeout (uvicorn: 5 s) can close one under a request being sent."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=2.0)
    return httpx.AsyncClient(base_url=base_url, headers=dict(headers or {}), limits=limits, timeout=300)


async def check(client: httpx.AsyncClient, call: Call) -> None:
    """Send `call` once, untimed (warms connections and caches): EndpointMissing on 404/405, RequestFailed on any
    other error status or when the answer does not classify every image sent."""
    response = await _post(client, call)
    if response.status_code in MISSING:
        raise EndpointMissing(f"{response.status_code} on {call.path}")
    if response.status_code != 200:
        raise RequestFailed(call.path, response.status_code, response.text)
    rows = answered_rows(response.json())
    if rows != call.images:
        raise RequestFailed(call.path, response.status_code, f"classified {rows} images of {call.images}")


async def closed_loop(base_url: str, headers: Mapping[str, str], call: Call, concurrency: int, duration_s: float,
                      min_requests: int) -> Timing:
    """`concurrency` callers, each on its own keep-alive connection to `base_url` (opened before the clock starts),
    send `call` again as soon as their previous answer is in, until `duration_s` has passed and at least
    `min_requests` were sent; throughput over the time until the last answer. RequestFailed (once every caller has
    stopped) when an answer is not 200."""
    latencies: list[float] = []
    failures: list[RequestFailed] = []
    sent = 0
    connections = [Connection(base_url, headers) for _ in range(concurrency)]
    try:
        await asyncio.gather(*(c.post(call.path, call.body, call.headers) for c in connections))  # untimed
        start = time.perf_counter()
        stop_at = start + duration_s

        async def caller(connection: Connection) -> None:
            nonlocal sent
            while not failures and (time.perf_counter() < stop_at or sent < min_requests):
                sent += 1
                began = time.perf_counter()
                try:
                    status, answer = await connection.post(call.path, call.body, call.headers)
                except RequestFailed as exc:
                    failures.append(exc)
                    return
                latencies.append(time.perf_counter() - began)
                if status != 200:
                    failures.append(RequestFailed(call.path, status, answer.decode(errors="replace")))

        await asyncio.gather(*(caller(c) for c in connections))
    finally:
        for connection in connections:
            connection.close()
    if failures:
        raise failures[0]
    return timing(latencies, len(latencies) * call.images, time.perf_counter() - start)


async def alternating(base_url: str, headers: Mapping[str, str], calls: Sequence[Call], duration_s: float,
                      seed: int = 0) -> list[Timing]:
    """One caller on one keep-alive connection sending every one of `calls` in each cycle, in a shuffled order, until
    `duration_s` has passed: a Timing per call (images per second over the time spent on its own requests), so
    calls are compared request by request under the same load; their `latencies_s` are paired by cycle.
    RequestFailed when an answer is not 200."""
    latencies: list[list[float]] = [[] for _ in calls]
    order = np.random.default_rng(seed)
    connection = Connection(base_url, headers)
    try:
        for call in calls:  # untimed: warms the connection and each call's path
            await connection.post(call.path, call.body, call.headers)
        stop_at = time.perf_counter() + duration_s
        while time.perf_counter() < stop_at:
            for i in order.permutation(len(calls)):
                call = calls[i]
                began = time.perf_counter()
                status, answer = await connection.post(call.path, call.body, call.headers)
                latencies[i].append(time.perf_counter() - began)
                if status != 200:
                    raise RequestFailed(call.path, status, answer.decode(errors="replace"))
    finally:
        connection.close()
    return [timing(measured, len(measured) * call.images, sum(measured))
            for call, measured in zip(calls, latencies, strict=True)]


@dataclass
class _IntakeTally:
    """What intake POSTs got: latencies of those answered, the ids answered 202, what each other one got."""

    latencies: list[float] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    async def post(self, connection: Connection, path: str, body: bytes, headers: Mapping[str, str],
                   since: float) -> None:
        """POST one body; its latency counts from `since` (time.perf_counter())."""
        try:
            status, answer = await connection.post(path, body, {**headers, "Content-Type": "application/json"})
        except RequestFailed as exc:
            self.refused.append(exc.summary)
            return
        self.latencies.append(time.perf_counter() - since)
        if status == 202:
            self.accepted.append(json.loads(answer)["id"])
        else:
            self.refused.append(f"HTTP {status}")

    def result(self, elapsed_s: float) -> tuple[Timing, list[str], list[str]]:
        return timing(self.latencies, len(self.accepted), elapsed_s), self.accepted, self.refused


async def intake_burst(base_url: str, headers: Mapping[str, str], path: str, bodies: Sequence[bytes],
                       concurrency: int, request_headers: Sequence[Mapping[str, str]]) -> tuple[Timing, list[str],
                                                                                                list[str]]:
    """Closed loop: POST each JSON body once (the i-th with `request_headers[i]`), `concurrency` at a time, each
    caller on its own keep-alive connection and sending its next as soon as it has an answer; the timing (one
    "image" per request accepted), the ids of the requests answered 202, and what each other one got ("HTTP 503",
    "ConnectionResetError"). Measures the most the server accepts; latency is concurrency / throughput here."""
    tally = _IntakeTally()
    queue = iter(range(len(bodies)))

    async def caller(connection: Connection) -> None:
        for i in queue:
            await tally.post(connection, path, bodies[i], request_headers[i], since=time.perf_counter())

    connections = [Connection(base_url, headers) for _ in range(concurrency)]
    start = time.perf_counter()
    try:
        await asyncio.gather(*(caller(c) for c in connections))
    finally:
        for connection in connections:
            connection.close()
    return tally.result(time.perf_counter() - start)


async def intake_at_rate(base_url: str, headers: Mapping[str, str], path: str, bodies: Sequence[bytes],
                         rate_per_s: float, concurrency: int,
                         request_headers: Sequence[Mapping[str, str]]) -> tuple[Timing, list[str], list[str]]:
    """Open loop: the i-th POST is due `i / rate_per_s` seconds after the start and goes out on the first of
    `concurrency` keep-alive connections free by then. Its latency counts from when it was due, so a server that
    falls behind shows in the latencies instead of slowing the load down (no coordinated omission). Answers as
    `intake_burst`."""
    tally = _IntakeTally()
    connections = [Connection(base_url, headers) for _ in range(concurrency)]
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for connection in connections:
        idle.put_nowait(connection)
    start = time.perf_counter()

    async def send(i: int) -> None:
        due = start + i / rate_per_s
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        connection = await idle.get()
        try:
            await tally.post(connection, path, bodies[i], request_headers[i], since=due)
        finally:
            idle.put_nowait(connection)

    try:
        await asyncio.gather(*(send(i) for i in range(len(bodies))))
    finally:
        for connection in connections:
            connection.close()
    return tally.result(time.perf_counter() - start)
