"""Serving speed of unlearnd against LitServe and the model's own limit, in one run (`python -m bench.serve`).

Starts, on loopback, the real unlearnd API (uvicorn through `unlearnd.cli.processes`, embedded Redis, a temporary
data directory, API keys from `UNLEARND_API_KEYS`; no worker) and LitServe (`bench.serve_litserve`, its own
dynamic batching), registers each model as TorchScript through `POST /v1/models` and puts a forget vector in
force. Models have random weights (speed does not depend on them): the digits CNN 1×8×8, ResNet-18's small-input
variant at 3×32×32 and torchvision's ResNet-18 at 3×224×224. δ is random too (0.01 · N(0, 1)), stored as a
class-vector artifact through the Store API and served the way a forget job publishes one (no worker computes it).

Then, in interleaved rounds (the systems' order rotates every round; medians over rounds), for each model and
each cell (batch 1 or 32 images per request × concurrency 1 or 32): unlearnd with JSON (`/v1/.../predict`), Open
Inference Protocol V2 binary tensors (`/v2/models/{m}/infer`) and PNG uploads; LitServe with the same JSON; and
the limit: the same network's batched forward in this process (batch min(batch × concurrency, 32)) with the same
δ, clip and softmax, no HTTP. The load generator is h11 over asyncio streams (HTTP/1.1 keep-alive, one connection
per concurrent caller; `bench.serve_client`) in this process. Also the δ overhead (no δ, universal δ, gated δ) and
deletion-request intake (a closed loop at concurrency 50, and an open loop at 500 requests/s offered) on this API
and on a second one with 2 processes, whose accepted requests are counted in the ledgers afterwards. Writes
bench/results/serve.json and, for a full run, the generated block of docs/benchmarks.md ("Serving"); reduced runs
go to bench/results/serve-quick.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import litserve as ls
import numpy as np
import torch
from safetensors.torch import save_file

from bench.docs_block import replace_block
from bench.serve_client import (
    Call,
    EndpointMissing,
    RequestFailed,
    alternating,
    check,
    closed_loop,
    intake_at_rate,
    intake_burst,
    json_predict_call,
    new_client,
    png_bytes,
    png_predict_call,
    timing,
    v2_binary_call,
)
from bench.serve_report import markdown, targets
from models_store import NotFoundError, Store
from models_store.ledger import open_ledger
from service.codecs import decode_image
from unlearnd.cli.processes import Child, api_child, die_with_parent, redis_child, wait_for_redis
from unlearnd.runtime import load_torchscript_net
from unlearnd.security.signing import open_store
from unlearnd.settings import Settings
from unlearning import NormalizedClassifier, build_model
from unlearning.evaluation import perturbed_logits
from workers.publishing import publish

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
KEYS = {"admin": "bench-admin", "governance": "bench-governance", "inference": "bench-inference"}
CELLS = ((1, 1), (1, 32), (32, 1), (32, 32))
"""(images per request, concurrent callers)."""
LIMIT_BATCH = 32
INTAKE_CONCURRENCY = 50
INTAKE_RATE = 500.0
"""Requests per second offered by the open-loop intake measurement (issue 11's target rate)."""
LITSERVE_SETTLE_S = 1.0
"""Seconds LitServe runs again before it is measured (it is stopped while the others are)."""
INTAKE_API_WORKERS = 2
"""Intake is also measured on a second unlearnd API with this many processes (UNLEARND_API_WORKERS): the
intake thread and the event loop of one process share its interpreter lock."""
INTAKE_MODEL = "intake"
"""The first model's network registered once more, to take forget requests that no worker runs."""
STOP_RESERVE_S = 30
"""Time kept for what follows the last round: stopping the servers, counting the ledger, writing results."""
MEAN, STD = 0.5, 0.25
"""Normalisation inside every model (per channel)."""
DELTA_SHARE = 3
"""The δ overhead's share of a round, in measurement durations: one caller alternates between the three served
states request by request (differences of a few per cent need finer interleaving than the machine's load
drifts)."""
SYSTEMS = (("unlearnd", "json"), ("unlearnd", "v2"), ("unlearnd", "png"), ("litserve", "json"), ("limit", None))


@dataclass(frozen=True)
class ModelSpec:
    key: str
    """Results key, and the model's name in both servers."""
    title: str
    arch: str
    shape: tuple[int, int, int]
    skip: dict[tuple[int, int], str] = field(default_factory=dict)
    """Cells not measured, with the reason."""
    delta_variants: bool = False
    """Also serve it without δ and with the gated δ (δ overhead)."""


OVER_BUDGET = "n/a: 1,024 images in flight per measurement do not fit 3 rounds in the 15-minute budget"
"""Why ResNet-18 is not measured at batch 32 × concurrency 32 (one such wave took ~40 s per system here)."""
MODELS = (
    ModelSpec("digits", "digits CNN 1×8×8", "small_cnn", (1, 8, 8), delta_variants=True),
    ModelSpec("resnet18-32", "ResNet-18 3×32×32 (small-input variant)", "resnet18_small", (3, 32, 32),
              delta_variants=True, skip={(32, 32): OVER_BUDGET}),
    ModelSpec("resnet18-224", "ResNet-18 3×224×224 (torchvision)", "torchvision:resnet18", (3, 224, 224),
              skip={(32, 32): OVER_BUDGET}),
)


@dataclass(frozen=True)
class Plan:
    models: tuple[ModelSpec, ...]
    rounds: int
    duration_s: float
    intake_requests: int
    full: bool
    budget_min: float
    """No round starts that would end later than this after the start (the first always runs)."""


@dataclass
class Prepared:
    """One model as both servers and the limit serve it."""

    spec: ModelSpec
    archive: bytes  # TorchScript of the bare network
    model: torch.nn.Module  # NormalizedClassifier around it, eval mode
    delta: torch.Tensor
    gate_class: int
    gated_share: float
    pixels: np.ndarray  # (32, C, H, W) uint8: the images every request carries
    artifacts: dict[str, str] = field(default_factory=dict)  # served name -> artifact id in force

    @property
    def x(self) -> np.ndarray:
        return self.pixels.astype(np.float32) / 255.0

    def name(self, variant: str) -> str:
        """Served name of the variant: the universal δ, no δ or the gated δ."""
        return {"universal": self.spec.key, "none": f"{self.spec.key}-none", "gated": f"{self.spec.key}-gated"}[
            variant]


def prepare(spec: ModelSpec) -> Prepared:
    torch.manual_seed(0)
    net = build_model(spec.arch, spec.shape[0], 10).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated": still what /v1/models takes
        torch.jit.save(torch.jit.script(net), buffer)
    archive = buffer.getvalue()
    model = NormalizedClassifier(load_torchscript_net(archive), [MEAN] * spec.shape[0], [STD] * spec.shape[0]).eval()
    delta = 0.01 * torch.randn(spec.shape)
    pixels = np.random.default_rng(0).integers(0, 256, size=(LIMIT_BATCH, *spec.shape), dtype=np.uint8)
    with torch.no_grad():
        predicted = model(torch.from_numpy(pixels.astype(np.float32) / 255.0)).argmax(1)
    counts = torch.bincount(predicted, minlength=10)
    gate_class = int(counts.argmin())  # the class these inputs hit least: forgotten classes are rare traffic
    return Prepared(spec, archive, model, delta, gate_class, float(counts[gate_class]) / len(pixels), pixels)


# ---- processes -----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 in {timeout_s} s")


@contextlib.contextmanager
def unlearnd_api(settings: Settings) -> Iterator[str]:
    """Embedded Redis and the API, as `unlearnd run` starts them (no worker: queued jobs stay queued); stopped
    on exit. Yields the base URL."""
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    try:
        for child in (redis_child(settings), api_child(settings)):
            child.log_path = logs / f"{child.name}.log"
            child.start()
            children.append(child)
            if child.name == "redis":
                wait_for_redis(settings)
        base_url = f"http://127.0.0.1:{settings.port}"
        wait_http(f"{base_url}/healthz")
        yield base_url
    finally:
        for child in reversed(children):
            child.stop()


@contextlib.contextmanager
def litserve(models: list[Prepared], workdir: Path, settings: Settings) -> Iterator[tuple[str, int]]:
    """LitServe serving every model (`bench.serve_litserve`) with unlearnd's batching settings and memory layout
    rule, in its own process group, killed on exit. Yields its base URL and process group."""
    specs = []
    for p in models:
        torchscript, delta = workdir / f"{p.spec.key}.pt", workdir / f"{p.spec.key}-delta.safetensors"
        torchscript.write_bytes(p.archive)
        save_file({"delta": p.delta}, str(delta))
        specs.append({"name": p.spec.key, "torchscript": str(torchscript), "delta": str(delta),
                      "mean": [MEAN] * p.spec.shape[0], "std": [STD] * p.spec.shape[0],
                      "input_shape": list(p.spec.shape)})
    spec_path = workdir / "litserve.json"
    spec_path.write_text(json.dumps({"models": specs, "max_batch_size": settings.batch_max_size,
                                     "batch_timeout_s": settings.batch_max_wait_ms / 1000,
                                     "channels_last_min_batch": settings.channels_last_min_batch}))
    port, parent = free_port(), os.getpid()
    with open(workdir / "litserve.log", "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "bench.serve_litserve", str(spec_path), str(port)],
                                   cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=lambda: die_with_parent(parent))
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGCONT)  # in case it was paused
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        with contextlib.suppress(ProcessLookupError):  # its workers too, whatever they did with SIGTERM
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# ---- registration and the forget vector in force ----------------------------------------------------------------
def register(client: httpx.Client, prepared: list[Prepared], intake_model: str) -> None:
    """Datasets (one per input shape) and every served name, through the registration API."""
    datasets: dict[tuple[int, ...], str] = {}
    for p in prepared:
        shape = p.spec.shape
        if shape in datasets:
            continue
        name = f"bench-{'x'.join(map(str, shape))}"
        if shape == (1, 8, 8):
            response = client.post("/v1/datasets", json={"name": name, "source": "builtin:digits"})
        else:
            npz = io.BytesIO()
            np.savez(npz, x_train=p.pixels[:10], y_train=np.arange(10))
            response = client.post("/v1/datasets", data={"name": name}, files={"file": ("d.npz", npz.getvalue())})
        response.raise_for_status()
        datasets[shape] = name
    for p in prepared:
        names = [p.name("universal")]
        if p.spec.delta_variants:
            names += [p.name("none"), p.name("gated")]
        if p is prepared[0]:
            names.append(intake_model)
        for name in names:
            metadata = {"name": name, "input_shape": list(p.spec.shape), "num_classes": 10,
                        "mean": [MEAN] * p.spec.shape[0], "std": [STD] * p.spec.shape[0],
                        "train_dataset": datasets[p.spec.shape]}
            response = client.post("/v1/models", data={"metadata": json.dumps(metadata)},
                                   files={"file": ("model.pt", p.archive)})
            if response.status_code != 201:
                raise RuntimeError(f"registering {name}: {response.status_code} {response.text[:500]}")


