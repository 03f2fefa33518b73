"""Ed25519 signing: key file, key ids, signed store documents, receipts, rotation and `unlearnd verify-receipt`."""

import json
import stat

import pytest
import torch
from safetensors.torch import save

from models_store import IntegrityError, Store
from models_store.files import canonical_json, sha256_bytes
from models_store.state import ServedState
from tests.tamper import rewrite_manifest, rewrite_state, stored_state
from unlearnd.cli.commands import main
from unlearnd.security.receipts import sign, verify
from unlearnd.security.signing import (
    SignatureError,
    Signer,
    Verifier,
    jwk_public_key,
    key_id,
    keyring_path,
    load_signer,
    rotate_signing_key,
    signing_key_file,
)
from unlearnd.settings import Settings


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default data directory, if anything used one, would land here
    for name in ("UNLEARND_DATA_DIR", "UNLEARND_SIGNING_KEY_FILE", "UNLEARND_RECEIPT_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("UNLEARND_DATA_DIR", str(tmp_path / "data"))
    return Settings()


def test_key_file_is_created_once_owner_only_and_kid_is_the_rfc7638_thumbprint(settings):
    signer = load_signer(settings)
    path = signing_key_file(settings)
    assert path == settings.data_dir / "signing_key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_signer(settings).current_key_id == signer.current_key_id  # not regenerated
    # RFC 8037 appendix A.3: the thumbprint of the example key
    example = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert key_id(jwk_public_key(example)) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_signing_key_file_setting_moves_the_key_out_of_the_data_dir(tmp_path):
    key = tmp_path / "secrets" / "unlearnd.pem"
    settings = Settings(data_dir=tmp_path / "data", signing_key_file=key)
    load_signer(settings)
    assert key.exists() and not (tmp_path / "data" / "signing_key.pem").exists()


def test_sign_and_verify_refuse_tampering_unknown_keys_and_other_algorithms(settings, tmp_path):
    signer = load_signer(settings)
    payload = canonical_json({"a": 1})
    signature = signer.sign(payload)
    assert signature["algorithm"] == "Ed25519" and signature["key_id"] == signer.current_key_id
    signer.verify(payload, signature)
    with pytest.raises(SignatureError, match="does not match"):
        signer.verify(canonical_json({"a": 2}), signature)
    other = Signer(_other_key(tmp_path))
    with pytest.raises(SignatureError, match="unknown key"):
        other.verify(payload, signature)
    for bad in (None, "x", {**signature, "algorithm": "HMAC-SHA256"}, {**signature, "value": "!!"},
                {**signature, "value": 5}):
        with pytest.raises(SignatureError):
            signer.verify(payload, bad)


def _other_key(tmp_path):
    path = tmp_path / "other" / "key.pem"
    rotate_signing_key(path)  # no key there yet: creates one
    return path


def _state(model="m", weights_sha256="ab" * 32, artifacts=()):
    return ServedState(model=model, state_version=1, weights_sha256=weights_sha256, artifacts=tuple(artifacts))


def test_store_signs_states_and_manifests_and_refuses_edits_even_with_recomputed_hashes(settings):
    store = Store(settings.store_dir, signer=load_signer(settings))
    manifest = store.put_artifact({"delta": torch.ones(1, 4, 4)}, {
        "kind": "forget_vector", "model": "m", "weights_sha256": "ab" * 32, "request_ids": []})
    assert manifest["signature"]["algorithm"] == "Ed25519"
    written = store.publish_state(_state(artifacts=[manifest["id"]]))
    assert store.read_state("m") == written and written.signature is not None
    written = written.as_stored()

    # δ zeroed, file sha256 and manifest sha256 recomputed: only the signature can tell
    artifacts = settings.store_dir / "artifacts"
    data = save({"delta": torch.zeros(1, 4, 4)})
    (artifacts / f"{manifest['id']}.safetensors").write_bytes(data)
    forged = {k: v for k, v in manifest.items() if k not in ("manifest_sha256", "signature")}
    forged["file_sha256"] = sha256_bytes(data)
    forged["manifest_sha256"] = sha256_bytes(canonical_json(forged))
    rewrite_manifest(store, manifest["id"], {**forged, "signature": manifest["signature"]})
    with pytest.raises(IntegrityError, match="fails verification"):
        store.load_artifact(manifest["id"])
    rewrite_manifest(store, manifest["id"], forged)  # the signature removed
    with pytest.raises(IntegrityError, match="not signed"):
        store.get_artifact_manifest(manifest["id"])

    # the served state edited: nothing applied any more
    store.publish_state(store.read_state("m").advanced(requests=["r"]))
    rewrite_state(store, "m", {**stored_state(store, "m"), "artifacts": []})
    with pytest.raises(IntegrityError, match="fails verification"):
        store.read_state("m")
    assert store.read_state("m", verify=False).artifacts == ()
    assert store.state_history("m", verify=False)[0].artifacts == (manifest["id"],)  # state 1 is intact
    rewrite_state(store, "m", {**written, "artifacts": []}, version=1)
    with pytest.raises(IntegrityError, match="fails verification"):
        store.read_state_version("m", 1)
    assert store.state_history("m", verify=False)[0].artifacts == ()
    # another model's signed state copied over this one's
    other = store.publish_state(_state(model="n"))
    rewrite_state(store, "m", other.as_stored())
    with pytest.raises(IntegrityError, match="another model"):
        store.read_state("m")


def test_receipts_are_ed25519_and_verify_from_the_public_key_alone(settings, tmp_path):
    signer = load_signer(settings)
    document = sign({"request_id": "fr_1", "metrics": {"UA": 100.0}}, signer)
    assert document["signature"]["algorithm"] == "Ed25519"
    jwks = tmp_path / "keys.json"
    jwks.write_text(json.dumps(signer.jwks()))
    public = Verifier.from_file(jwks)
    assert verify(document, public)
    document["receipt"]["metrics"]["UA"] = 99.0
    assert not verify(document, public)
    assert not verify({"receipt": []}, public) and not verify("x", public)


def test_rotation_keeps_old_signatures_verifiable_and_running_signers_switch(settings, tmp_path):
    signer = load_signer(settings)  # a running process, loaded before the rotation
    old_kid = signer.current_key_id
    old_receipt = sign({"request_id": "fr_old"}, signer)
    store = Store(settings.store_dir, signer=signer)
    store.publish_state(_state())

    assert main(["rotate-signing-key"]) == 0
    assert keyring_path(signing_key_file(settings)).exists()
    assert stat.S_IMODE(signing_key_file(settings).stat().st_mode) == 0o600
    new_receipt = sign({"request_id": "fr_new"}, signer)  # the running signer picked up the new key
    assert new_receipt["signature"]["key_id"] != old_kid == old_receipt["signature"]["key_id"]
    fresh = load_signer(settings)
    assert fresh.current_key_id == new_receipt["signature"]["key_id"]
    assert verify(old_receipt, fresh) and verify(new_receipt, fresh)
    assert Store(settings.store_dir, signer=fresh).read_state("m").state_version == 1  # old state still valid
    assert [k["kid"] for k in fresh.jwks()["keys"]] == [fresh.current_key_id, old_kid]  # current first

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(fresh.jwks()))
    for name, document in (("old", old_receipt), ("new", new_receipt)):
        (tmp_path / f"{name}.json").write_text(json.dumps(document))
        assert main(["verify-receipt", str(tmp_path / f"{name}.json"), "--public-key", str(keys)]) == 0
        assert main(["verify-receipt", str(tmp_path / f"{name}.json")]) == 0  # this server's keys, read-only


