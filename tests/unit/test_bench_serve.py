"""The serving benchmark's pure helpers: percentiles, request encodings (checked against tritonclient's own V2
binary encoder) and the table and targets built from results. (The benchmark itself is `make bench-serve`.)"""

import io
import json

import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image

from bench.serve_client import answered_rows, json_predict_call, png_predict_call, timing, v2_binary_body
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


def _timed(speed: float, p50: float = 1.0) -> dict:
    return {"rounds": [{"images_per_s": speed, "p50_ms": p50, "p99_ms": 2 * p50, "requests": 10}]}


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
            {"model": "resnet18-32", "variant": "none", "input": "v2", **_timed(1, p50=2.0)},
            {"model": "resnet18-32", "variant": "universal", "input": "v2", **_timed(1, p50=2.03)},
            {"model": "resnet18-32", "variant": "gated", "input": "v2", **_timed(1, p50=2.2)},
        ],
        "png_decoding": [{"model": "resnet18-224", "rounds": [
            {"images_per_s": 600, "p50_ms": 1.5, "p99_ms": 2.5, "requests": 32}]}],
        "intake": {"requests_per_round": 500, "concurrency": 50, "accepted": 1500, "durable": 1500, "refused": {},
                   "rounds": [{"images_per_s": 600, "p50_ms": 20, "p99_ms": 45, "requests": 500}]},
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


def test_targets_are_met_or_not_from_the_figures_and_unmeasured_ones_say_so():
    verdicts = [t["met"] for t in targets(_results())]
    # 1×32 at 0.9 of the limit; 32×1 not measured; PNG decoded in 1.5 ms; LitServe ×1.0 in the large cell;
    # δ +1.5 %; intake 600/s, p99 45 ms, all durable
    assert verdicts == [True, None, True, False, True, True]
    results = _results()
    results["intake"]["durable"] = 1499
    assert targets(results)[-1]["met"] is False


def test_markdown_shows_skipped_cells_verdicts_and_the_command():
    text = markdown(_results())
    assert "- n/a: endpoint missing: ResNet-18 32, 1 × 32, unlearnd PNG." in text
    assert "| ResNet-18 32 | PNG | 1 × 32 | n/a |" in text and "`python -m bench.serve`" in text
    assert "**met**" in text and "**not met**" in text and "not measured" in text
    assert "| ResNet-18 32 | V2 binary | 1 × 32 | 900 |" in text