def serve_delta(store: Store, model: str, delta: torch.Tensor, forgotten: int, gated: bool) -> str:
    """Put δ in force as a forget job does: a class-vector artifact bound to the served weights, then the next
    served state naming it (gated: δ only for inputs the model assigns to `forgotten`). Returns its id."""
    with store.model_lock(model):
        state = store.read_state(model)
        manifest = store.put_artifact({"delta": delta}, {
            "kind": "class_vector", "model": model, "weights_sha256": state.weights_sha256,
            "classes": [forgotten], "request_ids": [], "note": "bench.serve: random δ, not learnt"})
        publish(store, state, artifacts=[manifest["id"]], forgotten_classes=[forgotten],
                bank={forgotten: manifest["id"]}, gate_classes=[forgotten] if gated else None)
    return manifest["id"]


def check_served(client: httpx.Client, p: Prepared) -> None:
    """Each served name predicts with exactly the artifacts put in force for it."""
    for name in [p.name("universal"), *((p.name("none"), p.name("gated")) if p.spec.delta_variants else ())]:
        answer = client.post(f"/v1/models/{name}/predict", json={"inputs": p.x[:1].tolist()})
        answer.raise_for_status()
        expected = [p.artifacts[name]] if name in p.artifacts else []
        if answer.json()["applied"] != expected:
            raise RuntimeError(f"{name} serves {answer.json()['applied']}, expected {expected}")


