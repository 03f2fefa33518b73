"""What an attacker with write access to the database does to stored documents (tests only): rewrite a served
state or an artifact manifest in place, or delete the newest states so that an older one is served again."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import delete, select, update

from models_store import Store, schema
from models_store.files import canonical_json


def stored_state(store: Store, model: str, version: int | None = None) -> dict[str, Any]:
    """The stored document of a state (the newest when `version` is None), signature included."""
    states = schema.served_states
    query = select(states.c.document).where(states.c.model == model)
    query = (query.order_by(states.c.state_version.desc()).limit(1) if version is None
             else query.where(states.c.state_version == version))
    with store.db.connect() as conn:
        return json.loads(conn.scalar(query))


def rewrite_state(store: Store, model: str, document: dict[str, Any], version: int | None = None) -> None:
    """Replace the stored document of a state (the newest when `version` is None) without signing it."""
    states = schema.served_states
    version = version if version is not None else stored_state(store, model)["state_version"]
    with store.db.transaction() as conn:
        changed = conn.execute(update(states).where(states.c.model == model, states.c.state_version == version)
                               .values(document=canonical_json(document).decode())).rowcount
    assert changed == 1


def drop_states_after(store: Store, model: str, version: int) -> None:
    """Delete every state newer than `version`: the older, validly signed one is the newest again."""
    states = schema.served_states
    with store.db.transaction() as conn:
        conn.execute(delete(states).where(states.c.model == model, states.c.state_version > version))


def stored_manifest(store: Store, artifact_id: str) -> dict[str, Any]:
    with store.db.connect() as conn:
        return json.loads(conn.scalar(select(schema.artifacts.c.manifest).where(schema.artifacts.c.id == artifact_id)))


def rewrite_manifest(store: Store, artifact_id: str, manifest: dict[str, Any]) -> None:
    with store.db.transaction() as conn:
        changed = conn.execute(update(schema.artifacts).where(schema.artifacts.c.id == artifact_id)
                               .values(manifest=canonical_json(manifest).decode())).rowcount
    assert changed == 1
