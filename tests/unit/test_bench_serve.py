"""The serving benchmark's pure helpers: percentiles, request encodings (checked against tritonclient's own V2
binary encoder) and the table and targets built from results. (The benchmark itself is `make bench-serve`.)"""

import asyncio
import io
import json
import signal
import subprocess
import sys
import time

import h11
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image

from bench.serve_client import (
    Call,
    Connection,
    RequestFailed,
    alternating,
    answered_rows,
    closed_loop,
    intake_at_rate,
    intake_burst,
    json_predict_call,
    png_predict_call,
    timing,
    v2_binary_body,
)
from bench.serve_report import cell_rows, delta_overheads, markdown, median_timing, ratio, targets


def test_timing_gives_throughput_over_the_whole_run_and_interpolated_percentiles():
    latencies = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    t = timing(latencies, images=3200, elapsed_s=2.0)
    assert t.images_per_s == 1600
    assert t.p50_ms == pytest.approx(50.5)
    assert t.p99_ms == pytest.approx(99.01)
    assert t.requests == 100
    assert t.as_dict() == {"images_per_s": 1600.0, "p50_ms": 50.5, "p99_ms": 99.01, "requests": 100}


def test_median_timing_takes_each_figure_on_its_own_and_ratio_tolerates_missing_figures():
    rounds = [{"images_per_s": 10, "p50_ms": 5, "p99_ms": 9}, {"images_per_s": 30, "p50_ms": 1, "p99_ms": 20},
              {"images_per_s": 20, "p50_ms": 3, "p99_ms": 10}]
    assert median_timing(rounds) == {"images_per_s": 20, "p50_ms": 3, "p99_ms": 10}
    assert median_timing([]) is None
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None and ratio(1.0, None) is None and ratio(1.0, 0.0) is None


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_v2_binary_body_matches_what_the_triton_client_sends(dtype):
    x = (np.arange(2 * 3 * 4 * 4) % 251).reshape(2, 3, 4, 4).astype(dtype)
    body, headers = v2_binary_body(x, "input")
    length = int(headers["Inference-Header-Content-Length"])
    header, raw = json.loads(body[:length]), body[length:]

    tensor = triton.InferInput("input", list(x.shape), "FP32" if dtype == np.float32 else "UINT8")
    tensor.set_data_from_numpy(x, binary_data=True)
    theirs, their_length = triton.InferenceServerClient.generate_request_body([tensor])
    assert header["inputs"] == json.loads(theirs[:their_length])["inputs"]
    assert raw == theirs[their_length:]
    assert np.array_equal(np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(x.shape), x)
    assert headers["Content-Type"] == "application/octet-stream"


def test_png_calls_carry_the_same_pixels_alone_or_as_multipart_file_parts():
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 3, 5, 4), dtype=np.uint8)
    one = png_predict_call("m", pixels[:1])
    assert one.headers == {"Content-Type": "image/png"} and one.images == 1 and one.path == "/v1/models/m/predict"
    decoded = np.asarray(Image.open(io.BytesIO(one.body))).transpose(2, 0, 1)
    assert np.array_equal(decoded, pixels[0])
    grey = png_predict_call("m", pixels[:1, :1])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(grey.body))), pixels[0, 0])

    several = png_predict_call("m", pixels)
    assert several.headers["Content-Type"].startswith("multipart/form-data; boundary=") and several.images == 2
    assert several.body.count(b'name="images"; filename=') == 2
    assert several.body.count(b"Content-Type: image/png") == 2


def test_json_call_and_answers_of_either_protocol_count_their_images():
    call = json_predict_call("m", np.zeros((3, 1, 2, 2), dtype=np.float32))
    assert json.loads(call.body) == {"inputs": np.zeros((3, 1, 2, 2)).tolist()} and call.images == 3
    assert answered_rows({"predictions": [{}, {}, {}]}) == 3
    assert answered_rows({"outputs": [{"name": "probabilities", "shape": [4, 10], "data": []}]}) == 4


