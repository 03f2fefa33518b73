"""API keys: parsed from UNLEARND_API_KEYS, or generated once and kept in the data directory."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

from unlearnd.settings import Settings

ROLES = ("admin", "governance", "inference")


def parse_api_keys(text: str) -> dict[str, str]:
    """'role:key,role:key' -> {key: role}. Raises ValueError on an unknown role or an empty key."""
    keys: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        role, sep, key = pair.partition(":")
        if not sep or role not in ROLES or not key:
            raise ValueError(f"UNLEARND_API_KEYS entry {pair.split(':')[0]!r}...: expected role:key, role in {ROLES}")
        keys[key] = role
    if not keys:
        raise ValueError("UNLEARND_API_KEYS holds no keys")
    return keys


def load_or_create_api_keys(settings: Settings) -> dict[str, str]:
    """{key: role} from the environment, else from <data_dir>/api_keys.json, created (mode 600) if missing."""
    if settings.api_keys:
        return parse_api_keys(settings.api_keys)
    path = Path(settings.data_dir) / "api_keys.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        generated = {role: f"{role[:3]}_{secrets.token_urlsafe(24)}" for role in ROLES}
        tmp = path.with_name(f".api_keys.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(generated, f, indent=2)
        try:
            os.link(tmp, path)  # fails if another process created the file first; theirs wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    by_role = json.loads(path.read_text())
    return {key: role for role, key in by_role.items()}


def key_id(key: str) -> str:
    """A non-secret identifier of a key for logs and audit: the first 12 hex digits of its sha256."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]
