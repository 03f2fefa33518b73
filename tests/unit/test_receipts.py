import hashlib
import hmac
import json

from models_store.files import canonical_json
from unlearnd.cli.commands import main
from unlearnd.security.receipts import load_or_create_receipt_key, signature_header, verify_hmac
from unlearnd.security.secret_files import key_id
from unlearnd.settings import Settings


def _hmac_receipt(body: dict, key: bytes) -> dict:
    """A receipt as issued before receipts were signed with Ed25519."""
    value = hmac.new(key, canonical_json(body), hashlib.sha256).hexdigest()
    return {"receipt": body, "signature": {"algorithm": "HMAC-SHA256", "key_id": key_id(key), "value": value}}


def test_older_hmac_receipts_still_verify_with_their_key():
    doc = _hmac_receipt({"request_id": "fr_1", "metrics": {"UA": 100.0}}, b"k")
    assert verify_hmac(doc, b"k")
    assert not verify_hmac(doc, b"other key")
    doc["receipt"]["metrics"]["UA"] = 99.0
    assert not verify_hmac(doc, b"k")
    assert not verify_hmac({"receipt": {}}, b"k")


def test_signature_header_is_hmac_of_the_raw_body():
    import hashlib
    import hmac

    assert signature_header(b"{}", b"k") == "sha256=" + hmac.new(b"k", b"{}", hashlib.sha256).hexdigest()


def test_receipt_key_is_generated_once(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert load_or_create_receipt_key(settings) == load_or_create_receipt_key(settings)
    assert Settings(data_dir=tmp_path, receipt_key="abc").receipt_key == "abc"
    assert load_or_create_receipt_key(Settings(data_dir=tmp_path, receipt_key="abc")) == b"abc"


def test_cli_verifies_older_hmac_receipts_offline_with_the_key_file(tmp_path, capsys):
    key_file = tmp_path / "key"
    key_file.write_text("secret\n")
    receipt = tmp_path / "r.json"
    receipt.write_text(json.dumps(_hmac_receipt({"request_id": "fr_9", "model": "m"}, b"secret")))
    assert main(["verify-receipt", str(receipt), "--key-file", str(key_file)]) == 0
    assert "fr_9" in capsys.readouterr().out
    tampered = json.loads(receipt.read_text())
    tampered["receipt"]["model"] = "other"
    receipt.write_text(json.dumps(tampered))
    assert main(["verify-receipt", str(receipt), "--key-file", str(key_file)]) == 1
    receipt.write_text("not json")
    assert main(["verify-receipt", str(receipt), "--key-file", str(key_file)]) == 2
