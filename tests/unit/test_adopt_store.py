"""`unlearnd adopt-store`: records from before signing are checked against their sha256 and signed; a store
directory from before the database is imported into it first."""

import json

import pytest
import torch
from safetensors.torch import save

from models_store import IntegrityError, Store, open_database, open_ledger
from models_store.files import canonical_json, sha256_bytes
from tests.tamper import rewrite_state, stored_state
from unlearnd.cli.commands import adopt_store
from unlearnd.cli.launcher import unsigned_store_notice
from unlearnd.security.signing import open_store, unsigned_documents
from unlearnd.settings import Settings


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("UNLEARND_DATA_DIR", "UNLEARND_SIGNING_KEY_FILE", "UNLEARND_RECEIPT_KEY", "UNLEARND_DATABASE_URL",
                 "UNLEARND_STORE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("UNLEARND_DATA_DIR", str(tmp_path / "data"))
    return Settings()


def _unsigned_store(settings):
    """Records as a store from before signing holds them: a model, an artifact and a state serving it, unsigned."""
    store = Store(settings.store_dir, db=open_database(settings))  # no signer: nothing signed
    record = store.create_model({"name": "m", "arch": "small_cnn"}, {"w": torch.ones(2, 2)})
    manifest = store.put_artifact({"delta": torch.ones(1, 4, 4)}, {
        "kind": "forget_vector", "model": "m", "weights_sha256": record["weights_sha256"], "request_ids": ["fr_1"]})
    store.publish_state(store.read_state("m").advanced(artifacts=[manifest["id"]], requests=["fr_1"]))
    return store, record, manifest


def _adoptions(settings):
    return open_ledger(settings).audit_entries(action="store.adopted")


def test_an_unsigned_store_is_refused_until_adopted_then_everything_verifies(settings, capsys):
    _, record, manifest = _unsigned_store(settings)
    signed = open_store(settings)
    with pytest.raises(IntegrityError, match="not signed"):
        signed.read_state("m")
    assert list(unsigned_documents(signed)) == [f"artifact {manifest['id']}", "state 1 of model m",
                                                "state 2 of model m"]
    notice = unsigned_store_notice(settings)
    assert notice and "unlearnd adopt-store" in notice and "\n" not in notice

    assert adopt_store(settings) == 0
    assert "2 served state(s) of 1 model(s), 1 artifact manifest(s)" in capsys.readouterr().out
    store = open_store(settings)
    state = store.read_state("m")
    assert state.state_version == 2 and state.artifacts == (manifest["id"],)
    store.verify_state_files("m", state)
    assert [s.state_version for s in store.state_history("m")] == [1, 2]
    tensors, loaded = store.load_artifact(manifest["id"])
    assert torch.equal(tensors["delta"], torch.ones(1, 4, 4)) and loaded["signature"]["algorithm"] == "Ed25519"
    assert store.load_weights("m", record["weights_sha256"])["w"].sum() == 4
    assert list(unsigned_documents(store)) == [] and unsigned_store_notice(settings) is None
    [entry] = _adoptions(settings)
    assert entry["detail"]["states"] == {"m": [1, 2]} and entry["detail"]["artifacts"] == [manifest["id"]]
    assert adopt_store(settings) == 0 and len(_adoptions(settings)) == 1  # nothing left: nothing audited


def test_a_tampered_unsigned_artifact_is_refused_and_so_is_the_state_serving_it(settings, capsys):
    _, _, manifest = _unsigned_store(settings)
    tensor_file = settings.store_dir / "artifacts" / f"{manifest['id']}.safetensors"
    tensor_file.write_bytes(save({"delta": torch.zeros(1, 4, 4)}))  # δ zeroed, manifest left as it was
    assert adopt_store(settings) == 1
    captured = capsys.readouterr()
    assert "1 served state(s)" in captured.out  # state 1 serves nothing: adopted
    assert f"artifact {manifest['id']}" in captured.err and "file_sha256" in captured.err
    assert "state m state 2" in captured.err
    store = open_store(settings)
    with pytest.raises(IntegrityError, match="not signed"):
        store.get_artifact_manifest(manifest["id"])
    with pytest.raises(IntegrityError, match="not signed"):
        store.read_state("m")
    assert store.read_state_version("m", 1).signature is not None
    [entry] = _adoptions(settings)
    assert len(entry["detail"]["refused"]) == 2 and entry["detail"]["artifacts"] == []

    # once the tensor file is restored, a second run adopts the rest
    tensor_file.write_bytes(save({"delta": torch.ones(1, 4, 4)}))
    assert adopt_store(settings) == 0
    store.verify_state_files("m", store.read_state("m"))


def test_unsigned_states_that_do_not_match_their_records_are_refused(settings, capsys):
    store, _, _ = _unsigned_store(settings)
    rewrite_state(store, "m", {**stored_state(store, "m", 1), "weights_sha256": "ab" * 32}, version=1)
    rewrite_state(store, "m", {**stored_state(store, "m", 2), "model": "x"}, version=2)
    assert adopt_store(settings) == 1
    err = capsys.readouterr().err
    assert "state m state 1" in err and "missing or altered" in err
    assert "state m state 2" in err and "another model" in err
    assert list(unsigned_documents(open_store(settings))) == ["state 1 of model m", "state 2 of model m"]


def test_signed_documents_are_left_alone(settings):
    store = open_store(settings)
    store.create_model({"name": "m", "arch": "small_cnn"}, {"w": torch.ones(2, 2)})
    state = stored_state(store, "m")
    rewrite_state(store, "m", {**state, "requests": ["fr_x"]})  # edited after signing: refused, not adopted
    assert adopt_store(settings) == 0 and _adoptions(settings) == []
    assert stored_state(store, "m")["signature"] == state["signature"]  # not re-signed
    with pytest.raises(IntegrityError, match="fails verification"):
        store.read_state("m")


def test_a_store_directory_from_before_the_database_is_imported_then_adopted(settings):
    """The file layout of older versions: records as JSON files next to the blobs, imported on first open."""
    root = settings.store_dir
    weights = save({"w": torch.ones(2, 2)})
    weights_sha = sha256_bytes(weights)
    (root / "models/m/weights").mkdir(parents=True)
    (root / f"models/m/weights/{weights_sha}.safetensors").write_bytes(weights)
    (root / "models/m/states").mkdir()
    (root / "models/m/model.json").write_bytes(canonical_json({"name": "m", "arch": "small_cnn", "version": 1,
                                                               "weights_sha256": weights_sha}))
    state = {"model": "m", "state_version": 1, "weights_sha256": weights_sha, "artifacts": [], "requests": []}
    (root / "models/m/states/1.json").write_bytes(canonical_json(state))
    (root / "models/m/state.json").write_bytes(canonical_json(state))
    data = save({"x_train": torch.zeros(2, 1, 2, 2), "y_train": torch.tensor([0, 1])})
    (root / "datasets/d").mkdir(parents=True)
    (root / "datasets/d/data.safetensors").write_bytes(data)
    (root / "datasets/d/dataset.json").write_bytes(canonical_json({"name": "d", "data_sha256": sha256_bytes(data)}))

    store = open_store(settings)
    assert [r["name"] for r in store.list_models()] == ["m"] and store.read_state("m", verify=False).state_version == 1
    assert json.loads(json.dumps(store.load_dataset("d")[0]))["name"] == "d"
    assert adopt_store(settings) == 0
    assert open_store(settings).read_state("m").weights_sha256 == weights_sha  # imported once, now signed


def test_nothing_to_adopt_in_an_empty_store(settings, capsys):
    assert adopt_store(settings) == 0
    assert "0 served state(s) of 0 model(s), 0 artifact manifest(s)" in capsys.readouterr().out
    assert _adoptions(settings) == []
