"""Records of a store written before the database held them: files under the store directory, imported once.

    models/<name>/model.json, versions/<n>.json, states/<n>.json     the model, superseded versions, served states
    datasets/<name>/dataset.json, data.safetensors                  a dataset record and its tensors
    artifacts/<id>.json                                             artifact manifests

Documents are imported exactly as stored, signatures included (an unsigned one stays unsigned and refused until
`unlearnd adopt-store`); dataset tensors are copied to their content-addressed blob key. The files stay where
they are; blobs (weights, archives, artifact tensors) already have the keys the store reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert, select

from models_store import schema
from models_store.errors import StoreError
from models_store.files import canonical_json, sha256_bytes
from models_store.state import now_iso
from models_store.store import NAME_PATTERN, Store


def has_file_records(root: Path) -> bool:
    """Whether `root` holds records in the file layout of stores from before the database."""
    return any(Path(root).glob("models/*/model.json")) or any(Path(root).glob("datasets/*/dataset.json"))


def import_file_records(store: Store) -> dict[str, int]:
    """Copy the file records under `store.root` into the database, skipping any the database has already; returns
    how many of each kind were imported. Idempotent; a file that does not parse stops it (StoreError names it)."""
    root = store.root
    counts = {"models": 0, "versions": 0, "states": 0, "datasets": 0, "artifacts": 0}
    with store.db.transaction() as conn:
        for model_dir in sorted(p for p in (root / "models").glob("*") if (p / "model.json").is_file()):
            name = model_dir.name
            if not NAME_PATTERN.match(name) or _exists(conn, schema.models.c.name, name):
                continue
            record = _read(model_dir / "model.json")
            conn.execute(insert(schema.models).values(name=name, version=int(record["version"]),
                                                      record=json.dumps(record)))
            counts["models"] += 1
            for path in sorted((model_dir / "versions").glob("*.json")):
                older = _read(path)
                conn.execute(insert(schema.model_versions).values(name=name, version=int(older["version"]),
                                                                  record=json.dumps(older)))
                counts["versions"] += 1
            for path in sorted((model_dir / "states").glob("*.json")):
                if not path.stem.isdigit():
                    continue
                conn.execute(insert(schema.served_states).values(
                    model=name, state_version=int(path.stem), document=canonical_json(_read(path)).decode(),
                    created_at=now_iso()))
                counts["states"] += 1
        for path in sorted((root / "artifacts").glob("*.json")):
            if _exists(conn, schema.artifacts.c.id, path.stem):
                continue
            manifest = _read(path)
            conn.execute(insert(schema.artifacts).values(
                id=path.stem, model=str(manifest.get("model", "")), manifest=canonical_json(manifest).decode(),
                created_at=str(manifest.get("created_at", now_iso()))))
            counts["artifacts"] += 1
        for dataset_dir in sorted(p for p in (root / "datasets").glob("*") if (p / "dataset.json").is_file()):
            name = dataset_dir.name
            if not NAME_PATTERN.match(name) or _exists(conn, schema.datasets.c.name, name):
                continue
            record = _read(dataset_dir / "dataset.json")
            data = (dataset_dir / "data.safetensors").read_bytes()
            if sha256_bytes(data) != record.get("data_sha256"):
                raise StoreError(f"dataset {name!r}: data.safetensors does not match its record's data_sha256")
            store.blobs.put(f"datasets/{name}/{record['data_sha256']}.safetensors", data)
            conn.execute(insert(schema.datasets).values(name=name, record=json.dumps(record),
                                                        created_at=str(record.get("created_at", now_iso()))))
            counts["datasets"] += 1
    return counts


def _exists(conn: Connection, column: Any, value: str) -> bool:
    return conn.scalar(select(column).where(column == value)) is not None


def _read(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot import {path}: {exc}") from None
    if not isinstance(document, dict):
        raise StoreError(f"cannot import {path}: not a JSON object")
    return document
