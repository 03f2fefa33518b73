"""Bring your own model and data through the API: POST /v1/models, POST/GET /v1/datasets.

No Redis is needed: registration, listing and predictions never touch the queue.
"""

import io
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn

from service.main import create_app
from tests.service.conftest import auth
from unlearnd.settings import Settings
from unlearning import build_model

META = {"name": "mine", "input_shape": [1, 8, 8], "num_classes": 3, "class_names": ["a", "b", "c"],
        "mean": [0.5], "std": [0.25], "train_dataset": "data"}


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def dataset_arrays(n=30, seed=0):
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8), "y_train": np.arange(n) % 3,
            "ids_train": np.array([f"s{i}" for i in range(n)])}


def post_npz(client, name, role="admin", **arrays):
    return client.post("/v1/datasets", headers=auth(role), data={"name": name},
                       files={"file": ("d.npz", npz_bytes(**arrays), "application/octet-stream")})


def post_model(client, data: bytes, meta=None, arch=None, role="admin", query="", filename="m.pt"):
    form = {"metadata": json.dumps(meta or META)} | ({"arch": arch} if arch else {})
    return client.post(f"/v1/models{query}", headers=auth(role), data=form,
                       files={"file": (filename, data, "application/octet-stream")})


class Tiny(nn.Module):
    def __init__(self, k=3):
        super().__init__()
        self.fc = nn.Linear(64, k)

    def forward(self, x):
        return self.fc(x.flatten(1))


def torchscript(module) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(module), buf)
    return buf.getvalue()


def state_dict_bytes(net) -> bytes:
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return buf.getvalue()


def stored(tmp_path, kind):
    folder = tmp_path / "store" / kind
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def assert_problem(response, status):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body.get("detail")
    return body


def predict(client, name, x):
    r = client.post(f"/v1/models/{name}/predict", headers=auth("inference"), json={"inputs": x.tolist()})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def with_data(client):
    r = post_npz(client, "data", **dataset_arrays())
    assert r.status_code == 201, r.text
    return client


# ---- datasets -----------------------------------------------------------------------------------------
def test_npz_dataset_round_trip(client):
    r = post_npz(client, "data", **dataset_arrays())
    assert r.status_code == 201 and r.headers["location"] == "/v1/datasets/data"
    body = r.json()
    assert body["n_train"] == 30 and body["n_test"] == 0 and body["input_shape"] == [1, 8, 8]
    assert body["num_classes"] == 3 and body["class_counts_train"] == [10, 10, 10]
    assert body["ids_train_preview"][:2] == ["s0", "s1"] and len(body["data_sha256"]) == 64
    listing = client.get("/v1/datasets", headers=auth("governance")).json()
    assert listing["count"] == 1 and listing["data"][0]["name"] == "data"
    assert "ids_train" not in listing["data"][0]
    one = client.get("/v1/datasets/data?include_ids=true", headers=auth("admin")).json()
    assert one["ids_train"] == [f"s{i}" for i in range(30)]
    assert_problem(post_npz(client, "data", **dataset_arrays()), 409)
    assert_problem(client.get("/v1/datasets/nope", headers=auth("admin")), 404)


def test_json_sources_builtin_and_imagefolder(client, tmp_path):
    r = client.post("/v1/datasets", headers=auth("admin"),
                    json={"name": "digits2", "source": "builtin:digits"})
    assert r.status_code == 201, r.text
    assert r.json()["n_train"] == 1437 and r.json()["ids_train_preview"][0] == "train-0"
    root = tmp_path / "pics"
    for i in range(4):
        path = root / "train" / ("cat" if i % 2 else "dog") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (5, 5), (i * 40, 0, 0)).save(path)
    r = client.post("/v1/datasets", headers=auth("admin"), json={"name": "pics", "source": "imagefolder",
                                                                  "root": str(root)})
    assert r.status_code == 201, r.text
    assert r.json()["class_names"] == ["cat", "dog"] and r.json()["input_shape"] == [3, 5, 5]


