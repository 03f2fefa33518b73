"""`unlearnd adopt-store`: a data directory from before signing is checked against its sha256 and signed."""

import pytest
import torch
from safetensors.torch import save

from models_store import IntegrityError, Ledger, Store
from models_store.files import atomic_write_json, read_json
from unlearnd.cli.commands import adopt_store, main
from unlearnd.cli.launcher import unsigned_store_notice
from unlearnd.security.signing import open_store, unsigned_documents
from unlearnd.settings import Settings


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("UNLEARND_DATA_DIR", "UNLEARND_SIGNING_KEY_FILE", "UNLEARND_RECEIPT_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("UNLEARND_DATA_DIR", str(tmp_path / "data"))
    return Settings()


def _old_store(settings):
    """What a data directory from before signing holds: a model, an artifact and a state serving it, unsigned."""
    store = Store(settings.store_dir)  # no signer: nothing signed, as before the change
    record = store.create_model({"name": "m", "arch": "small_cnn"}, {"w": torch.ones(2, 2)})
    manifest = store.put_artifact({"delta": torch.ones(1, 4, 4)}, {
        "kind": "forget_vector", "model": "m", "weights_sha256": record["weights_sha256"], "request_ids": ["fr_1"]})
    state = store.read_state("m")
    store.write_state("m", {**state, "state_version": 2, "artifacts": [manifest["id"]], "requests": ["fr_1"]})
    return store, record, manifest


def _adoptions(settings):
    return Ledger(settings.ledger_path).audit_entries(action="store.adopted")


def test_an_old_store_is_refused_until_adopted_then_everything_verifies(settings, capsys):
    _, record, manifest = _old_store(settings)
    signed = open_store(settings)
    with pytest.raises(IntegrityError, match="not signed"):
        signed.read_state("m")
    assert unsigned_store_notice(settings) and "unlearnd adopt-store" in unsigned_store_notice(settings)
    assert "\n" not in unsigned_store_notice(settings)

    assert adopt_store(settings) == 0
    out = capsys.readouterr().out
    assert "3 served state file(s) of 1 model(s), 1 artifact manifest(s)" in out  # states/1, states/2, state.json

    store = open_store(settings)
    state = store.read_state("m")
    assert state["state_version"] == 2 and state["artifacts"] == [manifest["id"]]
    store.verify_state_files("m", state)
    assert [s["state_version"] for s in store.state_history("m")] == [1, 2]
    tensors, loaded = store.load_artifact(manifest["id"])
    assert torch.equal(tensors["delta"], torch.ones(1, 4, 4)) and loaded["signature"]["algorithm"] == "Ed25519"
    assert store.load_weights("m", record["weights_sha256"])["w"].sum() == 4
    assert list(unsigned_documents(settings.store_dir)) == [] and unsigned_store_notice(settings) is None

    [entry] = _adoptions(settings)
    assert entry["actor"] == "cli" and entry["detail"]["artifacts"] == [manifest["id"]]
    assert sorted(entry["detail"]["states"]["m"]) == ["state.json", "states/1.json", "states/2.json"]
    assert entry["detail"]["refused"] == []

    # a second run changes nothing and writes no audit entry
    before = {p: p.read_bytes() for p in settings.store_dir.rglob("*.json")}
    assert adopt_store(settings) == 0
    assert "0 served state file(s) of 0 model(s), 0 artifact manifest(s); 4 already signed" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in settings.store_dir.rglob("*.json")} == before
    assert len(_adoptions(settings)) == 1


def test_a_tampered_unsigned_artifact_is_refused_and_so_is_the_state_serving_it(settings, capsys):
    _, _, manifest = _old_store(settings)
    artifacts = settings.store_dir / "artifacts"
    (artifacts / f"{manifest['id']}.safetensors").write_bytes(save({"delta": torch.zeros(1, 4, 4)}))  # δ zeroed

    assert main(["adopt-store"]) == 1
    captured = capsys.readouterr()
    assert "1 served state file(s)" in captured.out  # states/1.json serves nothing: adopted
    assert f"artifacts/{manifest['id']}.json" in captured.err and "file_sha256" in captured.err
    assert "models/m/state.json" in captured.err and "models/m/states/2.json" in captured.err

    assert "signature" not in read_json(artifacts / f"{manifest['id']}.json")
    store = open_store(settings)
    with pytest.raises(IntegrityError, match="not signed"):
        store.get_artifact_manifest(manifest["id"])
    with pytest.raises(IntegrityError, match="not signed"):
        store.read_state("m")
    assert store.state_history("m", verify=False)[0]["signature"]  # states/1.json
    [entry] = _adoptions(settings)
    assert len(entry["detail"]["refused"]) == 3 and entry["detail"]["artifacts"] == []

    # once the tensor file is restored, a second run adopts the rest
    (artifacts / f"{manifest['id']}.safetensors").write_bytes(save({"delta": torch.ones(1, 4, 4)}))
    assert adopt_store(settings) == 0
    open_store(settings).verify_state_files("m", open_store(settings).read_state("m"))


def test_unsigned_states_that_do_not_match_their_files_are_refused(settings, capsys):
    _old_store(settings)
    model_dir = settings.store_dir / "models" / "m"
    other = read_json(model_dir / "states" / "1.json")
    atomic_write_json(model_dir / "states" / "1.json", {**other, "weights_sha256": "ab" * 32})  # other weights
    atomic_write_json(model_dir / "states" / "2.json", {**read_json(model_dir / "states" / "2.json"), "model": "x"})
    assert adopt_store(settings) == 1
    err = capsys.readouterr().err
    assert "states/1.json" in err and "missing or altered" in err
    assert "states/2.json" in err and "another model" in err
    assert "signature" not in read_json(model_dir / "states" / "1.json")
    assert "signature" in read_json(model_dir / "state.json")  # the current state matches its files


def test_signed_documents_are_left_alone_and_a_bad_signature_is_listed_not_replaced(settings, capsys):
    store = open_store(settings)
    record = store.create_model({"name": "m", "arch": "small_cnn"}, {"w": torch.ones(2, 2)})
    path = settings.store_dir / "models" / "m" / "state.json"
    state = read_json(path)
    assert adopt_store(settings) == 0 and _adoptions(settings) == []
    atomic_write_json(path, {**state, "requests": ["fr_x"]})  # edited after signing
    assert adopt_store(settings) == 1
    assert "fails verification" in capsys.readouterr().err
    assert read_json(path)["signature"] == state["signature"]  # not re-signed
    assert record["weights_sha256"] == state["weights_sha256"]


def test_nothing_to_adopt_without_a_store(settings, capsys):
    assert adopt_store(settings) == 0
    assert "nothing to adopt" in capsys.readouterr().out
    assert not settings.data_dir.exists()
    assert unsigned_store_notice(settings) is None