def test_verify_receipt_exit_codes_and_it_never_creates_keys(settings, tmp_path, capsys):
    fresh_dir = settings.data_dir
    receipt = tmp_path / "r.json"
    signer = Signer(_other_key(tmp_path))
    receipt.write_text(json.dumps(sign({"request_id": "fr_9", "model": "m"}, signer)))
    pem = tmp_path / "public.pem"
    from cryptography.hazmat.primitives import serialization

    pem.write_bytes(signer._private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def run(*args):
        code = main(["verify-receipt", *map(str, args)])
        return code, capsys.readouterr()

    # no key given, none in this (new) data directory: usage error, and no key made
    code, out = run(receipt)
    assert code == 2 and "--public-key" in out.err and "Traceback" not in out.err
    assert not fresh_dir.exists() or not any(fresh_dir.iterdir())
    assert not (tmp_path / ".unlearnd").exists()

    code, out = run(receipt, "--public-key", pem)
    assert code == 0 and "fr_9" in out.out and signer.current_key_id in out.out
    assert run(receipt, "--public-key", tmp_path / "missing.pem")[0] == 2
    assert run(receipt, "--public-key", tmp_path)[0] == 2  # a directory
    (tmp_path / "garbage.pem").write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    assert run(receipt, "--public-key", tmp_path / "garbage.pem")[0] == 2
    (tmp_path / "empty.json").write_text('{"keys": []}')
    assert run(receipt, "--public-key", tmp_path / "empty.json")[0] == 2
    assert run(tmp_path / "missing.json", "--public-key", pem)[0] == 2
    (tmp_path / "not-a-receipt.json").write_text("{}")  # a missing key file is a usage error, whatever the receipt
    assert run(tmp_path / "not-a-receipt.json", "--public-key", tmp_path / "missing.pem")[0] == 2
    unreadable = tmp_path / "unreadable.json"
    unreadable.write_bytes(b"\xff\xfe\x00")
    assert run(unreadable, "--public-key", pem)[0] == 2

    other_keys = tmp_path / "other-keys.json"  # a key that did not sign it: invalid, not a usage error
    other_keys.write_text(json.dumps(load_signer(Settings(data_dir=tmp_path / "elsewhere")).jwks()))
    code, out = run(receipt, "--public-key", other_keys)
    assert code == 1 and "unknown key" in out.err
    tampered = json.loads(receipt.read_text())
    tampered["receipt"]["model"] = "other"
    receipt.write_text(json.dumps(tampered))
    code, out = run(receipt, "--public-key", pem)
    assert code == 1 and "INVALID" in out.err
    receipt.write_text(json.dumps({"not": "a receipt"}))
    assert run(receipt, "--public-key", pem)[0] == 1
    receipt.write_text("[1, 2]")
    assert run(receipt, "--public-key", pem)[0] == 1
    with pytest.raises(SystemExit) as usage:
        main(["verify-receipt"])
    assert usage.value.code == 2
    assert not fresh_dir.exists() or not any(fresh_dir.iterdir())


def test_verify_receipt_exits_2_on_a_key_file_of_the_wrong_kind(settings, tmp_path, capsys):
    signer = Signer(_other_key(tmp_path))
    receipt = tmp_path / "r.json"
    receipt.write_text(json.dumps(sign({"request_id": "fr_9"}, signer)))
    hmac_key = tmp_path / "receipt_key"
    hmac_key.write_text("secret")
    assert main(["verify-receipt", str(receipt), "--key-file", str(hmac_key)]) == 2  # HMAC key, Ed25519 receipt
    assert main(["verify-receipt", str(receipt), "--public-key", str(hmac_key)]) == 2  # not a key at all
    assert "Traceback" not in capsys.readouterr().err