class EchoServer:
    """A loopback HTTP/1.1 server (h11) that answers every request with `status` and JSON describing what it got;
    with `close`, it closes each connection after one answer; with `delay_s`, it waits that long before each
    answer. Counts connections and requests."""

    def __init__(self, status: int = 200, close: bool = False, delay_s: float = 0.0):
        self.status, self.close, self.delay_s = status, close, delay_s
        self.connections = self.requests = 0

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        http, body = h11.Connection(h11.SERVER), b""
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(await reader.read(1 << 16))
            elif isinstance(event, h11.Request):
                request, body = event, b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self.requests += 1
                number = self.requests
                await asyncio.sleep(self.delay_s)
                answer = json.dumps({"path": request.target.decode(), "body": body.decode(), "id": str(number),
                                     "headers": {k.decode(): v.decode() for k, v in request.headers}}).encode()
                headers = [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))]
                writer.write(http.send(h11.Response(status_code=self.status, headers=[
                    *headers, *([("Connection", "close")] if self.close else [])]))
                    + http.send(h11.Data(data=answer)) + http.send(h11.EndOfMessage()))
                await writer.drain()
                if http.our_state is h11.MUST_CLOSE:
                    break
                http.start_next_cycle()
            else:  # ConnectionClosed
                break
        writer.close()


@pytest.mark.parametrize("close", [False, True])
def test_closed_loop_keeps_one_connection_per_caller_and_opens_another_when_the_server_closes_it(close):
    call = Call("/infer", b"pixels", {"Content-Type": "application/octet-stream"}, 2)

    async def scenario():
        echo = EchoServer(close=close)
        async with echo as url:
            connection = Connection(url, {"Authorization": "Bearer k"})
            answers = [await connection.post("/infer", body, {"X-Try": str(i)}) for i, body in enumerate([b"a", b""])]
            connection.close()
            timed = await closed_loop(url, {"Authorization": "Bearer k"}, call, 3, 0.2, min_requests=3)
        return echo, answers, timed

    echo, answers, timed = asyncio.run(scenario())
    for i, (status, answer) in enumerate(answers):
        got = json.loads(answer)
        assert status == 200 and got["path"] == "/infer" and got["body"] == ["a", ""][i]
        assert {k.lower(): v for k, v in got["headers"].items() if k.lower() != "host"} == {
            "authorization": "Bearer k", "x-try": str(i), "content-length": str(len(["a", ""][i]))}
    echo.requests -= 2
    echo.connections -= 2 if close else 1
    assert timed.requests + 3 == echo.requests  # one untimed call per connection first
    assert timed.images_per_s > 0 and timed.requests >= 3
    assert echo.connections == (echo.requests if close else 3)


def test_closed_loop_fails_on_an_error_status_or_no_server_and_intake_counts_what_was_accepted():
    call = Call("/infer", b"{}", {}, 1)

    async def scenario():
        async with EchoServer(status=503) as url:
            with pytest.raises(RequestFailed) as refused:
                await closed_loop(url, {}, call, 2, 0.1, min_requests=2)
        with pytest.raises(RequestFailed) as unreachable:
            await closed_loop(url, {}, call, 2, 0.1, min_requests=2)
        echo = EchoServer(status=202)
        async with echo as url:
            accepted = await intake_burst(url, {"Authorization": "Bearer g"}, "/forget", [b"a", b"b", b"c"], 2,
                                          [{"Idempotency-Key": key} for key in "xyz"])
        return refused.value, unreachable.value, accepted

    refused, unreachable, (timed, ids, others) = asyncio.run(scenario())
    assert refused.status == 503 and unreachable.status is None and unreachable.summary.endswith("Error")
    assert sorted(ids) == ["1", "2", "3"] and others == [] and timed.requests == 3


