"""Tamper-evident serving: someone who can write the store (but not read the signing key) zeroes δ with
recomputed sha256 values, or edits the served state: predict answers 503 with the reason, audited and
counted, and rollback onto a tampered state is refused."""


import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save

from models_store import open_ledger
from models_store.files import canonical_json, sha256_bytes
from service.main import create_app
from tests.service.conftest import auth, serve_forget_vector
from tests.tamper import drop_states_after, rewrite_manifest, rewrite_state, stored_state
from unlearnd.security.signing import open_store

INPUTS = {"inputs": [[[[0.5] * 8] * 8]]}


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"verify_interval_s": 0.0})  # re-verify what is served on every call


@pytest.fixture
def forgotten(model_store):
    """Model 'tiny' serving state 2: a forget vector (δ = 0.5 everywhere) on its weights."""
    store = model_store
    manifest = serve_forget_vector(store, 0.5, ["r"])
    return store, manifest


def _zero_delta_with_recomputed_hashes(settings, manifest):
    """What the finding did: δ zeroed, file sha256 and manifest sha256 recomputed, signature left as it was."""
    data = save({"delta": torch.zeros(1, 8, 8)})
    (settings.store_dir / "artifacts" / f"{manifest['id']}.safetensors").write_bytes(data)
    forged = {k: v for k, v in manifest.items() if k not in ("manifest_sha256", "signature")}
    forged["file_sha256"] = sha256_bytes(data)
    forged["manifest_sha256"] = sha256_bytes(canonical_json(forged))
    rewrite_manifest(open_store(settings), manifest["id"], {**forged, "signature": manifest["signature"]})


def _integrity_audit(settings):
    return open_ledger(settings).audit_entries(action="model.integrity_failure")


def test_zeroed_delta_with_recomputed_hashes_is_refused_not_served(client, settings, forgotten):
    _, manifest = forgotten
    served = client.post("/v1/models/tiny/predict", json=INPUTS, headers=auth("inference"))
    assert served.status_code == 200 and served.json()["applied"] == [manifest["id"]]

    _zero_delta_with_recomputed_hashes(settings, manifest)
    for attempt in (1, 2):
        response = client.post("/v1/models/tiny/predict", json=INPUTS, headers=auth("inference"))
        assert response.status_code == 503, response.text
        problem = response.json()
        assert problem["title"] == "Integrity check failed" and manifest["id"] in problem["detail"]
        assert "fails verification" in problem["reason"] and problem["integrity_refusals"] == attempt
    entries = _integrity_audit(settings)
    assert len(entries) == 1 and entries[0]["model"] == "tiny"  # one entry per reason, not per request
    assert manifest["id"] in entries[0]["detail"]["reason"]


def test_zeroed_delta_is_refused_by_a_freshly_started_api_too(settings, forgotten):
    _, manifest = forgotten
    _zero_delta_with_recomputed_hashes(settings, manifest)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        response = c.post("/v1/models/tiny/predict", json=INPUTS, headers=auth("inference"))
    assert response.status_code == 503 and "fails verification" in response.json()["detail"]


@pytest.mark.parametrize("bump_version", [False, True])
def test_served_state_edited_to_apply_nothing_is_refused(client, settings, forgotten, bump_version):
    assert client.post("/v1/models/tiny/predict", json=INPUTS, headers=auth("inference")).status_code == 200
    store = open_store(settings)
    state = stored_state(store, "tiny")
    rewrite_state(store, "tiny", {**state, "artifacts": [], "state_version": state["state_version"] + bump_version})
    response = client.post("/v1/models/tiny/predict", json=INPUTS, headers=auth("inference"))
    assert response.status_code == 503, response.text
    assert "served state" in response.json()["detail"] and "fails verification" in response.json()["detail"]
    assert _integrity_audit(settings)


def test_an_older_signed_state_put_back_in_place_is_refused(client, settings, forgotten):
    assert client.post("/v1/models/tiny/predict", json=INPUTS, headers=auth("inference")).status_code == 200
    drop_states_after(open_store(settings), "tiny", 1)  # state 1 is validly signed
    response = client.post("/v1/models/tiny/predict", json=INPUTS, headers=auth("inference"))
    assert response.status_code == 503 and "went back" in response.json()["detail"]


def test_weights_altered_after_loading_are_noticed_by_the_periodic_check(client, settings, forgotten):
    store, _ = forgotten
    assert client.post("/v1/models/tiny/predict", json=INPUTS, headers=auth("inference")).status_code == 200
    sha = store.read_state("tiny").weights_sha256
    weights = settings.store_dir / "models" / "tiny" / "weights" / f"{sha}.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    response = client.post("/v1/models/tiny/predict", json=INPUTS, headers=auth("inference"))
    assert response.status_code == 503 and "weights" in response.json()["detail"]


def test_rollback_onto_a_tampered_state_is_refused_and_onto_a_good_one_restores_serving(client, settings, forgotten):
    store, manifest = forgotten
    store.publish_state(store.read_state("tiny").advanced())
    _zero_delta_with_recomputed_hashes(settings, manifest)  # state 2 (and 3) now name a forged artifact
    refused = client.post("/v1/models/tiny/rollback", json={"state_version": 2}, headers=auth("admin"))
    assert refused.status_code == 409, refused.text
    assert refused.json()["title"] == "State fails verification" and manifest["id"] in refused.json()["reason"]
    assert store.read_state("tiny").state_version == 3  # nothing written
    assert open_ledger(settings).audit_entries(action="model.rollback_refused")

    state_1 = stored_state(store, "tiny", 1)
    rewrite_state(store, "tiny", {**state_1, "requests": ["someone-else"]}, version=1)  # a history row edited
    refused = client.post("/v1/models/tiny/rollback", json={"state_version": 1}, headers=auth("admin"))
    assert refused.status_code == 409 and "fails verification" in refused.json()["detail"]
    rewrite_state(store, "tiny", state_1, version=1)

    # the current state itself tampered: rolling back onto a state that verifies is how it is replaced
    rewrite_state(store, "tiny", {**stored_state(store, "tiny"), "artifacts": []})
    assert client.post("/v1/models/tiny/predict", json=INPUTS, headers=auth("inference")).status_code == 503
    rolled = client.post("/v1/models/tiny/rollback", json={"state_version": 1, "reason": "replace a tampered state",
                                                          "reinstate": ["r"]}, headers=auth("admin"))
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["state_version"] == 4 and rolled.json()["signature"]["algorithm"] == "Ed25519"
    assert client.post("/v1/models/tiny/predict", json=INPUTS, headers=auth("inference")).status_code == 200


def test_public_keys_are_published_for_every_role(client, settings):
    for role in ("admin", "governance", "inference"):
        response = client.get("/v1/keys", headers=auth(role))
        assert response.status_code == 200
        keys = response.json()["keys"]
        assert keys and {k["kty"] for k in keys} == {"OKP"} and {k["crv"] for k in keys} == {"Ed25519"}
        assert all(k["use"] == "sig" and k["kid"] and k["x"] for k in keys)
    from unlearnd.security.signing import load_signer

    assert keys[0]["kid"] == load_signer(settings).current_key_id
