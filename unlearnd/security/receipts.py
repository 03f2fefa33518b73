"""Signed receipts: proof that a forget request was applied, verifiable offline by anyone with the public key.

A receipt is canonical JSON (sorted keys, no spaces) signed with the server's Ed25519 signing key
(`unlearnd.security.signing`); its public keys are served at GET /v1/keys. Receipts issued before that were
signed with HMAC-SHA256 under the receipt key, which only its holder can check (`verify_hmac`); that key now
signs only callbacks (`signature_header`), where the receiver is the one other holder.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any

from models_store.files import canonical_json
from unlearnd.security.secret_files import read_or_create_secret_file
from unlearnd.security.signing import ALGORITHM, SignatureError, Signer, Verifier
from unlearnd.settings import Settings

HMAC_ALGORITHM = "HMAC-SHA256"
__all__ = ["ALGORITHM", "HMAC_ALGORITHM", "check", "sign", "verify", "verify_hmac", "signature_header",
           "load_or_create_receipt_key"]


def load_or_create_receipt_key(settings: Settings) -> bytes:
    """UNLEARND_RECEIPT_KEY, else <data_dir>/receipt_key, generated (mode 600) if missing."""
    if settings.receipt_key:
        return settings.receipt_key.encode()
    path = Path(settings.data_dir) / "receipt_key"
    return read_or_create_secret_file(path, lambda: secrets.token_hex(32)).strip().encode()


def sign(body: dict[str, Any], signer: Signer) -> dict[str, Any]:
    """{"receipt": body, "signature": {"algorithm": "Ed25519", "key_id", "value"}} over the canonical JSON of
    `body`."""
    return {"receipt": body, "signature": signer.sign(canonical_json(body))}


def check(document: Any, verifier: Verifier) -> None:
    """Returns when the document's Ed25519 signature matches its receipt under one of `verifier`'s keys;
    SignatureError saying why not."""
    if not isinstance(document, dict) or not isinstance(document.get("receipt"), dict):
        raise SignatureError("not a receipt: expected {\"receipt\": {...}, \"signature\": {...}}")
    verifier.verify(canonical_json(document["receipt"]), document.get("signature"))


def verify(document: Any, verifier: Verifier) -> bool:
    """True when the document's Ed25519 signature matches its receipt under one of `verifier`'s keys."""
    try:
        check(document, verifier)
    except SignatureError:
        return False
    return True


def verify_hmac(document: dict[str, Any], key: bytes) -> bool:
    """True when a (pre-Ed25519) HMAC receipt's signature matches under `key`."""
    try:
        body, signature = document["receipt"], document["signature"]
        if signature.get("algorithm") != HMAC_ALGORITHM:
            return False
        expected = hmac.new(key, canonical_json(body), hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, str(signature["value"]))
    except (KeyError, TypeError, AttributeError):
        return False


def signature_header(payload: bytes, key: bytes) -> str:
    """Value of the X-Unlearnd-Signature header on callbacks: 'sha256=<hex HMAC of the raw body>'."""
    return "sha256=" + hmac.new(key, payload, hashlib.sha256).hexdigest()