# ---- measurements ---------------------------------------------------------------------------------------------
def png_decode_timing(p: Prepared) -> dict[str, float]:
    """The server's own PNG decoder (`service.codecs.decode_image`) on each of the benchmark's images, in this
    process: milliseconds per image."""
    pngs = [png_bytes(image) for image in p.pixels]
    latencies = []
    for png in pngs:
        began = time.perf_counter()
        decode_image(png, p.spec.shape)
        latencies.append(time.perf_counter() - began)
    return timing(latencies, len(pngs), sum(latencies)).as_dict()


def limit_timing(p: Prepared, batch: int, duration_s: float) -> dict[str, Any]:
    """The network's own batched forward with δ (universal), clip and softmax, in this process: the fastest of one
    torch thread and one per core (on a busy machine several threads can be far slower than one), each with the
    images contiguous and channels-last in memory (the server picks a layout by batch size)."""
    images = torch.from_numpy(p.x[:batch])
    layouts = {"contiguous": images, "channels_last": images.contiguous(memory_format=torch.channels_last)}
    default_threads = torch.get_num_threads()
    best: dict[str, Any] = {}
    try:
        for (threads, (layout, x)) in itertools.product(sorted({1, os.cpu_count() or 1}), layouts.items()):
            torch.set_num_threads(threads)
            latencies = []
            with torch.no_grad():
                torch.softmax(perturbed_logits(p.model, x, p.delta), dim=1)  # warm-up
                start = time.perf_counter()
                while time.perf_counter() - start < duration_s / 4 or len(latencies) < 2:
                    began = time.perf_counter()
                    torch.softmax(perturbed_logits(p.model, x, p.delta), dim=1)
                    latencies.append(time.perf_counter() - began)
                elapsed = time.perf_counter() - start
            measured = timing(latencies, batch * len(latencies), elapsed).as_dict()
            if measured["images_per_s"] > best.get("images_per_s", 0):
                best = {**measured, "torch_threads": threads, "layout": layout}
    finally:
        torch.set_num_threads(default_threads)
    return best