def test_intake_at_rate_sends_on_schedule_and_times_from_when_each_request_was_due():
    async def scenario():
        async with EchoServer(status=202) as url:
            began = time.perf_counter()
            on_time = await intake_at_rate(url, {}, "/forget", [b"a", b"b", b"c", b"d"], 20.0, 2,
                                           [{"Idempotency-Key": key} for key in "wxyz"])
            elapsed = time.perf_counter() - began
        async with EchoServer(status=202, delay_s=0.05) as url:  # one connection, answers slower than offered
            behind = await intake_at_rate(url, {}, "/forget", [b"a", b"b", b"c"], 100.0, 1, [{}, {}, {}])
        return on_time, elapsed, behind

    (timed, ids, others), elapsed, (late, late_ids, _) = asyncio.run(scenario())
    assert sorted(ids) == ["1", "2", "3", "4"] and others == [] and timed.requests == 4
    assert elapsed >= 3 / 20.0  # the last one was due 0.15 s after the start
    # the third was due at 0.02 s and answered at ~0.15 s: its wait for the connection counts
    assert len(late_ids) == 3 and late.p99_ms > 100


def test_alternating_sends_every_call_in_each_cycle_and_times_each_on_its_own():
    calls = [Call(f"/v2/models/{name}/infer", name.encode(), {}, 1) for name in ("none", "universal", "gated")]

    async def scenario():
        echo = EchoServer()
        async with echo as url:
            timings = await alternating(url, {}, calls, 0.2)
        async with EchoServer(status=503) as url:
            with pytest.raises(RequestFailed):
                await alternating(url, {}, calls, 0.2)
        return echo, timings

    echo, timings = asyncio.run(scenario())
    counts = {t.requests for t in timings}
    assert len(counts) == 1 and counts.pop() >= 1  # whole cycles: as many of each
    assert echo.requests == 3 + sum(t.requests for t in timings) and echo.connections == 1


def _timed(speed: float, p50: float = 1.0, **extra: float) -> dict:
    return {"rounds": [{"images_per_s": speed, "p50_ms": p50, "p99_ms": 2 * p50, "requests": 10, **extra}]}


def _results() -> dict:
    cell = {"model": "resnet18-32", "batch": 1, "concurrency": 32}
    big = {"model": "resnet18-224", "batch": 1, "concurrency": 1}
    return {
        "meta": {"models": {"resnet18-32": "ResNet-18 32", "resnet18-224": "ResNet-18 224"}, "date": "d",
                 "machine": "cpu", "cores": 2, "load_before": 1, "load_after": 1, "torch": "t", "litserve": "l",
                 "python": "p", "rounds": 3, "duration_s": 1.5, "wall_min": 9.0, "command": "python -m bench.serve",
                 "settings": {"batch_max_size": 32}},
        "measurements": [
            {**cell, "system": "unlearnd", "input": "v2", **_timed(900)},
            {**cell, "system": "unlearnd", "input": "png", "rounds": [], "skipped": "n/a: endpoint missing"},
            {**cell, "system": "litserve", "input": "json", **_timed(300)},
            {**cell, "system": "limit", "input": None, **_timed(1000)},
            {**big, "system": "unlearnd", "input": "png", **_timed(50, p50=11.5)},
            {**big, "system": "unlearnd", "input": "v2", **_timed(60, p50=10.0)},
            {**big, "system": "litserve", "input": "json", **_timed(50)},
            {**big, "system": "limit", "input": None, **_timed(70)},
        ],
        "delta_overhead": [
            {"model": "resnet18-32", "variant": "none", "input": "v2", **_timed(1, p50=2.0, paired_ms=0.0)},
            {"model": "resnet18-32", "variant": "universal", "input": "v2", **_timed(1, p50=2.03, paired_ms=0.02)},
            {"model": "resnet18-32", "variant": "gated", "input": "v2", **_timed(1, p50=2.2, paired_ms=0.3)},
        ],
        "png_decoding": [{"model": "resnet18-224", "rounds": [
            {"images_per_s": 600, "p50_ms": 1.5, "p99_ms": 2.5, "requests": 32}]}],
        "intake": [{"api_workers": workers, "requests_per_round": 500, "concurrency": 50, "rate_per_s": 500,
                    "accepted": 3000, "durable": 3000, "refused": {},
                    "rounds": [{"images_per_s": speed, "p50_ms": 80, "p99_ms": 95, "requests": 500}],
                    "at_rate": [{"images_per_s": 499, "p50_ms": 20, "p99_ms": 45, "requests": 500}]}
                   for workers, speed in ((1, 400), (2, 600))],
    }


