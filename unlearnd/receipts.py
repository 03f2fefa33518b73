"""Signed receipts: proof that a forget request was applied, verifiable offline with the server key.

A receipt is canonical JSON (sorted keys, no spaces) signed with HMAC-SHA256 under the receipt key
(UNLEARND_RECEIPT_KEY, or generated once into <data_dir>/receipt_key).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

from models_store.files import canonical_json
from unlearnd.settings import Settings

ALGORITHM = "HMAC-SHA256"


def load_or_create_receipt_key(settings: Settings) -> bytes:
    if settings.receipt_key:
        return settings.receipt_key.encode()
    path = Path(settings.data_dir) / "receipt_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".receipt_key.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip().encode()


def key_fingerprint(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:12]


def sign(body: dict[str, Any], key: bytes) -> dict[str, Any]:
    """{"receipt": body, "signature": {...}} with an HMAC over the canonical JSON of `body`."""
    value = hmac.new(key, canonical_json(body), hashlib.sha256).hexdigest()
    return {"receipt": body, "signature": {"algorithm": ALGORITHM, "key_id": key_fingerprint(key), "value": value}}


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