@dataclass
class Bench:
    plan: Plan
    settings: Settings
    unlearnd_url: str
    litserve_url: str
    prepared: list[Prepared]
    v2_inputs: dict[str, str | None]
    """Served name -> V2 input tensor name (None: the server has no V2 model metadata endpoint)."""
    measurements: list[dict[str, Any]] = field(default_factory=list)
    overhead: list[dict[str, Any]] = field(default_factory=list)
    decoding: list[dict[str, Any]] = field(default_factory=list)
    litserve_group: int | None = None
    """LitServe's process group: stopped while anything else is measured (`measuring`)."""
    intake_apis: dict[int, tuple[str, Settings]] = field(default_factory=dict)
    """API processes (UNLEARND_API_WORKERS) -> base URL and settings of an API whose intake is measured."""
    intake: dict[int, dict[str, Any]] = field(default_factory=dict)
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)
    calls: dict[tuple[str, str, str, int], Call | str] = field(default_factory=dict)
    rounds_done: int = 0

    def target(self, system: str) -> tuple[str, dict[str, str]]:
        """Base URL and headers (the API key) of a system's requests."""
        if system == "litserve":
            return self.litserve_url, {}
        return self.unlearnd_url, {"Authorization": f"Bearer {KEYS['inference']}"}

    def client(self, system: str) -> httpx.AsyncClient:
        """One httpx client per server for the untimed checks, kept for the whole run."""
        if system not in self.clients:
            self.clients[system] = new_client(*self.target(system))
        return self.clients[system]

    def call(self, p: Prepared, system: str, input_: str, batch: int, name: str) -> Call | str:
        """The request of one cell (encoded once for the whole run), or why it is not measured."""
        key = (name, system, input_, batch)
        if key not in self.calls:
            self.calls[key] = self._encode(p, system, input_, batch, name)
        return self.calls[key]

    def _encode(self, p: Prepared, system: str, input_: str, batch: int, name: str) -> Call | str:
        if input_ == "json":
            single = len(json_predict_call(name, p.x[:1]).body)
            if single * batch > self.settings.max_body_bytes:
                return (f"n/a: a JSON body of {batch} images (~{single * batch / 1e6:.0f} MB) exceeds "
                        f"UNLEARND_MAX_BODY_BYTES")
            if system == "litserve":
                call = json_predict_call(name, p.x[:batch])
                return Call(f"/predict/{name}", call.body, call.headers, call.images)
            return json_predict_call(name, p.x[:batch])
        if input_ == "v2":
            input_name = self.v2_inputs.get(name)
            return "n/a: endpoint missing" if input_name is None else v2_binary_call(name, p.x[:batch], input_name)
        return png_predict_call(name, p.pixels[:batch])

    async def measure(self, record: dict[str, Any], system: str, call: Call | str, concurrency: int,
                      duration_s: float | None = None) -> None:
        """One timed run appended to `record["rounds"]`, or the reason it cannot run in `record["skipped"]`."""
        if record.get("skipped"):
            return
        if isinstance(call, str):
            record["skipped"] = call
            return
        try:
            await check(self.client(system), call)
            result = await closed_loop(*self.target(system), call, concurrency, duration_s or self.plan.duration_s,
                                       min_requests=concurrency)
        except EndpointMissing as exc:
            record["skipped"] = f"n/a: endpoint missing ({exc})"
        except RequestFailed as exc:  # the table says so; the cell's other rounds and the other cells still count
            record.setdefault("failed_rounds", []).append(exc.summary)
            record["error"] = exc.detail
        else:
            record["rounds"].append(result.as_dict())

    async def measuring(self, system: str) -> None:
        """Before measuring `system`: LitServe's processes run only while LitServe itself is measured (SIGSTOP,
        then SIGCONT and LITSERVE_SETTLE_S to settle). Idle, its inference workers poll their queues and took about
        half a core of the two here, which every other measurement, the limit included, would have paid."""
        if self.litserve_group is None:
            return
        if system != "litserve":
            os.killpg(self.litserve_group, signal.SIGSTOP)
            return
        os.killpg(self.litserve_group, signal.SIGCONT)
        await asyncio.sleep(LITSERVE_SETTLE_S)

    def record(self, store: list[dict[str, Any]], **key: Any) -> dict[str, Any]:
        found = next((m for m in store if all(m.get(k) == v for k, v in key.items())), None)
        if found is None:
            found = {**key, "rounds": []}
            store.append(found)
        return found

    async def round(self, index: int) -> None:
        order = SYSTEMS[index % len(SYSTEMS):] + SYSTEMS[:index % len(SYSTEMS)]
        for p in self.prepared:
            name = p.name("universal")
            for batch, concurrency in CELLS:
                for system, input_ in order:
                    record = self.record(self.measurements, model=p.spec.key, batch=batch, concurrency=concurrency,
                                         system=system, input=input_)
                    await self.measuring(system)
                    measured = len(record["rounds"])
                    if (batch, concurrency) in p.spec.skip:
                        record["skipped"] = p.spec.skip[(batch, concurrency)]
                    elif system == "limit":
                        record["limit_batch"] = min(batch * concurrency, LIMIT_BATCH)
                        record["rounds"].append(limit_timing(p, record["limit_batch"], self.plan.duration_s))
                    else:
                        await self.measure(record, system, self.call(p, system, input_, batch, name), concurrency)
                    outcome = record.get("skipped") or (record["rounds"][-1] if len(record["rounds"]) > measured
                                                        else f"failed: {record['failed_rounds'][-1]}")
                    print(f"round {index + 1} {p.spec.key} {batch}×{concurrency} {system} {input_ or ''}: {outcome}",
                          flush=True)
            await self.measuring("unlearnd")
            if p.spec.delta_variants:
                await self.delta_round(p, index)
            self.record(self.decoding, model=p.spec.key)["rounds"].append(png_decode_timing(p))
        await self.intake_round()

    async def delta_round(self, p: Prepared, index: int) -> None:
        """p50 at batch 1 × concurrency 1 of the same network served without δ, with the universal δ, gated:
        one caller alternating between the three request by request (shuffled each cycle), and the median of the
        cycles' latency differences to no δ."""
        input_ = "v2" if self.v2_inputs.get(p.name("none")) else "json"
        variants = ("none", "universal", "gated")
        records = [self.record(self.overhead, model=p.spec.key, variant=variant, input=input_) for variant in variants]
        calls = [self.call(p, "unlearnd", input_, 1, p.name(variant)) for variant in variants]
        for record, variant in zip(records, variants, strict=True):
            record["gated_share"] = p.gated_share if variant == "gated" else None
        if any(record.get("skipped") for record in records):
            return
        try:
            timings = await alternating(*self.target("unlearnd"), [c for c in calls if isinstance(c, Call)],
                                        DELTA_SHARE * self.plan.duration_s, seed=index)
        except RequestFailed as exc:
            for record in records:  # reported in the table; the other measurements still run
                record["skipped"], record["error"] = f"failed: {exc.summary}", exc.detail
            return
        none = np.asarray(timings[0].latencies_s)
        for record, measured in zip(records, timings, strict=True):
            # the median of the cycles' differences to no δ: the request-by-request pairing cancels the load's drift
            paired = 1000 * float(np.median(np.asarray(measured.latencies_s) - none))
            record["rounds"].append({**measured.as_dict(), "paired_ms": paired})

    async def intake_round(self) -> None:
        """Forget requests, each with its own Idempotency-Key, to a model no worker serves, on each intake API: a
        closed-loop burst (the most the API accepts) and an open-loop run at INTAKE_RATE (the latency at that
        load)."""
        headers = {"Authorization": f"Bearer {KEYS['governance']}"}
        path = f"/v1/models/{INTAKE_MODEL}/forget-requests"
        for workers, (url, _) in self.intake_apis.items():
            record = self.intake.setdefault(workers, {"rounds": [], "at_rate": [], "accepted_ids": [],
                                                      "refused": Counter()})
            for kind in ("rounds", "at_rate"):
                bodies = [json.dumps({"classes": [i % 10], "reason": "bench.serve intake"}).encode()
                          for i in range(self.plan.intake_requests)]
                keys = [{"Idempotency-Key": uuid.uuid4().hex} for _ in bodies]
                if kind == "rounds":
                    measured = await intake_burst(url, headers, path, bodies, INTAKE_CONCURRENCY, keys)
                else:
                    measured = await intake_at_rate(url, headers, path, bodies, INTAKE_RATE, INTAKE_CONCURRENCY, keys)
                result, accepted, refused = measured
                record[kind].append(result.as_dict())
                record["accepted_ids"].extend(accepted)
                record["refused"].update(refused)
                print(f"intake, {workers} API processes, {kind}: {result.as_dict()}, refused {len(refused)}",
                      flush=True)

    def intake_results(self) -> list[dict[str, Any]]:
        """Per intake API, once it has stopped: the measurements, and how many of the requests answered 202 are
        rows of its ledger on disk."""
        results = []
        for workers, (_, settings) in self.intake_apis.items():
            record = self.intake.get(workers, {"rounds": [], "at_rate": [], "accepted_ids": [], "refused": {}})
            ledger = open_ledger(settings)
            durable = 0
            for request_id in record["accepted_ids"]:
                with contextlib.suppress(NotFoundError):
                    ledger.get(request_id)
                    durable += 1
            results.append({"api_workers": workers, "requests_per_round": self.plan.intake_requests,
                            "concurrency": INTAKE_CONCURRENCY, "rate_per_s": INTAKE_RATE,
                            "rounds": record["rounds"], "at_rate": record["at_rate"],
                            "accepted": len(record["accepted_ids"]), "durable": durable,
                            "refused": dict(record["refused"])})
        return results

    async def run(self, deadline: float) -> None:
        """The planned rounds, or fewer when the next one would end after `deadline` (time.monotonic())."""
        try:
            for index in range(self.plan.rounds):
                began = time.monotonic()
                await self.round(index)
                self.rounds_done = index + 1
                if index + 1 < self.plan.rounds and time.monotonic() + (time.monotonic() - began) > deadline:
                    print(f"stopping after {index + 1} rounds: another would end past the time budget", flush=True)
                    break
        finally:
            for client in self.clients.values():
                await client.aclose()


