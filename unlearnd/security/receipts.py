"""Signed receipts: proof that a forget request was applied, verifiable offline with the server key.

A receipt is canonical JSON (sorted keys, no spaces) signed with HMAC-SHA256 under the receipt key
(UNLEARND_RECEIPT_KEY, or generated once into <data_dir>/receipt_key).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any

from models_store.files import canonical_json
from unlearnd.security.secret_files import key_id, read_or_create_secret_file
from unlearnd.settings import Settings

ALGORITHM = "HMAC-SHA256"


def load_or_create_receipt_key(settings: Settings) -> bytes:
    """UNLEARND_RECEIPT_KEY, else <data_dir>/receipt_key, generated (mode 600) if missing."""
    if settings.receipt_key:
        return settings.receipt_key.encode()
    path = Path(settings.data_dir) / "receipt_key"
    return read_or_create_secret_file(path, lambda: secrets.token_hex(32)).strip().encode()


def sign(body: dict[str, Any], key: bytes) -> dict[str, Any]:
    """{"receipt": body, "signature": {...}} with an HMAC over the canonical JSON of `body`."""
    value = hmac.new(key, canonical_json(body), hashlib.sha256).hexdigest()
    return {"receipt": body, "signature": {"algorithm": ALGORITHM, "key_id": key_id(key), "value": value}}


def verify(document: dict[str, Any], key: bytes) -> bool:
    """True when the document's signature matches its receipt under `key`."""
    try:
        body, signature = document["receipt"], document["signature"]
        if signature.get("algorithm") != ALGORITHM:
            return False
        expected = hmac.new(key, canonical_json(body), hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, str(signature["value"]))
    except (KeyError, TypeError, AttributeError):
        return False


def signature_header(payload: bytes, key: bytes) -> str:
    """Value of the X-Unlearnd-Signature header on callbacks: 'sha256=<hex HMAC of the raw body>'."""
    return "sha256=" + hmac.new(key, payload, hashlib.sha256).hexdigest()
