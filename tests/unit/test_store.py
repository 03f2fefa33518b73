
import pytest
import torch

from models_store import IntegrityError, NotFoundError, Store, StoreError
from models_store.errors import AlreadyExistsError
from tests.tamper import rewrite_manifest, stored_manifest


def _record(name="m"):
    return {"name": name, "arch": "small_cnn", "input_shape": [1, 8, 8], "num_classes": 10,
            "mean": [0.0], "std": [1.0], "train_dataset": "d"}


def test_model_round_trip_creates_version_1_and_initial_state(tmp_path):
    store = Store(tmp_path)
    weights = {"w": torch.arange(6.0).view(2, 3)}
    record = store.create_model(_record(), weights)
    assert record["version"] == 1
    assert store.get_model("m")["weights_sha256"] == record["weights_sha256"]
    assert torch.equal(store.load_weights("m", record["weights_sha256"])["w"], weights["w"])
    state = store.read_state("m")
    assert state.artifacts == () and state.weights_sha256 == record["weights_sha256"]
    with pytest.raises(AlreadyExistsError):
        store.create_model(_record(), weights)


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "x" * 65, "a..b"])
def test_path_like_names_are_refused(tmp_path, name):
    with pytest.raises(StoreError):
        Store(tmp_path).create_model(_record(name), {"w": torch.zeros(1)})
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_artifact_round_trip_and_manifest_hashes(tmp_path):
    store = Store(tmp_path)
    delta = torch.rand(1, 8, 8)
    manifest = store.put_artifact({"delta": delta}, {"kind": "forget_vector", "model": "m",
                                                     "weights_sha256": "ab" * 32, "request_ids": ["r1"]})
    tensors, loaded = store.load_artifact(manifest["id"])
    assert torch.equal(tensors["delta"], delta)
    assert loaded == manifest and len(manifest["manifest_sha256"]) == 64


def test_edited_vector_is_refused(tmp_path):
    store = Store(tmp_path)
    manifest = store.put_artifact({"delta": torch.zeros(1, 8, 8)}, {
        "kind": "forget_vector", "model": "m", "weights_sha256": "0" * 64, "request_ids": []})
    store_file = tmp_path / "artifacts" / f"{manifest['id']}.safetensors"
    data = bytearray(store_file.read_bytes())
    data[-1] ^= 0xFF
    store_file.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        store.load_artifact(manifest["id"])


def test_edited_manifest_is_refused(tmp_path):
    store = Store(tmp_path)
    manifest = store.put_artifact({"delta": torch.zeros(1, 8, 8)}, {
        "kind": "forget_vector", "model": "m", "weights_sha256": "0" * 64, "request_ids": []})
    rewrite_manifest(store, manifest["id"], {**stored_manifest(store, manifest["id"]), "weights_sha256": "1" * 64})
    with pytest.raises(IntegrityError):
        store.get_artifact_manifest(manifest["id"])


def test_missing_things_raise_not_found(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(NotFoundError):
        store.get_model("nope")
    with pytest.raises(NotFoundError):
        store.read_state("nope")
    with pytest.raises(NotFoundError):
        store.load_artifact("forget_vector-0000")


def test_atomic_write_leaves_no_temp_files(tmp_path):
    store = Store(tmp_path)
    store.create_model(_record(), {"w": torch.zeros(2)})
    for _ in range(3):
        store.publish_state(store.read_state("m").advanced(requests=["r"]))
    leftovers = [p for p in tmp_path.rglob("*.tmp")]
    assert leftovers == [] and store.read_state("m").state_version == 4


def test_model_data_takes_held_out_images_from_the_test_dataset(tmp_path):
    from unlearnd.runtime import load_model_data

    store = Store(tmp_path)

    def put(name, n_train, n_test=0):
        tensors = {"x_train": torch.rand(n_train, 1, 2, 2), "y_train": torch.zeros(n_train, dtype=torch.long)}
        if n_test:
            tensors |= {"x_test": torch.rand(n_test, 1, 2, 2),
                        "y_test": torch.zeros(n_test, dtype=torch.long)}
        ids = [str(i) for i in range(n_train)]
        store.put_dataset({"name": name, "ids_train": ids, "num_classes": 2}, tensors)

    put("train", 10, n_test=3)
    put("holdout-with-test", 8, n_test=5)
    put("holdout-plain", 7)
    sizes = {}
    for test_dataset in (None, "train", "holdout-with-test", "holdout-plain"):
        train, test = load_model_data(store, {"train_dataset": "train", "test_dataset": test_dataset})
        assert len(train) == 10
        sizes[test_dataset] = len(test)
    assert sizes == {None: 3, "train": 3, "holdout-with-test": 5, "holdout-plain": 7}