@pytest.mark.parametrize("body, status", [
    ({"name": "x", "source": "imagefolder", "root": "/definitely/not/here"}, 422),
    ({"name": "x", "source": "imagefolder", "root": "0" * 4096}, 422),  # longer than a file name may be
    ({"name": "x", "source": "torchvision:CIFAR10", "root": "0" * 4096}, 422),
    ({"name": "x", "source": "imagefolder", "root": "~no_such_user_here"}, 422),
    ({"name": "x", "source": "torchvision:CIFAR10", "root": "/definitely/not/here"}, 422),
    ({"name": "x", "source": "torchvision:CIFAR10"}, 422),
    ({"name": "x", "source": "s3://bucket"}, 422),
    ({"name": "../x", "source": "builtin:digits"}, 422),
    ({"name": "x", "source": "builtin:digits", "extra": 1}, 422),
    ({"source": "builtin:digits"}, 422),
])
def test_bad_json_dataset_requests(client, tmp_path, body, status):
    assert_problem(client.post("/v1/datasets", headers=auth("admin"), json=body), status)
    assert stored(tmp_path, "datasets") == []


def test_a_json_body_too_deep_to_parse_is_422(client, tmp_path):
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    r = client.post("/v1/datasets", headers={**auth("admin"), "Content-Type": "application/json"}, content=deep)
    assert_problem(r, 422)
    assert stored(tmp_path, "datasets") == []


def test_bad_npz_uploads_leave_the_store_untouched(client, tmp_path):
    good = dataset_arrays()
    nan = {**good, "x_train": np.where(good["x_train"] > 128, np.nan, 0.5)}
    cases = [
        {**good, "x_train": good["x_train"][:, 0]},  # wrong rank
        nan,
        {**good, "x_train": good["x_train"] / 100.0},  # float pixels above 1
        {**good, "y_train": -good["y_train"] - 1},
        {**good, "ids_train": np.array(["same"] * 30)},
        {**good, "class_names": np.array(["\ud800", "b", "c"])},  # a lone surrogate: no response carries it
        {"x_train": good["x_train"]},
    ]
    for arrays in cases:
        body = assert_problem(post_npz(client, "bad", **arrays), 422)
        assert body["title"] == "Invalid dataset"
    r = client.post("/v1/datasets", headers=auth("admin"), data={"name": "bad"},
                    files={"file": ("d.npz", b"PK\x03\x04 not really a zip")})
    assert_problem(r, 422)
    assert_problem(post_npz(client, "../escape", **good), 422)
    r = client.post("/v1/datasets", headers=auth("admin"), data={"name": "bad"})  # no file
    assert_problem(r, 422)
    r = client.post("/v1/datasets", headers={**auth("admin"), "content-type": "text/plain"}, content=b"x")
    assert_problem(r, 415)
    assert stored(tmp_path, "datasets") == []


def test_body_size_limit(tmp_path):
    settings = Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0", max_body_bytes=4096,
                        api_keys="admin:key-admin")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        big = {"x_train": np.random.default_rng(0).integers(0, 256, (100, 1, 8, 8), dtype=np.uint8),
               "y_train": np.zeros(100, dtype=np.int64)}
        assert_problem(post_npz(client, "big", **big), 413)
    assert stored(tmp_path, "datasets") == []


# ---- models -------------------------------------------------------------------------------------------
def test_torchscript_registration_serves_predictions(with_data, tmp_path):
    torch.manual_seed(0)
    net = Tiny()
    r = post_model(with_data, torchscript(net))
    assert r.status_code == 201, r.text
    record = r.json()
    assert record["version"] == 1 and record["format"] == "torchscript"
    assert len(record["weights_sha256"]) == 64
    assert record["unlearning"]["weights_sha256"] == record["weights_sha256"]
    assert record["unlearning"]["artifacts"] == [] and r.headers["location"] == "/v1/models/mine"
    assert with_data.get("/v1/models/mine", headers=auth("governance")).json()["weights_sha256"] \
        == record["weights_sha256"]
    x = torch.rand(3, 1, 8, 8)
    served = predict(with_data, "mine", x)
    expected = torch.softmax(net((x - 0.5) / 0.25), dim=1)
    assert served["model_version"] == 1 and served["weights_sha256"] == record["weights_sha256"]
    probabilities = [p["probabilities"] for p in served["predictions"]]
    assert np.allclose(probabilities, expected.detach().numpy(), atol=1e-4)
    audit = with_data.get("/v1/audit?action=model.register", headers=auth("admin")).json()["data"]
    assert audit and audit[-1]["model"] == "mine" and audit[-1]["detail"]["version"] == 1