def test_rows_join_each_unlearnd_cell_with_the_limit_and_litserve_of_the_same_cell():
    rows = {(r["model"], r["input"]): r for r in cell_rows(_results())}
    v2 = rows[("resnet18-32", "v2")]
    assert v2["vs_limit"] == pytest.approx(0.9) and v2["vs_litserve"] == pytest.approx(3.0)
    png = rows[("resnet18-32", "png")]
    assert png["unlearnd"] == "n/a: endpoint missing" and png["vs_limit"] is None and png["vs_litserve"] is None
    (overhead,) = delta_overheads(_results())
    assert overhead["universal_overhead"] == pytest.approx(0.015)
    assert overhead["gated_overhead"] == pytest.approx(0.1)
    assert overhead["universal_paired"] == pytest.approx(0.01) and overhead["gated_paired"] == pytest.approx(0.15)


def test_targets_are_met_or_not_from_the_figures_and_unmeasured_ones_say_so():
    verdicts = [t["met"] for t in targets(_results())]
    # 1×32 at 0.9 of the limit; 32×1 not measured; PNG decoded in 1.5 ms; LitServe ×1.0 in the large cell;
    # δ +1.5 %; intake with 1 API process 400/s closed loop (short of 500), with 2 600/s; p99 45 ms at 500/s
    # offered, all durable
    assert verdicts == [True, None, True, False, True, False, True]
    for change in ({"durable": 2999}, {"at_rate": [{"images_per_s": 480, "p50_ms": 30, "p99_ms": 51, "requests": 500}]},
                   {"rounds": [{"images_per_s": 490, "p50_ms": 90, "p99_ms": 99, "requests": 500}]}):
        results = _results()
        results["intake"][1].update(change)
        assert targets(results)[-1]["met"] is False
    litserve = next(t for t in targets(_results()) if "LitServe" in t["target"])
    # ResNet-18 224: LitServe 50 images/s, limit 70 < 1.5 × 50 (two unlearnd inputs); ResNet-18 32: 450 < 1000
    assert litserve["detail"] == "1 of 3 cells; in 2 of them 1.5× LitServe is above the limit itself"


def test_markdown_shows_skipped_cells_verdicts_and_the_command():
    text = markdown(_results())
    assert "- n/a: endpoint missing: ResNet-18 32, 1 × 32, unlearnd PNG." in text
    assert "| ResNet-18 32 | PNG | 1 × 32 | n/a |" in text and "`python -m bench.serve`" in text
    assert "**met**" in text and "**not met**" in text and "not measured" in text
    assert "| ResNet-18 32 | V2 binary | 1 × 32 | 900 |" in text


def test_a_round_that_failed_leaves_the_cell_to_its_other_rounds_and_a_cell_failed_in_every_round_says_so():
    results = _results()
    big_litserve = next(m for m in results["measurements"]
                        if m["model"] == "resnet18-224" and m["system"] == "litserve")
    big_litserve["failed_rounds"] = ["EOFError"]
    rows = {(r["model"], r["input"]): r for r in cell_rows(results)}
    assert rows[("resnet18-224", "v2")]["litserve"]["images_per_s"] == 50  # the round that answered
    assert ("- failed in 1 of 2 rounds (EOFError); the figures are the medians of the others: ResNet-18 224, "
            "1 × 1, litserve.") in markdown(results)
    big_litserve["rounds"] = []
    rows = {(r["model"], r["input"]): r for r in cell_rows(results)}
    assert rows[("resnet18-224", "v2")]["litserve"] == "failed: EOFError"
    assert rows[("resnet18-224", "v2")]["vs_litserve"] is None


def test_sigterm_interrupts_the_benchmark_so_that_its_cleanup_runs():
    script = ("import sys, time\nfrom bench.serve import interrupt_on_sigterm\ninterrupt_on_sigterm()\n"
              "try:\n    print('serving', flush=True)\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
              "    print('stopped what it started', flush=True)\n    sys.exit(130)\n")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "serving"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 130
        assert process.stdout.read().strip() == "stopped what it started"
    finally:
        process.kill()
        process.wait()
