"""Models, datasets, artifacts and served states: records in the database, tensors and archives as blobs.

Records (the model record and its versions, dataset records, artifact manifests, every served state) are rows of
the database (`models_store.database`: SQLite or PostgreSQL; tables in `models_store.schema`), JSON text exactly
as written. Immutable bytes are blobs (`models_store.blobs`: the store directory or S3), named by their sha256
where they can be:

    models/<name>/weights/<sha256>.safetensors      models/<name>/torchscript/<sha256>.pt
    datasets/<name>/<sha256>.safetensors            artifacts/<id>.safetensors        reports/<request_id>.png

A record is written only after the blobs it names, so every record finds its bytes. Served states are published
by one conditional INSERT of version n + 1 (a second writer on top of version n fails: `StaleStateError`).
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError as DuplicateKey

from models_store import schema
from models_store.blobs import Blobs, LocalBlobs
from models_store.errors import AlreadyExistsError, IntegrityError, NotFoundError, StaleStateError, StoreError
from models_store.files import canonical_json, sha256_bytes
from models_store.state import ServedState, now_iso

if TYPE_CHECKING:
    import torch

    from models_store.database import Database

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(name: str, what: str = "name") -> str:
    """Names become directory names: letters, digits, '.', '_', '-' only, no '..', at most 64 chars."""
    if not NAME_PATTERN.match(name) or ".." in name:
        raise StoreError(f"invalid {what} {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def _tensors_to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def _tensors_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(data)


SIGNATURE = "signature"
"""The field of a served state or artifact manifest that holds its signature (over everything else in it)."""


class Signer(Protocol):
    """What the store needs to sign and verify documents; it never sees a key
    (`unlearnd.security.signing.Signer` is the server's)."""

    def sign(self, payload: bytes) -> dict[str, str]:
        """A signature of `payload`, stored as the document's `signature` field."""
        ...

    def verify(self, payload: bytes, signature: Any) -> None:
        """Return when `signature` signs `payload`; raise ValueError saying why not."""
        ...


def _unsigned(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != SIGNATURE}


class Store:
    def __init__(self, root: Path, signer: Signer | None = None, blobs: Blobs | None = None,
                 db: Database | None = None, on_publish: Callable[[str], None] | None = None):
        """`signer`: every served state and artifact manifest written is signed with it, and every one read
        must carry a valid signature (IntegrityError otherwise). None: neither (tests of the layout).
        `blobs`: where weights, archives, tensors and reports live (default: files under `root`). `db`: where
        the records live (default: SQLite at `root`/records.sqlite3, for tests; every process passes the
        database of its settings, see `unlearnd.security.signing.open_store`). `on_publish(model)` is called
        after each new served state is committed (the service announces it to every API process)."""
        from models_store.database import Database

        self.root = Path(root)
        self.signer = signer
        self.blobs = blobs if blobs is not None else LocalBlobs(self.root)
        if db is None:
            db = Database.from_url(f"sqlite:///{self.root / 'records.sqlite3'}")
            db.migrate()
        self.db = db
        self.on_publish = on_publish

    def _announce(self, model: str) -> None:
        if self.on_publish is not None:
            self.on_publish(model)

    # ---- signatures ---------------------------------------------------------------------------------
    def _signed(self, document: dict[str, Any]) -> dict[str, Any]:
        body = _unsigned(document)
        if self.signer is None:
            return body
        return {**body, SIGNATURE: self.signer.sign(canonical_json(body))}

    def check_signature(self, document: dict[str, Any], what: str) -> dict[str, Any]:
        """`document` when its signature verifies (or the store has no signer); IntegrityError otherwise."""
        if self.signer is None:
            return document
        if SIGNATURE not in document:
            raise IntegrityError(f"{what} is not signed")
        try:
            self.signer.verify(canonical_json(_unsigned(document)), document[SIGNATURE])
        except ValueError as exc:
            raise IntegrityError(f"{what} fails verification: {exc}") from None
        return document

    # ---- models -------------------------------------------------------------------------------------
    def has_model(self, name: str) -> bool:
        with self.db.connect() as conn:
            return conn.scalar(select(schema.models.c.name).where(schema.models.c.name == name)) is not None

    def list_models(self) -> list[dict[str, Any]]:
        with self.db.connect() as conn:
            return [json.loads(r) for r in conn.scalars(select(schema.models.c.record).order_by(schema.models.c.name))]

    def get_model(self, name: str) -> dict[str, Any]:
        with self.db.connect() as conn:
            record = conn.scalar(select(schema.models.c.record).where(schema.models.c.name == name))
        if record is None:
            raise NotFoundError(f"no model named {name!r}")
        return json.loads(record)

    def put_weights(self, name: str, state_dict: dict[str, torch.Tensor]) -> str:
        """Store a state_dict as safetensors named by its sha256; returns the sha256."""
        data = _tensors_to_bytes(state_dict)
        digest = sha256_bytes(data)
        self.blobs.put(self._weights_key(name, digest), data)
        return digest

    def _weights_key(self, name: str, weights_sha256: str) -> str:
        return f"models/{check_name(name, 'model name')}/weights/{check_name(weights_sha256, 'sha256')}.safetensors"

    def load_weights(self, name: str, weights_sha256: str) -> dict[str, torch.Tensor]:
        try:
            data = self.blobs.get(self._weights_key(name, weights_sha256))
        except NotFoundError:
            raise NotFoundError(f"model {name!r} has no weights {weights_sha256[:12]}") from None
        if sha256_bytes(data) != weights_sha256:
            raise IntegrityError(f"weights file of {name!r} does not match its sha256 {weights_sha256[:12]}")
        return _tensors_from_bytes(data)

    def create_model(self, record: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Register a model: weights, its record (version 1) and an initial served state with nothing
        applied, in one transaction: AlreadyExistsError if the name exists or another registration takes it
        first."""
        name = check_name(record["name"], "model name")
        weights_sha256 = self.put_weights(name, state_dict)
        record = {**record, "version": 1, "weights_sha256": weights_sha256, "created_at": now_iso()}
        try:
            with self.db.transaction() as conn:
                conn.execute(insert(schema.models).values(name=name, version=1, record=json.dumps(record)))
                self._insert_state(conn, ServedState.initial(name, weights_sha256))
        except DuplicateKey:
            raise AlreadyExistsError(f"a model named {name!r} exists already") from None
        self._announce(name)
        return record

    def put_torchscript(self, name: str, data: bytes) -> str:
        """Store a TorchScript archive named by its sha256 (the network's code; weights stay safetensors)."""
        digest = sha256_bytes(data)
        self.blobs.put(self._torchscript_key(name, digest), data)
        return digest

    def _torchscript_key(self, name: str, torchscript_sha256: str) -> str:
        return f"models/{check_name(name, 'model name')}/torchscript/{check_name(torchscript_sha256, 'sha256')}.pt"

    def load_torchscript(self, name: str, torchscript_sha256: str) -> bytes:
        """The archive's bytes, verified against its sha256 (load them with torch.jit.load)."""
        try:
            data = self.blobs.get(self._torchscript_key(name, torchscript_sha256))
        except NotFoundError:
            raise NotFoundError(f"model {name!r} has no TorchScript archive {torchscript_sha256[:12]}") from None
        if sha256_bytes(data) != torchscript_sha256:
            raise IntegrityError(f"TorchScript archive of {name!r} does not match its sha256 "
                                 f"{torchscript_sha256[:12]}")
        return data

    def create_model_version(
        self, record: dict[str, Any], state_dict: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        """Replace a model's weights by a new version with a fresh served state (nothing applied).

        Call it under `model_lock(name)`. The superseded record is kept as a version row, its weights stay
        stored; the new record says what it supersedes, including the requests that were in force (they do not
        carry over: their artifacts were computed for the old weights). The state_version keeps counting up so
        that every reader sees the switch. A name never registered gets version 1, as `create_model`. One
        transaction, conditional on the version it replaces: of two concurrent new versions each gets its own
        number.
        """
        name = check_name(record["name"], "model name")
        weights_sha256 = self.put_weights(name, state_dict)
        for _ in range(20):
            if not self.has_model(name):
                with contextlib.suppress(AlreadyExistsError):
                    return self.create_model(record, state_dict)
                continue
            with contextlib.suppress(DuplicateKey, StaleStateError):
                return self._new_version(name, record, weights_sha256)
        raise StaleStateError(f"model {name!r} kept changing while a new version was registered; retry")

    def _new_version(self, name: str, record: dict[str, Any], weights_sha256: str) -> dict[str, Any]:
        previous, previous_state = self.get_model(name), self.read_state(name)
        version = previous["version"] + 1
        created_at = now_iso()
        record = {**record, "version": version, "weights_sha256": weights_sha256, "created_at": created_at,
                  "supersedes": {"version": previous["version"], "weights_sha256": previous["weights_sha256"],
                                 "state_version": previous_state.state_version,
                                 "requests_in_force": list(previous_state.requests),
                                 "forgotten_classes": list(previous_state.forgotten_classes)}}
        models = schema.models
        with self.db.transaction() as conn:
            moved = conn.execute(update(models).where(models.c.name == name, models.c.version == previous["version"])
                                 .values(version=version, record=json.dumps(record))).rowcount
            if moved != 1:
                raise StaleStateError(f"model {name!r} got a new version meanwhile")
            conn.execute(insert(schema.model_versions).values(name=name, version=previous["version"],
                                                               record=json.dumps(previous)))
            self._insert_state(conn, ServedState.initial(
                name, weights_sha256, model_version=version, state_version=previous_state.state_version + 1))
        self._announce(name)
        return record

    def get_model_version(self, name: str, version: int) -> dict[str, Any]:
        """The record of one version (the current one or a superseded one): what loads its weights."""
        current = self.get_model(name)
        if current["version"] == version:
            return current
        versions = schema.model_versions
        with self.db.connect() as conn:
            record = conn.scalar(select(versions.c.record).where(versions.c.name == name,
                                                                 versions.c.version == int(version)))
        if record is None:
            raise NotFoundError(f"model {name!r} has no version {version}")
        return json.loads(record)

    def list_model_versions(self, name: str) -> list[dict[str, Any]]:
        """Every version's record, oldest first, the current one last."""
        current = self.get_model(name)
        versions = schema.model_versions
        with self.db.connect() as conn:
            older = [json.loads(r) for r in conn.scalars(
                select(versions.c.record).where(versions.c.name == name).order_by(versions.c.version))]
        return [*older, current]

    @contextlib.contextmanager
    def model_lock(self, name: str) -> Iterator[None]:
        """An exclusive lock per model across processes and hosts (released if the holder dies; see
        `Database.model_lock`)."""
        with self.db.model_lock(name):
            yield

    @contextlib.contextmanager
    def try_model_lock(self, name: str) -> Iterator[bool]:
        """`model_lock` without waiting: yields False (holding nothing) when another process holds it."""
        with self.db.try_model_lock(name) as held:
            yield held

    # ---- served state -------------------------------------------------------------------------------
    def _read_document(self, name: str, version: int | None = None) -> dict[str, Any]:
        states = schema.served_states
        query = select(states.c.document).where(states.c.model == name)
        query = (query.order_by(states.c.state_version.desc()).limit(1) if version is None
                 else query.where(states.c.state_version == int(version)))
        with self.db.connect() as conn:
            document = conn.scalar(query)
        if document is None:
            if version is None or not self.has_model(name):
                raise NotFoundError(f"no model named {name!r}")
            raise NotFoundError(f"model {name!r} has no state version {version}")
        return json.loads(document)

    def _parsed(self, name: str, document: dict[str, Any]) -> ServedState:
        try:
            state = ServedState.from_document(document)
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"served state of model {name!r} is malformed: {exc}") from None
        return replace(state, signature=document.get(SIGNATURE))

    def read_state(self, name: str, *, verify: bool = True) -> ServedState:
        """The served state (the newest version); with `verify` (the default) IntegrityError unless its
        signature verifies."""
        document = self._read_document(name)
        return self._parsed(name, self.verify_state(name, document) if verify else document)

    def read_state_version(self, name: str, version: int, *, verify: bool = True) -> ServedState:
        """One version of the model's states (NotFoundError when it has none by that number)."""
        document = self._read_document(name, version)
        return self._parsed(name, self.verify_state(name, document, version) if verify else document)

    def verify_state(self, name: str, document: dict[str, Any], version: int | None = None) -> dict[str, Any]:
        """The stored `document` of a state when it is signed and names this model (and `version`)."""
        what = f"served state {document.get('state_version')!r} of model {name!r}"
        self.check_signature(document, what)
        if document.get("model", name) != name or (version is not None and document.get("state_version") != version):
            raise IntegrityError(f"{what} is stored under another model or version")
        return document

    def publish_state(self, state: ServedState) -> ServedState:
        """Serve `state`, computed from version `state.state_version - 1`, which must still be the newest one
        (StaleStateError otherwise: another writer published first, nothing is written); a model's first state
        is version 1. One transaction: readers see the old state or the new one, never a mix. Returns it as
        stored (signed with the store's signer)."""
        with self.db.transaction() as conn:
            published = self._insert_state(conn, state)
        self._announce(state.model)
        return published

    def _insert_state(self, conn: Connection, state: ServedState) -> ServedState:
        states = schema.served_states
        newest = conn.scalar(select(func.max(states.c.state_version)).where(states.c.model == state.model)) or 0
        if newest != state.state_version - 1:
            raise StaleStateError(f"state {state.state_version - 1} of model {state.model!r} is no longer the newest "
                                  f"(now {newest}): recompute on the current state")
        document = self._signed(state.to_document())
        try:
            with conn.begin_nested():  # a duplicate key leaves the outer transaction usable (PostgreSQL)
                conn.execute(insert(states).values(model=state.model, state_version=state.state_version,
                                                   document=canonical_json(document).decode(), created_at=now_iso()))
        except DuplicateKey:
            raise StaleStateError(f"another writer published state {state.state_version} of model "
                                  f"{state.model!r} first: recompute on the current state") from None
        return replace(state, signature=document.get(SIGNATURE))

    def state_history(self, name: str, *, verify: bool = True) -> list[ServedState]:
        """Every state the model has served, oldest first; with `verify`, IntegrityError if one of them does
        not verify (`verify=False` lists them as stored, e.g. to say which one is refused)."""
        states = schema.served_states
        with self.db.connect() as conn:
            rows = conn.execute(select(states.c.state_version, states.c.document).where(states.c.model == name)
                                .order_by(states.c.state_version)).all()
        if not rows:
            raise NotFoundError(f"no model named {name!r}")
        history = []
        for version, text in rows:
            document = json.loads(text)
            if verify:
                self.verify_state(name, document, version)
            history.append(self._parsed(name, document))
        return history

    def verify_state_files(self, name: str, state: ServedState) -> None:
        """Everything `state` serves, checked again without loading tensors: its stored document (signature,
        the same content), the weights file against its sha256 and every artifact (signed manifest, tensor file
        sha256, bound to this model and these weights). IntegrityError or NotFoundError says what does not
        match."""
        stored = self._parsed(name, self.verify_state(name, self._read_document(name, state.state_version),
                                                      state.state_version))
        if stored != state:
            raise IntegrityError(f"stored state {state.state_version} of model {name!r} differs from the one served")
        self.verify_served_files(name, state)

    def verify_served_files(self, name: str, state: ServedState) -> None:
        """The weights file and every artifact `state` names, checked as `verify_state_files` does."""
        if self._blob_or_empty(self._weights_key(name, state.weights_sha256)) != state.weights_sha256:
            raise IntegrityError(f"weights {state.weights_sha256[:12]} of model {name!r} are missing or altered")
        for artifact_id in state.artifacts:
            manifest = self.get_artifact_manifest(artifact_id)
            if self._blob_or_empty(self._artifact_key(artifact_id)) != manifest["file_sha256"]:
                raise IntegrityError(f"tensor file of artifact {artifact_id!r} is missing or altered")
            if manifest.get("model", name) != name or manifest.get("weights_sha256") != state.weights_sha256:
                raise IntegrityError(f"artifact {artifact_id!r} was computed for another model or other weights")

    # ---- datasets -----------------------------------------------------------------------------------
    def has_dataset(self, name: str) -> bool:
        with self.db.connect() as conn:
            return conn.scalar(select(schema.datasets.c.name).where(schema.datasets.c.name == name)) is not None

    def list_datasets(self) -> list[dict[str, Any]]:
        with self.db.connect() as conn:
            return [json.loads(r) for r in conn.scalars(
                select(schema.datasets.c.record).order_by(schema.datasets.c.name))]

    def put_dataset(self, record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Store a dataset: tensors x_train, y_train (+ x_test, y_test) and a record with ids and counts.

        The tensors are a blob named by their sha256, written first; then the record is inserted: of two
        registrations of one name exactly one succeeds and the other gets AlreadyExistsError, and a record
        always finds its data."""
        name = check_name(record["name"], "dataset name")
        if self.has_dataset(name):
            raise AlreadyExistsError(f"a dataset named {name!r} exists already")
        data = _tensors_to_bytes(tensors)
        record = {**record, "data_sha256": sha256_bytes(data), "created_at": now_iso()}
        self.blobs.put(self._dataset_key(name, record["data_sha256"]), data)
        try:
            with self.db.transaction() as conn:
                conn.execute(insert(schema.datasets).values(name=name, record=json.dumps(record),
                                                            created_at=record["created_at"]))
        except DuplicateKey:
            raise AlreadyExistsError(f"a dataset named {name!r} exists already") from None
        return record

    def _dataset_key(self, name: str, data_sha256: str) -> str:
        return f"datasets/{check_name(name, 'dataset name')}/{check_name(data_sha256, 'sha256')}.safetensors"

    def get_dataset(self, name: str) -> dict[str, Any]:
        with self.db.connect() as conn:
            record = conn.scalar(select(schema.datasets.c.record).where(schema.datasets.c.name == name))
        if record is None:
            raise NotFoundError(f"no dataset named {name!r}")
        return json.loads(record)

    def load_dataset(self, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        record = self.get_dataset(name)
        try:
            data = self.blobs.get(self._dataset_key(name, record["data_sha256"]))
        except NotFoundError:
            data = b""
        if sha256_bytes(data) != record["data_sha256"]:
            raise IntegrityError(f"dataset {name!r} does not match its sha256")
        return record, _tensors_from_bytes(data)

    # ---- artifacts ----------------------------------------------------------------------------------
    def put_artifact(self, tensors: dict[str, torch.Tensor], manifest: dict[str, Any]) -> dict[str, Any]:
        """Write tensors, then their manifest (kind, model, weights_sha256, request_ids, …) with hashes.

        The manifest records the tensor file's sha256 and its own sha256 (over its canonical JSON
        without that field and the signature), then the store's signer signs it all;
        `load_artifact` refuses a file or manifest that does not match.
        """
        artifact_id = f"{manifest['kind']}-{uuid.uuid4().hex[:16]}"
        data = _tensors_to_bytes(tensors)
        manifest = {**_unsigned(manifest), "id": artifact_id, "created_at": now_iso(),
                    "file_sha256": sha256_bytes(data)}
        manifest["manifest_sha256"] = sha256_bytes(canonical_json(manifest))
        manifest = self._signed(manifest)
        self.blobs.put(self._artifact_key(artifact_id), data)
        with self.db.transaction() as conn:
            conn.execute(insert(schema.artifacts).values(
                id=artifact_id, model=str(manifest.get("model", "")), manifest=canonical_json(manifest).decode(),
                created_at=manifest["created_at"]))
        return manifest

    def _artifact_key(self, artifact_id: str) -> str:
        return f"artifacts/{check_name(artifact_id, 'artifact id')}.safetensors"

    def _blob_or_empty(self, key: str) -> str:
        """sha256 of the blob under `key` (of nothing when it is missing): what a check compares."""
        try:
            return sha256_bytes(self.blobs.get(key))
        except NotFoundError:
            return sha256_bytes(b"")

    def get_artifact_manifest(self, artifact_id: str) -> dict[str, Any]:
        artifacts = schema.artifacts
        with self.db.connect() as conn:
            text = conn.scalar(select(artifacts.c.manifest).where(artifacts.c.id == check_name(artifact_id,
                                                                                              "artifact id")))
        if text is None:
            raise NotFoundError(f"no artifact {artifact_id!r}")
        manifest = json.loads(text)
        claimed = manifest.get("manifest_sha256")
        body = {k: v for k, v in manifest.items() if k not in ("manifest_sha256", SIGNATURE)}
        if claimed != sha256_bytes(canonical_json(body)):
            raise IntegrityError(f"manifest of artifact {artifact_id!r} does not match its sha256")
        self.check_signature(manifest, f"manifest of artifact {artifact_id!r}")
        if manifest.get("id", artifact_id) != artifact_id:
            raise IntegrityError(f"manifest of artifact {artifact_id!r} belongs to artifact {manifest['id']!r}")
        return manifest

    def load_artifact(self, artifact_id: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        manifest = self.get_artifact_manifest(artifact_id)
        try:
            data = self.blobs.get(self._artifact_key(artifact_id))
        except NotFoundError:
            data = b""
        if sha256_bytes(data) != manifest["file_sha256"]:
            raise IntegrityError(f"tensor file of artifact {artifact_id!r} is missing or altered")
        return _tensors_from_bytes(data), manifest

    # ---- reports ------------------------------------------------------------------------------------
    def put_report(self, request_id: str, png: bytes) -> str:
        """Store the PNG report of a finished request (δ, samples, per-class accuracy); returns its sha256."""
        key = f"reports/{check_name(request_id, 'request id')}.png"
        self.blobs.put(key, png)
        digest = sha256_bytes(png)
        with self.db.transaction() as conn:  # the newest report of a request replaces an older one
            conn.execute(delete(schema.reports).where(schema.reports.c.request_id == request_id))
            conn.execute(insert(schema.reports).values(request_id=request_id, sha256=digest, blob_key=key,
                                                       created_at=now_iso()))
        return digest

    def get_report(self, request_id: str) -> bytes:
        """The request's PNG report; NotFoundError when the job did not write one."""
        reports = schema.reports
        with self.db.connect() as conn:
            row = conn.execute(select(reports.c.blob_key, reports.c.sha256)
                               .where(reports.c.request_id == check_name(request_id, "request id"))).first()
        if row is None:
            raise NotFoundError(f"forget request {request_id!r} has no report")
        png = self.blobs.get(row.blob_key)
        if sha256_bytes(png) != row.sha256:
            raise IntegrityError(f"report of forget request {request_id!r} does not match its sha256")
        return png

    # ---- documents written before signing (`unlearnd adopt-store`) ------------------------------------
    def unsigned_documents(self) -> Iterator[tuple[str, str, int | None]]:
        """Artifact manifests ("artifact", id, None) then served states ("state", model, version) stored without a
        signature: written before signing, refused by every load until `adopt_manifest` / `adopt_state`."""
        with self.db.connect() as conn:
            manifests = conn.execute(select(schema.artifacts.c.id, schema.artifacts.c.manifest)
                                     .order_by(schema.artifacts.c.id)).all()
            states = conn.execute(select(schema.served_states.c.model, schema.served_states.c.state_version,
                                         schema.served_states.c.document)
                                  .order_by(schema.served_states.c.model, schema.served_states.c.state_version)).all()
        for artifact_id, text in manifests:
            if SIGNATURE not in json.loads(text):
                yield "artifact", artifact_id, None
        for model, version, text in states:
            if SIGNATURE not in json.loads(text):
                yield "state", model, version

    def adopt_manifest(self, artifact_id: str) -> dict[str, Any]:
        """Sign an unsigned manifest after checking it as every load does, except for the signature (its own
        sha256, its id, the tensor blob's sha256); IntegrityError/NotFoundError say what does not match."""
        manifest = Store(self.root, blobs=self.blobs, db=self.db).get_artifact_manifest(artifact_id)
        if self._blob_or_empty(self._artifact_key(artifact_id)) != manifest["file_sha256"]:
            raise IntegrityError(f"tensor file of artifact {artifact_id!r} is missing or does not match the "
                                 "manifest's file_sha256")
        signed = self._signed(manifest)
        with self.db.transaction() as conn:
            conn.execute(update(schema.artifacts).where(schema.artifacts.c.id == artifact_id)
                         .values(manifest=canonical_json(signed).decode()))
        return signed

    def adopt_state(self, name: str, version: int) -> ServedState:
        """Sign an unsigned stored state after checking it as every load does, except for the signature (its
        model and version, its weights and every artifact it serves: signed, bound to this model and weights)."""
        document = self._read_document(name, version)
        signed = self.verify_state(name, self._signed(document), version)
        state = self._parsed(name, signed)
        self.verify_served_files(name, state)
        states = schema.served_states
        with self.db.transaction() as conn:
            conn.execute(update(states).where(states.c.model == name, states.c.state_version == version)
                         .values(document=canonical_json(signed).decode()))
        return state