def test_state_dict_registration_and_new_version(with_data):
    torch.manual_seed(1)
    net = build_model("small_cnn", 1, 3).eval()
    r = post_model(with_data, state_dict_bytes(net), arch="small_cnn")
    assert r.status_code == 201, r.text
    v1 = r.json()
    assert v1["version"] == 1 and v1["arch"] == "small_cnn" and v1["format"] == "safetensors"
    x = torch.rand(2, 1, 8, 8)
    expected = torch.softmax(net((x - 0.5) / 0.25), dim=1).detach().numpy()
    served = predict(with_data, "mine", x)
    assert np.allclose([p["probabilities"] for p in served["predictions"]], expected, atol=1e-4)

    body = assert_problem(post_model(with_data, state_dict_bytes(net), arch="small_cnn"), 409)
    assert "new_version" in body["detail"]

    torch.manual_seed(2)
    other = Tiny()
    r = post_model(with_data, torchscript(other), query="?new_version=true")
    assert r.status_code == 201, r.text
    v2 = r.json()
    assert v2["version"] == 2 and v2["format"] == "torchscript"
    assert v2["weights_sha256"] != v1["weights_sha256"]
    assert v2["supersedes"]["version"] == 1 and v2["unlearning"]["state_version"] == 2
    served = predict(with_data, "mine", x)  # the runtime notices the new state and serves version 2
    expected = torch.softmax(other((x - 0.5) / 0.25), dim=1).detach().numpy()
    assert served["model_version"] == 2 and served["weights_sha256"] == v2["weights_sha256"]
    assert np.allclose([p["probabilities"] for p in served["predictions"]], expected, atol=1e-4)


def test_bad_model_registrations_leave_the_store_untouched(with_data, tmp_path):
    good = torchscript(Tiny())
    cases = [
        (b"definitely not a zip", META, None),
        (good[: len(good) // 2], META, None),  # truncated archive
        (torchscript(Tiny(k=5)), META, None),  # wrong number of outputs
        (good, {**META, "train_dataset": "missing"}, None),
        (good, {**META, "test_dataset": "missing"}, None),
        (good, {**META, "input_shape": [3, 8, 8], "mean": None, "std": None}, None),  # dataset shape differs
        (torchscript(Tiny(k=2)), {**META, "num_classes": 2, "class_names": None}, None),  # labels up to 2
        (good, {**META, "name": "../x"}, None),
        (good, {**META, "std": [0.0]}, None),
        (state_dict_bytes(build_model("small_cnn", 1, 3)), META, "resnet18_small"),
        (state_dict_bytes(build_model("small_cnn", 1, 3)), META, "no-such-arch"),
        (state_dict_bytes(build_model("small_cnn", 1, 3)), META, None),  # a state_dict needs arch
    ]
    for data, meta, arch in cases:
        assert_problem(post_model(with_data, data, meta=meta, arch=arch), 422)
    r = with_data.post("/v1/models", headers=auth("admin"), data={"metadata": "{not json"},
                       files={"file": ("m.pt", good)})
    assert_problem(r, 422)
    r = with_data.post("/v1/models", headers=auth("admin"), data={"metadata": json.dumps(META)})  # no file
    assert_problem(r, 422)
    assert stored(tmp_path, "models") == []


# ---- auth ---------------------------------------------------------------------------------------------
def test_registry_auth(client):
    npz = npz_bytes(**dataset_arrays())
    for headers, status in (({}, 401), ({"Authorization": "Bearer wrong"}, 401), (auth("governance"), 403),
                            (auth("inference"), 403)):
        r = client.post("/v1/datasets", headers=headers, data={"name": "d"}, files={"file": ("d.npz", npz)})
        assert_problem(r, status)
        r = client.post("/v1/models", headers=headers, data={"metadata": json.dumps(META)},
                        files={"file": ("m.pt", b"x")})
        assert_problem(r, status)
    for headers, status in (({}, 401), (auth("inference"), 403)):
        assert_problem(client.get("/v1/datasets", headers=headers), status)
        assert_problem(client.get("/v1/datasets/d", headers=headers), status)
    assert client.get("/v1/datasets", headers=auth("governance")).status_code == 200


def test_the_api_process_imports_torch_only_when_registering():
    code = ("import sys, service.routes.registry, unlearnd.ingest.datasets, unlearnd.ingest.models; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"