def put_in_service(admin: httpx.Client, store: Store, prepared: list[Prepared]) -> dict[str, str | None]:
    """Register every served name, put each δ in force and check it is served; the V2 input tensor names."""
    register(admin, prepared, INTAKE_MODEL)
    for p in prepared:
        p.artifacts[p.name("universal")] = serve_delta(store, p.name("universal"), p.delta, p.gate_class, gated=False)
        if p.spec.delta_variants:
            p.artifacts[p.name("gated")] = serve_delta(store, p.name("gated"), p.delta, p.gate_class, gated=True)
        check_served(admin, p)
    return v2_input_names(admin, [p.name(v) for p in prepared for v in ("universal", "none", "gated")])


def v2_input_names(client: httpx.Client, names: list[str]) -> dict[str, str | None]:
    """Each model's V2 input tensor name from its metadata (`GET /v2/models/{m}`); None when there is none."""
    found: dict[str, str | None] = {}
    for name in names:
        response = client.get(f"/v2/models/{name}")
        found[name] = response.json()["inputs"][0]["name"] if response.status_code == 200 else None
    return found


# ---- the run ----------------------------------------------------------------------------------------------------
def machine() -> tuple[str, int]:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or platform.machine()
    return model, os.cpu_count() or 1


def run(plan: Plan, command: str) -> dict[str, Any]:
    started, load_before = time.monotonic(), os.getloadavg()[0]
    prepared = [prepare(spec) for spec in plan.models]
    workdir = Path(tempfile.mkdtemp(prefix="unlearnd-bs-"))  # short: the Redis socket path must stay < 100 chars
    settings, intake_settings = (
        Settings(data_dir=workdir / data, port=free_port(), redis_url=None, database_url=None, store_url=None,
                 demo_model=False, api_keys=",".join(f"{role}:{key}" for role, key in KEYS.items()), **workers)
        for data, workers in (("data", {}), ("intake", {"api_workers": INTAKE_API_WORKERS})))
    admin_key = {"Authorization": f"Bearer {KEYS['admin']}"}
    try:
        with unlearnd_api(settings) as base_url, unlearnd_api(intake_settings) as intake_url:
            with httpx.Client(base_url=base_url, timeout=300, headers=admin_key) as admin:
                v2 = put_in_service(admin, open_store(settings), prepared)
            with httpx.Client(base_url=intake_url, timeout=300, headers=admin_key) as admin:
                register(admin, prepared[:1], INTAKE_MODEL)
            with litserve(prepared, workdir, settings) as (lit_url, group):
                bench = Bench(plan, settings, base_url, lit_url, prepared, v2, litserve_group=group, intake_apis={
                    settings.api_workers: (base_url, settings), INTAKE_API_WORKERS: (intake_url, intake_settings)})
                # This process holds torch: a full collection of its heap paused the load generator 165 ms (timed
                # with gc.callbacks over 6,000 intake requests), counted as latency by every request in flight.
                gc.collect()
                gc.freeze()
                asyncio.run(bench.run(deadline=started + 60 * plan.budget_min - STOP_RESERVE_S))
        intake = bench.intake_results()  # counted once the APIs have stopped
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    cpu, cores = machine()
    served = ("api_workers", "batch_max_size", "batch_max_wait_ms", "batch_wait_share", "channels_last_min_batch",
              "inference_threads", "access_log", "gated_vectors", "verify_interval_s")
    meta = {
        "date": date.today().isoformat(), "machine": cpu, "cores": cores, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "litserve": ls.__version__, "python": platform.python_version(),
        "rounds": bench.rounds_done, "rounds_planned": plan.rounds, "duration_s": plan.duration_s,
        "command": command, "full": plan.full,
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
        "wall_min": (time.monotonic() - started) / 60,
        "settings": {k: getattr(settings, k) for k in served if hasattr(settings, k)},
        "models": {p.spec.key: p.spec.title for p in prepared},
        "gated_share": {p.spec.key: p.gated_share for p in prepared},
        "litserve_batching": {"max_batch_size": settings.batch_max_size,
                              "batch_timeout_s": settings.batch_max_wait_ms / 1000},
    }
    results = {"meta": meta, "measurements": bench.measurements, "delta_overhead": bench.overhead,
               "png_decoding": bench.decoding, "intake": intake}
    results["targets"] = targets(results)
    return results


