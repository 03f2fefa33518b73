import pytest
import torch
from fastapi.testclient import TestClient

from models_store import Store
from service.main import create_app
from unlearnd.security.signing import open_store
from unlearnd.settings import Settings
from unlearning import NormalizedClassifier, build_model

KEYS = {"admin": "key-admin", "governance": "key-gov", "inference": "key-inf"}


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


@pytest.fixture
def settings(tmp_path) -> Settings:
    """No Redis behind this URL: these tests cover what the API decides before it needs one."""
    return Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0",
                    api_keys=",".join(f"{role}:{key}" for role, key in KEYS.items()))


@pytest.fixture
def client(settings) -> TestClient:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def model_store(settings) -> Store:
    """Model `tiny` (a small CNN, 10 classes, 1×8×8) trained on dataset `tinyset` (ids a, b, c), in a store
    signed with the key the app uses."""
    return register_tiny(open_store(settings))


def register_tiny(store: Store) -> Store:
    """Register model `tiny` (a small CNN, 10 classes, 1×8×8, untrained) and its dataset `tinyset` in `store`."""
    net = NormalizedClassifier(build_model("small_cnn", 1, 10), [0.5], [0.25])
    store.put_dataset({"name": "tinyset", "ids_train": ["a", "b", "c"], "num_classes": 10},
                      {"x_train": torch.zeros(3, 1, 8, 8), "y_train": torch.tensor([0, 1, 2])})
    store.create_model({"name": "tiny", "arch": "small_cnn", "input_shape": [1, 8, 8], "num_classes": 10,
                        "mean": [0.5], "std": [0.25], "train_dataset": "tinyset"}, net.state_dict())
    return store


def serve_forget_vector(store: Store, value: float, request_ids: list[str]) -> dict:
    """Make `tiny` serve state 2: a forget vector (δ = `value` everywhere) on its weights; returns its manifest."""
    state = store.read_state("tiny")
    manifest = store.put_artifact({"delta": torch.full((1, 8, 8), value)}, {
        "kind": "forget_vector", "model": "tiny", "weights_sha256": state.weights_sha256,
        "request_ids": request_ids})
    store.publish_state(state.advanced(artifacts=[manifest["id"]], requests=request_ids))
    return manifest
