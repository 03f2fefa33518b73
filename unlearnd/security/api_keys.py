"""API keys: parsed from UNLEARND_API_KEYS, or generated once and kept in the data directory."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from unlearnd.security.secret_files import read_or_create_secret_file
from unlearnd.settings import Settings

ROLES = ("admin", "governance", "inference")


def parse_api_keys(text: str) -> dict[str, str]:
    """'role:key,role:key' -> {key: role}. Raises ValueError on an unknown role or an empty key."""
    keys: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        role, sep, key = pair.partition(":")
        if not sep or role not in ROLES or not key:
            raise ValueError(f"UNLEARND_API_KEYS entry {pair.split(':')[0]!r}...: expected role:key, "
                             f"role in {ROLES}")
        keys[key] = role
    if not keys:
        raise ValueError("UNLEARND_API_KEYS holds no keys")
    return keys


def load_or_create_api_keys(settings: Settings) -> dict[str, str]:
    """{key: role} from the environment, else from <data_dir>/api_keys.json, created (mode 600) if missing."""
    if settings.api_keys:
        return parse_api_keys(settings.api_keys)

    def generate() -> str:
        return json.dumps({role: f"{role[:3]}_{secrets.token_urlsafe(24)}" for role in ROLES}, indent=2)

    by_role = json.loads(read_or_create_secret_file(Path(settings.data_dir) / "api_keys.json", generate))
    return {key: role for role, key in by_role.items()}