def interrupt_on_sigterm() -> None:
    """SIGTERM (what `timeout` and process supervisors send) interrupts the run as Ctrl-C does, so that every
    `finally` runs: LitServe's whole process group and unlearnd's children are stopped, not left serving."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: one round, short measurements")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", choices=[m.key for m in MODELS], default=None)
    parser.add_argument("--duration", type=float, default=None, help="seconds per measurement (default 1.5)")
    parser.add_argument("--budget", type=float, default=14.5, help="minutes: no round starts that would end later")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only rebuild the docs block from a saved run")
    args = parser.parse_args(argv)
    interrupt_on_sigterm()
    if args.render:
        results = json.loads(args.render.read_text())
    else:
        models = tuple(m for m in MODELS if args.models is None or m.key in args.models)
        rounds = 1 if args.quick else args.rounds
        full = not args.quick and args.models is None and rounds >= 3
        plan = Plan(models, rounds, args.duration or (0.3 if args.quick else 1.5), 100 if args.quick else 500, full,
                    args.budget)
        command = " ".join(["python -m bench.serve", *(sys.argv[1:] if argv is None else argv)])
        results = run(plan, command)
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / ("serve.json" if full else "serve-quick.json")
        out.write_text(json.dumps(results, indent=1))
        print(f"wrote {out}")
    text = markdown(results)
    print(text)
    if results["meta"]["full"]:
        replace_block("bench-serve", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
