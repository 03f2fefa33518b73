"""Ed25519 signatures: the server key that signs served states, artifact manifests and receipts, and the
keyring of public keys that verifies them.

- Key file: UNLEARND_SIGNING_KEY_FILE (unencrypted PKCS#8 PEM, mode 600), by default
  <data_dir>/signing_key.pem; generated on first start when missing (`load_signer`), never by a verifier.
- Keyring: `<key file without suffix>.keyring.json` next to it, a JWKS of the public keys of earlier keys
  (`rotate_signing_key` retires the current key there), so that what they signed still verifies.
- A signature is {"algorithm": "Ed25519", "key_id": kid, "value": base64url} over canonical JSON bytes;
  kid is the RFC 7638 JWK thumbprint of the public key (a fingerprint anyone can recompute from `x`).

`Signer` satisfies `models_store.store.Signer` (the store only ever sees sign(bytes) / verify(bytes, sig)).
Nothing here imports torch.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from models_store import Database, Store
from models_store.files import atomic_write_bytes, canonical_json
from models_store.store import now_iso
from unlearnd.security.secret_files import read_or_create_secret_file
from unlearnd.settings import Settings

ALGORITHM = "Ed25519"

log = logging.getLogger(__name__)


class SignatureError(ValueError):
    """A signature that does not verify, or a key that cannot be read; the message says why."""


class KeyFileError(SignatureError):
    """A key, keyring or JWKS file that is missing, unreadable or not a key."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    if not isinstance(text, str):
        raise SignatureError("not a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SignatureError("not a base64url string") from None


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint: base64url(sha256) of the key's required JWK members in canonical JSON."""
    required = {"crv": "Ed25519", "kty": "OKP", "x": b64url(_raw(public_key))}
    return b64url(hashlib.sha256(canonical_json(required)).digest())


def public_jwk(public_key: Ed25519PublicKey, **extra: Any) -> dict[str, Any]:
    """The public key as a JWK (RFC 8037): kty OKP, crv Ed25519, x, plus kid and use."""
    return {"kty": "OKP", "crv": "Ed25519", "kid": key_id(public_key), "x": b64url(_raw(public_key)),
            "use": "sig", **extra}


def jwk_public_key(jwk: Any) -> Ed25519PublicKey:
    """An Ed25519 public key from a JWK; SignatureError when it is not one (or its kid is not its thumbprint)."""
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise SignatureError("not an Ed25519 JWK (kty OKP, crv Ed25519)")
    raw = b64url_decode(jwk.get("x", ""))
    if len(raw) != 32:
        raise SignatureError("an Ed25519 JWK's x must be 32 bytes")
    key = Ed25519PublicKey.from_public_bytes(raw)
    if "kid" in jwk and jwk["kid"] != key_id(key):
        raise SignatureError(f"JWK kid {jwk['kid']!r} is not the thumbprint of its key")
    return key


def generate_private_pem() -> str:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def _private_from_pem(data: bytes, source: Path | str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{source} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{source} holds a {type(key).__name__}, not an Ed25519 key")
    return key


class Verifier:
    """Public keys by kid: verifies signatures made by any of them. Holds no secret."""

    def __init__(self, keys: dict[str, Ed25519PublicKey] | None = None):
        self._keys: dict[str, Ed25519PublicKey] = dict(keys or {})

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def _key_for(self, kid: str) -> Ed25519PublicKey | None:
        return self._keys.get(kid)

    def verify(self, payload: bytes, signature: Any) -> None:
        """Returns when `signature` is a valid Ed25519 signature of `payload` by a known key; raises
        SignatureError saying why not."""
        if not isinstance(signature, dict):
            raise SignatureError("signature missing or malformed")
        if signature.get("algorithm") != ALGORITHM:
            raise SignatureError(f"signature algorithm {signature.get('algorithm')!r} is not {ALGORITHM}")
        kid = signature.get("key_id")
        key = self._key_for(kid) if isinstance(kid, str) else None
        if key is None:
            raise SignatureError(f"signed by unknown key {kid!r}")
        try:
            key.verify(b64url_decode(signature.get("value", "")), payload)
        except InvalidSignature:
            raise SignatureError(f"signature by key {kid} does not match the signed content") from None

    def jwks(self) -> dict[str, Any]:
        """{"keys": [JWK, ...]}: what GET /v1/keys serves and `unlearnd verify-receipt --public-key` reads."""
        return {"keys": [public_jwk(k) for k in self._keys.values()]}

    @classmethod
    def from_file(cls, path: Path) -> Verifier:
        """Public keys from a PEM file (public or private key) or a JWKS / JWK JSON file. Never creates
        anything; KeyFileError when the file is missing, unreadable or holds no Ed25519 key."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
        if data.lstrip().startswith(b"-----BEGIN"):
            try:
                public = serialization.load_pem_public_key(data)
            except (ValueError, TypeError):
                public = _private_from_pem(data, path).public_key()
            if not isinstance(public, Ed25519PublicKey):
                raise KeyFileError(f"{path} holds a {type(public).__name__}, not an Ed25519 key")
            return cls({key_id(public): public})
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise KeyFileError(f"{path} is neither a PEM key nor JSON (a JWKS from GET /v1/keys)") from None
        jwks = document.get("keys") if isinstance(document, dict) and "keys" in document else [document]
        if not isinstance(jwks, list):
            raise KeyFileError(f"{path}: 'keys' is not a list")
        keys: dict[str, Ed25519PublicKey] = {}
        for jwk in jwks:
            try:
                public = jwk_public_key(jwk)
            except SignatureError:
                continue  # other key types may share a JWKS; they are not ours to use
            keys[key_id(public)] = public
        if not keys:
            raise KeyFileError(f"{path} holds no Ed25519 public key")
        return cls(keys)


def keyring_path(key_file: Path) -> Path:
    """Where the public keys of retired keys live: next to the key file."""
    return key_file.with_name(key_file.stem + ".keyring.json")


def _read_keyring(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        keys = json.loads(path.read_text())["keys"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"cannot read keyring {path}: {exc}") from None
    if not isinstance(keys, list):
        raise KeyFileError(f"keyring {path}: 'keys' is not a list")
    return keys


class Signer(Verifier):
    """The server key (signs) and the keyring (verifies what current and retired keys signed).

    Reloads both when the key file changes on disk, so `unlearnd rotate-signing-key` takes effect in
    running processes: the next signature uses the new key, and a signature by a key this process has not
    loaded yet makes it look at the files again before refusing.
    """

    def __init__(self, key_file: Path):
        super().__init__()
        self.key_file = Path(key_file)
        self._lock = threading.Lock()
        self._stamp: tuple[Any, ...] | None = None
        self._private: Ed25519PrivateKey | None = None
        self._reload()

    @property
    def current_key_id(self) -> str:
        assert self._private is not None
        return key_id(self._private.public_key())

    def _file_stamp(self) -> tuple[Any, ...]:
        def stamp(path: Path) -> tuple[int, int, int] | None:
            try:
                st = path.stat()
            except FileNotFoundError:
                return None
            return st.st_ino, st.st_mtime_ns, st.st_size

        return stamp(self.key_file), stamp(keyring_path(self.key_file))

    def _reload(self) -> None:
        with self._lock:
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            try:
                data = self.key_file.read_bytes()
            except OSError as exc:
                raise KeyFileError(f"cannot read signing key {self.key_file}: {exc.strerror or exc}") from None
            private = _private_from_pem(data, self.key_file)
            keys: dict[str, Ed25519PublicKey] = {}
            for jwk in _read_keyring(keyring_path(self.key_file)):
                try:
                    public = jwk_public_key(jwk)
                except SignatureError:
                    continue
                keys[key_id(public)] = public
            keys[key_id(private.public_key())] = private.public_key()
            self._private, self._keys, self._stamp = private, keys, stamp

    def sign(self, payload: bytes) -> dict[str, str]:
        self._reload()
        assert self._private is not None
        return {"algorithm": ALGORITHM, "key_id": self.current_key_id,
                "value": b64url(self._private.sign(payload))}

    def _key_for(self, kid: str) -> Ed25519PublicKey | None:
        if kid not in self._keys:
            self._reload()  # rotated by another process since we loaded
        return self._keys.get(kid)

    def jwks(self) -> dict[str, Any]:
        """The current key first, then the retired ones."""
        self._reload()
        current = self.current_key_id
        ordered = sorted(self._keys.items(), key=lambda item: item[0] != current)
        return {"keys": [public_jwk(k) for _, k in ordered]}


def signing_key_file(settings: Settings) -> Path:
    return Path(settings.signing_key_file or Path(settings.data_dir) / "signing_key.pem")


def load_signer(settings: Settings) -> Signer:
    """The server's Signer; the key file is generated (mode 600) on first start when it is missing."""
    path = signing_key_file(settings)
    read_or_create_secret_file(path, generate_private_pem)
    return Signer(path)


def local_verifier(settings: Settings) -> Verifier:
    """What this server's own key files verify, read-only: KeyFileError when there is no key file."""
    path = signing_key_file(settings)
    if not path.exists():
        raise KeyFileError(f"no signing key at {path}")
    return Signer(path)


def announcer(settings: Settings) -> Callable[[str], None]:
    """What the store calls after publishing a served state: bump the model's state counter in Redis, which every
    API process checks before it serves (`unlearnd.state_versions`). Redis down: logged; the API then notices
    the new state at its next periodic check (`UNLEARND_VERIFY_INTERVAL_S`)."""
    from redis.exceptions import RedisError

    from unlearnd.queue import redis_connection
    from unlearnd.state_versions import StateVersions

    versions = StateVersions(redis_connection(settings), settings.queue_name)

    def announce(model: str) -> None:
        try:
            versions.bump(model)
        except RedisError as exc:  # the state itself is published; only the announcement is late
            log.error("could not announce the new state of %s to the API processes (they notice it within "
                      "UNLEARND_VERIFY_INTERVAL_S): %s", model, exc)

    return announce


def open_store(settings: Settings, db: Database | None = None) -> Store:
    """The store every process uses: signs what it writes and verifies what it reads with the server key;
    records in the database of `UNLEARND_DATABASE_URL` (`db`, when the caller opened it already), blobs in the
    store directory or the S3 bucket of `UNLEARND_STORE_URL`. A store directory from before the database
    (records as files) is imported into it once (`models_store.legacy`)."""
    from models_store.database import open_database
    from models_store.legacy import has_file_records, import_file_records
    from unlearnd.blobs import open_blobs

    store = Store(settings.store_dir, signer=load_signer(settings), blobs=open_blobs(settings),
                  db=db if db is not None else open_database(settings), on_publish=announcer(settings))
    if has_file_records(settings.store_dir) and not store.list_models() and not store.list_datasets():
        import_file_records(store)
    return store


def unsigned_documents(store: Store) -> Iterator[str]:
    """The served states and artifact manifests of `store` that carry no signature, named ("artifact <id>",
    "state <n> of model <name>"): written before signing, refused by every load until `unlearnd adopt-store`
    checks and signs them."""
    for kind, name, version in store.unsigned_documents():
        yield f"artifact {name}" if kind == "artifact" else f"state {version} of model {name}"


def rotate_signing_key(key_file: Path) -> tuple[str | None, str]:
    """Retire the current key into the keyring (its signatures keep verifying) and write a new one.

    Returns (old kid or None when there was no key, new kid). The keyring is written before the key, so a
    crash in between leaves the old key current and also listed in the keyring (harmless).
    """
    key_file = Path(key_file)
    old_kid = None
    if key_file.exists():
        try:
            data = key_file.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"cannot read signing key {key_file}: {exc.strerror or exc}") from None
        old_public = _private_from_pem(data, key_file).public_key()
        old_kid = key_id(old_public)
        ring = keyring_path(key_file)
        entries = [k for k in _read_keyring(ring) if isinstance(k, dict) and k.get("kid") != old_kid]
        entries.append(public_jwk(old_public, retired_at=now_iso()))
        atomic_write_bytes(ring, json.dumps({"keys": entries}, indent=2).encode() + b"\n")
    new_pem = generate_private_pem()
    key_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = key_file.with_name(f".{key_file.name}.{os.getpid()}.rotate.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_pem)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, key_file)
    new_kid = key_id(_private_from_pem(new_pem.encode(), key_file).public_key())
    return old_kid, new_kid
