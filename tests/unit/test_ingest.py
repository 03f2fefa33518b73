"""Parsing and validation of registered datasets and models (unlearnd.ingest) and their storage."""

import errno
import io
import json
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from models_store import Store
from service.schemas import parse_model_metadata
from unlearnd.ingest.datasets import (
    load_builtin_digits,
    load_imagefolder,
    load_source,
    load_torchvision,
    parse_npz,
)
from unlearnd.ingest.errors import DatasetTooLargeError, IngestError
from unlearnd.ingest.models import parse_model
from unlearnd.runtime import load_classifier, load_image_sets
from unlearning import ForgetVectorConfig, build_model, learn_forget_vector, split_by_classes


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def images(n=12, shape=(1, 4, 4), dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    return rng.random((n, *shape)).astype(dtype)


# ---- npz ----------------------------------------------------------------------------------------------
def test_npz_uint8_round_trip_with_default_ids(tmp_path):
    x, y = images(), np.arange(12) % 3
    parsed = parse_npz(npz_bytes(x_train=x, y_train=y))
    assert parsed.tensors["x_train"].dtype == torch.uint8
    assert np.array_equal(parsed.tensors["x_train"].numpy(), x)
    assert parsed.tensors["y_train"].dtype == torch.int64
    info = parsed.record("d")
    assert info["ids_train"] == [str(i) for i in range(12)]
    assert info["input_shape"] == [1, 4, 4] and info["num_classes"] == 3 and info["n_train"] == 12
    assert info["n_test"] == 0 and info["class_counts_train"] == [4, 4, 4]
    store = Store(tmp_path)
    store.put_dataset(parsed.record("d"), parsed.tensors)
    train, test = load_image_sets(store, "d")
    assert test is None and train.ids[3] == "3"
    assert torch.allclose(train.x, torch.from_numpy(x).float() / 255)


def test_npz_float_with_custom_ids_test_split_and_class_names():
    x, y = images(dtype=np.float64), np.arange(12) % 2
    parsed = parse_npz(npz_bytes(
        x_train=x, y_train=y, ids_train=np.array([f"user-{i}" for i in range(12)]),
        x_test=images(4, dtype=np.float32, seed=1), y_test=np.array([0, 1, 1, 2]),
        class_names=np.array(["a", "b", "c"])))
    info = parsed.record("d")
    assert parsed.tensors["x_train"].dtype == torch.float32
    assert info["ids_train"][0] == "user-0" and info["n_test"] == 4
    assert info["num_classes"] == 3 and info["class_names"] == ["a", "b", "c"]


def test_npz_integer_ids_become_strings():
    parsed = parse_npz(npz_bytes(x_train=images(3), y_train=np.array([0, 1, 0]),
                                 ids_train=np.array([10, 20, 30])))
    assert parsed.record("d")["ids_train"] == ["10", "20", "30"]


def test_npz_mixed_dtypes_become_float():
    parsed = parse_npz(npz_bytes(x_train=images(3), y_train=np.array([0, 1, 0]),
                                 x_test=images(2, dtype=np.float32), y_test=np.array([0, 1])))
    assert parsed.tensors["x_train"].dtype == torch.float32 == parsed.tensors["x_test"].dtype
    assert float(parsed.tensors["x_train"].max()) <= 1.0


X, Y = images(4), np.array([0, 1, 0, 1])
NAN = images(4, dtype=np.float32)
NAN[0, 0, 0, 0] = np.nan


@pytest.mark.parametrize("arrays, message", [
    ({"y_train": Y}, "lacks"),
    ({"x_train": X[:, 0], "y_train": Y}, "4 dimensions"),
    ({"x_train": NAN, "y_train": Y}, "NaN"),
    ({"x_train": images(4, dtype=np.float32) * 2, "y_train": Y}, "[0, 1]"),
    ({"x_train": X.astype(np.int64), "y_train": Y}, "dtype int64"),
    ({"x_train": X, "y_train": np.array([0, 1, -1, 0])}, "negative"),
    ({"x_train": X, "y_train": Y.astype(np.float32)}, "integers"),
    ({"x_train": X, "y_train": Y[:3]}, "one label per image"),
    ({"x_train": X, "y_train": Y, "ids_train": np.array(["a", "b", "a", "c"])}, "unique"),
    ({"x_train": X, "y_train": Y, "ids_train": np.array(["a", "b"])}, "one id per"),
    ({"x_train": X, "y_train": Y, "ids_train": np.array(["a", "", "b", "c"])}, "printable"),
    ({"x_train": X, "y_train": Y, "x_test": X}, "both"),
    ({"x_train": X, "y_train": Y, "x_test": images(2, shape=(1, 5, 5)), "y_test": Y[:2]}, "x_test images"),
    ({"x_train": X, "y_train": Y, "extra": Y}, "unknown arrays"),
    ({"x_train": X, "y_train": Y, "class_names": np.array(["only-one"])}, "no class name"),
    ({"x_train": images(4, shape=(8, 8, 3)), "y_train": Y}, "channels-last"),
])
def test_npz_bad_inputs(arrays, message):
    with pytest.raises(IngestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_npz(npz_bytes(**arrays))


def test_npz_object_arrays_are_refused_without_unpickling():
    data = npz_bytes(x_train=X, y_train=Y, ids_train=np.array(["a", 1, None, 2.0], dtype=object))
    with pytest.raises(IngestError, match="pickle"):
        parse_npz(data)


@pytest.mark.parametrize("data", [b"", b"not a zip at all", npz_bytes(x_train=X, y_train=Y)[:200]])
def test_npz_malformed_archives(data):
    with pytest.raises(IngestError):
        parse_npz(data)


def test_npz_unpacked_size_limit():
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x_train.npy", b"\0" * 2_000_000)
    with pytest.raises(DatasetTooLargeError):
        parse_npz(buf.getvalue(), max_uncompressed_bytes=1_000_000)


# ---- ImageFolder --------------------------------------------------------------------------------------
def write_png(path, size=(6, 5), mode="RGB", value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 7)
    Image.new(mode, size, color).save(path)


def test_imagefolder_rgb_with_test_split(tmp_path):
    write_png(tmp_path / "train/cat/a.png", value=10)
    write_png(tmp_path / "train/cat/b.png", value=20)
    write_png(tmp_path / "train/dog/c.png", mode="L", value=255)  # grayscale among colour -> RGB
    (tmp_path / "train/dog/notes.txt").write_text("not an image extension: skipped")
    (tmp_path / "train/dog/.hidden.png").write_bytes(b"hidden files are skipped")
    write_png(tmp_path / "test/dog/d.png", value=30)
    parsed = load_imagefolder(tmp_path)
    info = parsed.record("f")
    assert info["class_names"] == ["cat", "dog"] and info["input_shape"] == [3, 5, 6]
    assert info["ids_train"] == ["cat/a.png", "cat/b.png", "dog/c.png"]
    assert parsed.tensors["y_train"].tolist() == [0, 0, 1] and parsed.tensors["y_test"].tolist() == [1]
    assert parsed.tensors["x_train"].dtype == torch.uint8
    assert parsed.tensors["x_train"][0, :, 0, 0].tolist() == [10, 245, 7]
    assert parsed.tensors["x_train"][2].min() == 255


def test_imagefolder_grayscale(tmp_path):
    for i in range(3):
        write_png(tmp_path / f"train/{i % 2}/{i}.png", size=(4, 4), mode="L", value=i * 100)
    parsed = load_source("imagefolder", str(tmp_path))
    assert parsed.record("f")["input_shape"] == [1, 4, 4] and parsed.record("f")["n_test"] == 0


def test_a_root_that_cannot_be_read_is_the_requests_fault_and_a_server_fault_is_not(tmp_path, monkeypatch):
    with pytest.raises(IngestError, match="File name too long"):
        load_source("imagefolder", str(tmp_path / ("0" * 4096)))

    def out_of_file_handles(root):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr("unlearnd.ingest.datasets.load_imagefolder", out_of_file_handles)
    with pytest.raises(OSError) as raised:
        load_source("imagefolder", str(tmp_path))
    assert not isinstance(raised.value, IngestError)


def test_a_root_leading_to_a_path_that_is_not_utf8_is_refused(tmp_path):
    """The record keeps the resolved root, and no response could carry a name of bytes that are not UTF-8."""
    target = os.fsencode(tmp_path) + b"/caf\xe9"  # Latin-1 bytes: no UTF-8 text
    os.makedirs(target + b"/train/a")
    Image.new("L", (4, 4)).save(os.fsdecode(target + b"/train/a/1.png"))
    os.symlink(target, tmp_path / "link")
    with pytest.raises(IngestError, match="not UTF-8"):
        load_source("imagefolder", str(tmp_path / "link"))
    os.rename(target, tmp_path / "café")
    os.remove(tmp_path / "link")
    os.symlink(tmp_path / "café", tmp_path / "link")
    assert load_source("imagefolder", str(tmp_path / "link")).record("f")["root"] == str(tmp_path / "café")


def test_class_names_are_any_unicode_text_but_not_a_lone_surrogate():
    arrays = {"x_train": np.zeros((2, 1, 4, 4), np.uint8), "y_train": np.array([0, 1])}
    names = ["scientist \U0001F469\u200d\U0001F52C", "a\u00a0b"]  # a joiner, a no-break space
    assert parse_npz(npz_bytes(**arrays, class_names=np.array(names))).record("f")["class_names"] == names
    with pytest.raises(IngestError, match="Unicode text"):
        parse_npz(npz_bytes(**arrays, class_names=np.array(["\ud800", "b"])))


def test_imagefolder_errors(tmp_path):
    with pytest.raises(IngestError, match="not a directory"):
        load_imagefolder(tmp_path / "missing")
    with pytest.raises(IngestError, match="train/"):
        load_imagefolder(tmp_path)
    write_png(tmp_path / "train/a/1.png", size=(4, 4))
    write_png(tmp_path / "train/b/2.png", size=(5, 4))
    with pytest.raises(IngestError, match="one size"):
        load_imagefolder(tmp_path)
    (tmp_path / "train/b/2.png").unlink()
    write_png(tmp_path / "train/b/2.png", size=(4, 4))
    write_png(tmp_path / "test/zebra/3.png", size=(4, 4))
    with pytest.raises(IngestError, match="not a class"):
        load_imagefolder(tmp_path)
    (tmp_path / "test/zebra/3.png").unlink()
    (tmp_path / "test/zebra/3.png").write_bytes(b"not a png")
    (tmp_path / "test/zebra").rename(tmp_path / "test/a")
    with pytest.raises(IngestError, match="not a readable image"):
        load_imagefolder(tmp_path)


# ---- torchvision and builtin ----------------------------------------------------------------------------
def _idx(path, array: np.ndarray, magic: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_a_local_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    _idx(raw / "train-images-idx3-ubyte", images(5, shape=(28, 28)), 2051)
    _idx(raw / "train-labels-idx1-ubyte", np.array([0, 1, 2, 3, 9]), 2049)
    _idx(raw / "t10k-images-idx3-ubyte", images(2, shape=(28, 28)), 2051)
    _idx(raw / "t10k-labels-idx1-ubyte", np.array([4, 5]), 2049)
    parsed = load_torchvision("MNIST", tmp_path)
    info = parsed.record("mnist")
    assert info["input_shape"] == [1, 28, 28] and info["n_train"] == 5 and info["n_test"] == 2
    assert info["num_classes"] == 10 and info["class_names"][0].startswith("0")
    assert parsed.tensors["y_train"].tolist() == [0, 1, 2, 3, 9]


def test_torchvision_cifar10_from_a_local_root(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [1, 7]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)  # fake files have other md5s
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    parsed = load_torchvision("CIFAR10", tmp_path)
    info = parsed.record("c")
    assert info["input_shape"] == [3, 32, 32] and info["n_train"] == 10 and info["n_test"] == 2
    assert info["class_names"] == [f"c{i}" for i in range(10)] and info["ids_train"][:2] == ["0", "1"]


def test_torchvision_missing_root_or_data_is_refused_and_never_downloads(tmp_path):
    with pytest.raises(IngestError, match="not a directory"):
        load_torchvision("CIFAR10", tmp_path / "nope")
    with pytest.raises(IngestError, match="never"):
        load_torchvision("CIFAR10", tmp_path)
    with pytest.raises(IngestError, match="unknown torchvision"):
        load_torchvision("ImageNet", tmp_path)
    with pytest.raises(IngestError, match="unknown source"):
        load_source("http://example.com/data", None)
    assert list(tmp_path.iterdir()) == []


def test_builtin_digits_matches_the_demo_split():
    info = load_builtin_digits().record("digits")
    assert info["n_train"] == 1437 and info["n_test"] == 360 and info["ids_train"][0] == "train-0"
    assert info["input_shape"] == [1, 8, 8] and info["num_classes"] == 10


# ---- models -------------------------------------------------------------------------------------------
META = {"name": "m", "input_shape": [1, 8, 8], "num_classes": 3, "train_dataset": "d"}


class Tiny(nn.Module):
    def __init__(self, k=3):
        super().__init__()
        self.fc = nn.Linear(64, k)

    def forward(self, x):
        return self.fc(x.flatten(1))


def torchscript_bytes(module: nn.Module) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(module), buf)
    return buf.getvalue()


def saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_torchscript_model_parses_stores_and_loads_back(tmp_path):
    torch.manual_seed(0)
    net = Tiny()
    meta = parse_model_metadata(json.dumps({**META, "mean": [0.5], "std": [0.25]}))
    parsed = parse_model(torchscript_bytes(net), "m.pt", None, meta)
    assert parsed.format == "torchscript" and parsed.arch == "torchscript"
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(parsed.model(x), net((x - 0.5) / 0.25), atol=1e-6)
    store = Store(tmp_path)
    record = {"name": "m", "arch": parsed.arch, "format": parsed.format, "input_shape": [1, 8, 8],
              "num_classes": 3, "mean": [0.5], "std": [0.25], "train_dataset": "d",
              "torchscript_sha256": store.put_torchscript("m", parsed.torchscript)}
    stored = store.create_model(record, parsed.state_dict)
    loaded = load_classifier(store, stored, stored["weights_sha256"], torch.device("cpu"))
    assert torch.allclose(loaded(x), net((x - 0.5) / 0.25), atol=1e-6)


def test_forget_vector_learns_through_a_torchscript_model():
    torch.manual_seed(0)
    meta = parse_model_metadata(json.dumps(META))
    model = parse_model(torchscript_bytes(Tiny()), "m.pt", None, meta).model
    from unlearning import ImageSet

    x = torch.rand(30, 1, 8, 8)
    with torch.no_grad():
        labels = model(x).argmax(1)  # every sample right, so the forget class has something to forget
    train = ImageSet(x, labels, tuple(map(str, range(30))))
    forget = int(labels.mode().values)
    result = learn_forget_vector(model, split_by_classes(train, [forget]), ForgetVectorConfig(max_epochs=2))
    # gradients reach δ through the scripted graph: δ moved (the returned best δ may still be the start)
    assert result.delta.shape == (1, 8, 8) and result.history[-1]["delta_l2"] > 0


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_state_dict_with_arch(suffix):
    torch.manual_seed(0)
    net = build_model("small_cnn", 1, 3)
    if suffix == ".pt":
        data = saved({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}})
    else:
        from safetensors.torch import save

        data = save(net.state_dict())
    parsed = parse_model(data, f"w{suffix}", "small_cnn", parse_model_metadata(json.dumps(META)))
    x = torch.rand(2, 1, 8, 8)
    assert parsed.format == "safetensors" and parsed.arch == "small_cnn" and parsed.torchscript is None
    assert torch.allclose(parsed.model(x), net.eval()(x), atol=1e-6)
    assert set(parsed.state_dict) >= {"mean", "std"} and all(k == "mean" or k == "std" or k.startswith("net.")
                                                              for k in parsed.state_dict)


def test_bad_models_are_refused():
    meta = parse_model_metadata(json.dumps(META))
    good = build_model("small_cnn", 1, 3).state_dict()
    nan = {k: v.clone() for k, v in good.items()}
    next(iter(nan.values()))[0] = float("nan")
    cases = [
        (b"garbage", None, "not a TorchScript"),
        (saved(good), None, "not a TorchScript"),  # a state_dict without arch
        (torchscript_bytes(Tiny()), "small_cnn", "TorchScript archive; send it without"),
        (saved(good), "no_such_arch", "cannot build"),
        (saved(good), "resnet18_small", "does not fit"),
        (saved(Tiny()), "small_cnn", "weights_only"),  # a pickled module: refused by weights_only
        (saved(torch.zeros(3)), "small_cnn", "does not hold a state_dict"),
        (saved(nan), "small_cnn", "NaN"),
        (torchscript_bytes(Tiny(k=5)), None, r"expected logits \[1, 3\]"),
        (b"", None, "empty"),
    ]
    for data, arch, message in cases:
        with pytest.raises(IngestError, match=message):
            parse_model(data, "w.pt", arch, meta)


class Detached(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        return self.fc(x.detach().flatten(1))


def test_model_without_input_gradients_is_refused():
    with pytest.raises(IngestError, match="differentiably"):
        parse_model(torchscript_bytes(Detached()), "m.pt", None, parse_model_metadata(json.dumps(META)))


@pytest.mark.parametrize("change, message", [
    ({"mean": [0.1, 0.2]}, "2 values for 1 channels"),
    ({"std": [0.0]}, "positive"),
    ({"class_names": ["a"]}, "1 names for 3"),
    ({"input_shape": [1, 8]}, "input_shape"),
    ({"num_classes": 1}, "num_classes"),
    ({"unexpected": 1}, "unexpected"),
    ({"name": None}, "name"),
])
def test_bad_metadata(change, message):
    with pytest.raises(IngestError, match=message):
        parse_model_metadata(json.dumps({**META, **change}))


def test_metadata_must_be_json_and_finite():
    with pytest.raises(IngestError, match="not JSON"):
        parse_model_metadata("{name: m}")
    with pytest.raises(IngestError, match="not JSON"):
        parse_model_metadata("[" * 100_000 + "]" * 100_000)
    with pytest.raises(IngestError, match="not JSON"):
        parse_model_metadata("9" * 5000)  # longer than Python converts to an int
    with pytest.raises(IngestError, match="lone UTF-16 surrogate"):
        parse_model_metadata(json.dumps({**META, "class_names": ["\ud800", "b", "c"]}))
    with pytest.raises(IngestError, match="mean"):
        parse_model_metadata(json.dumps({**META, "mean": [float("nan")]}))


# ---- store: versions ------------------------------------------------------------------------------------
def test_new_version_gets_a_fresh_state_and_keeps_the_old_record(tmp_path):
    store = Store(tmp_path)
    record = {"name": "m", "arch": "small_cnn", "input_shape": [1, 8, 8], "num_classes": 3,
              "mean": [0.0], "std": [1.0], "train_dataset": "d"}
    v1 = store.create_model(record, {"w": torch.zeros(2)})
    store.publish_state(store.read_state("m").advanced(artifacts=["a"], requests=["r1"], forgotten_classes=[1]))
    with store.try_model_lock("m") as locked:
        assert locked
        with store.try_model_lock("m") as again:  # a second holder does not wait, it is told
            assert not again
        v2 = store.create_model_version(record, {"w": torch.ones(2)})
    assert v2["version"] == 2 and v2["weights_sha256"] != v1["weights_sha256"]
    assert v2["supersedes"]["requests_in_force"] == ["r1"] and v2["supersedes"]["version"] == 1
    state = store.read_state("m")
    assert state.state_version == 3 and state.artifacts == () and state.model_version == 2
    assert state.weights_sha256 == v2["weights_sha256"]
    assert store.get_model_version("m", 1) == v1 and store.get_model_version("m", 2) == v2
    assert [r["version"] for r in store.list_model_versions("m")] == [1, 2]
    assert torch.equal(store.load_weights("m", v1["weights_sha256"])["w"], torch.zeros(2))
