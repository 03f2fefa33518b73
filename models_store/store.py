"""Models, datasets, artifacts and served states as files under one root directory.

Layout (all JSON written atomically; tensors as safetensors named by their sha256):

    models/<name>/model.json                 the model record
    models/<name>/weights/<sha256>.safetensors
    models/<name>/state.json                 the served state: weights + artifacts in force
    models/<name>/torchscript/<sha256>.pt    an uploaded TorchScript archive (format "torchscript")
    models/<name>/versions/<n>.json          the record of each version superseded by a newer one
    datasets/<name>/dataset.json, data.safetensors
    artifacts/<id>.safetensors, artifacts/<id>.json   tensors and their manifest
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from models_store.errors import AlreadyExistsError, IntegrityError, NotFoundError, StoreError
from models_store.files import (
    atomic_write_bytes,
    atomic_write_json,
    canonical_json,
    read_json,
    sha256_bytes,
)

if TYPE_CHECKING:
    import torch

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


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
    def __init__(self, root: Path, signer: Signer | None = None):
        """`signer`: every served state and artifact manifest written is signed with it, and every one read
        must carry a valid signature (IntegrityError otherwise). None: neither (tests of the file layout)."""
        self.root = Path(root)
        self.signer = signer

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
    def _model_dir(self, name: str) -> Path:
        return self.root / "models" / check_name(name, "model name")

    def has_model(self, name: str) -> bool:
        return (self._model_dir(name) / "model.json").exists()

    def list_models(self) -> list[dict[str, Any]]:
        models_dir = self.root / "models"
        if not models_dir.exists():
            return []
        return [read_json(p) for p in sorted(models_dir.glob("*/model.json"))]

    def get_model(self, name: str) -> dict[str, Any]:
        path = self._model_dir(name) / "model.json"
        if not path.exists():
            raise NotFoundError(f"no model named {name!r}")
        return read_json(path)

    def put_weights(self, name: str, state_dict: dict[str, torch.Tensor]) -> str:
        """Store a state_dict as safetensors named by its sha256; returns the sha256."""
        data = _tensors_to_bytes(state_dict)
        digest = sha256_bytes(data)
        path = self._model_dir(name) / "weights" / f"{digest}.safetensors"
        if not path.exists():
            atomic_write_bytes(path, data)
        return digest

    def load_weights(self, name: str, weights_sha256: str) -> dict[str, torch.Tensor]:
        path = self._model_dir(name) / "weights" / f"{weights_sha256}.safetensors"
        if not path.exists():
            raise NotFoundError(f"model {name!r} has no weights {weights_sha256[:12]}")
        data = path.read_bytes()
        if sha256_bytes(data) != weights_sha256:
            raise IntegrityError(f"weights file of {name!r} does not match its sha256 {weights_sha256[:12]}")
        return _tensors_from_bytes(data)

    @contextlib.contextmanager
    def _registration_lock(self) -> Iterator[None]:
        """Serialises the check-then-write of model registrations and new versions across threads and
        processes (an exclusive flock on <root>/.registration.lock, dropped by the kernel if the holder
        dies), so that of two registrations of one name exactly one wins and the record always matches
        its weights and state."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".registration.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def create_model(self, record: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Register a model: weights, its record (version 1) and an initial served state with nothing
        applied. Atomic: AlreadyExistsError if the name exists or another registration takes it first."""
        with self._registration_lock():
            return self._create_model_locked(record, state_dict)

    def _create_model_locked(self, record: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        name = record["name"]
        if self.has_model(name):
            raise AlreadyExistsError(f"a model named {name!r} exists already")
        weights_sha256 = self.put_weights(name, state_dict)
        record = {**record, "version": 1, "weights_sha256": weights_sha256, "created_at": now_iso()}
        self.write_state(name, {"model": name, "state_version": 1, "weights_sha256": weights_sha256,
                                "artifacts": [], "requests": [], "forgotten_classes": [],
                                "forgotten_samples": [], "updated_at": record["created_at"]})
        atomic_write_json(self._model_dir(name) / "model.json", record)
        return record

    def put_torchscript(self, name: str, data: bytes) -> str:
        """Store a TorchScript archive named by its sha256 (the network's code; weights stay safetensors)."""
        digest = sha256_bytes(data)
        path = self._model_dir(name) / "torchscript" / f"{digest}.pt"
        if not path.exists():
            atomic_write_bytes(path, data)
        return digest

    def load_torchscript(self, name: str, torchscript_sha256: str) -> bytes:
        """The archive's bytes, verified against its sha256 (load them with torch.jit.load)."""
        path = self._model_dir(name) / "torchscript" / f"{check_name(torchscript_sha256, 'sha256')}.pt"
        if not path.exists():
            raise NotFoundError(f"model {name!r} has no TorchScript archive {torchscript_sha256[:12]}")
        data = path.read_bytes()
        if sha256_bytes(data) != torchscript_sha256:
            raise IntegrityError(f"TorchScript archive of {name!r} does not match its sha256 "
                                 f"{torchscript_sha256[:12]}")
        return data

    def create_model_version(
        self, record: dict[str, Any], state_dict: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        """Replace a model's weights by a new version with a fresh served state (nothing applied).

        Call it under `model_lock(name)`. The superseded record is kept in versions/<n>.json, its
        weights stay on disk; the new record says what it supersedes, including the requests that were
        in force (they do not carry over: their artifacts were computed for the old weights). The
        state_version keeps counting up so that every reader sees the switch. A name never
        registered gets version 1, as `create_model`.
        """
        with self._registration_lock():
            return self._create_model_version_locked(record, state_dict)

    def _create_model_version_locked(
        self, record: dict[str, Any], state_dict: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        name = record["name"]
        if not self.has_model(name):
            return self._create_model_locked(record, state_dict)
        previous, previous_state = self.get_model(name), self.read_state(name)
        weights_sha256 = self.put_weights(name, state_dict)
        version = previous["version"] + 1
        created_at = now_iso()
        record = {**record, "version": version, "weights_sha256": weights_sha256, "created_at": created_at,
                  "supersedes": {"version": previous["version"], "weights_sha256": previous["weights_sha256"],
                                 "state_version": previous_state["state_version"],
                                 "requests_in_force": list(previous_state.get("requests", [])),
                                 "forgotten_classes": list(previous_state.get("forgotten_classes", []))}}
        atomic_write_json(self._model_dir(name) / "versions" / f"{previous['version']}.json", previous)
        atomic_write_json(self._model_dir(name) / "model.json", record)
        self.write_state(name, {"model": name, "model_version": version,  # the switch: state.json last
                                "state_version": previous_state["state_version"] + 1,
                                "weights_sha256": weights_sha256, "artifacts": [], "requests": [],
                                "forgotten_classes": [], "forgotten_samples": [], "updated_at": created_at})
        return record

    def get_model_version(self, name: str, version: int) -> dict[str, Any]:
        """The record of one version (the current one or a superseded one): what loads its weights."""
        current = self.get_model(name)
        if current["version"] == version:
            return current
        path = self._model_dir(name) / "versions" / f"{int(version)}.json"
        if not path.exists():
            raise NotFoundError(f"model {name!r} has no version {version}")
        return read_json(path)

    def list_model_versions(self, name: str) -> list[dict[str, Any]]:
        """Every version's record, oldest first, the current one last."""
        current = self.get_model(name)
        older = [read_json(p) for p in (self._model_dir(name) / "versions").glob("*.json")]
        return sorted(older, key=lambda r: r["version"]) + [current]

    @contextlib.contextmanager
    def try_model_lock(self, name: str) -> Iterator[bool]:
        """`model_lock` without waiting: yields False (holding nothing) when another process holds it."""
        path = self._model_dir(name) / ".lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ---- served state -------------------------------------------------------------------------------
    def read_state(self, name: str, *, verify: bool = True) -> dict[str, Any]:
        """The served state; with `verify` (the default) IntegrityError unless its signature verifies."""
        path = self._model_dir(name) / "state.json"
        if not path.exists():
            raise NotFoundError(f"no model named {name!r}")
        state = read_json(path)
        return self.verify_state(name, state) if verify else state

    def verify_state(self, name: str, state: dict[str, Any], version: int | None = None) -> dict[str, Any]:
        """`state` when it is signed and names this model (and `version`, for a states/<n>.json file)."""
        what = f"served state {state.get('state_version')!r} of model {name!r}"
        self.check_signature(state, what)
        if state.get("model", name) != name or (version is not None and state.get("state_version") != version):
            raise IntegrityError(f"{what} is stored under another model or version")
        return state

    def write_state(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        """Replace the served state in one rename: readers see the old state or the new one. Returns it as
        written (signed, with the store's signer; a `signature` field in `state` is replaced).

        Every state is also kept as states/<state_version>.json, for history and rollback.
        """
        state = self._signed(state)
        atomic_write_json(self._model_dir(name) / "states" / f"{state['state_version']}.json", state)
        atomic_write_json(self._model_dir(name) / "state.json", state)
        return state

    def state_history(self, name: str, *, verify: bool = True) -> list[dict[str, Any]]:
        """Every state the model has served, oldest first; with `verify`, IntegrityError if one of them does
        not verify (`verify=False` lists them as stored, e.g. to say which one is refused)."""
        states = self._model_dir(name) / "states"
        if not states.exists():
            raise NotFoundError(f"no model named {name!r}")
        history = []
        for path in states.glob("*.json"):
            state = read_json(path)
            if verify:
                self.verify_state(name, state, int(path.stem) if path.stem.isdigit() else None)
            history.append(state)
        return sorted(history, key=lambda s: s["state_version"])

    def verify_state_files(self, name: str, state: dict[str, Any]) -> None:
        """Everything `state` serves, checked without loading tensors: its signature, the weights file
        against its sha256 and every artifact (signed manifest, tensor file sha256, bound to this model and
        these weights). IntegrityError or NotFoundError says what does not match."""
        self.verify_state(name, state)
        weights = self._model_dir(name) / "weights" / f"{check_name(state['weights_sha256'], 'sha256')}.safetensors"
        if not weights.exists() or sha256_bytes(weights.read_bytes()) != state["weights_sha256"]:
            raise IntegrityError(f"weights {state['weights_sha256'][:12]} of model {name!r} are missing or altered")
        for artifact_id in state.get("artifacts", []):
            manifest = self.get_artifact_manifest(artifact_id)
            path = self.root / "artifacts" / f"{artifact_id}.safetensors"
            if not path.exists() or sha256_bytes(path.read_bytes()) != manifest["file_sha256"]:
                raise IntegrityError(f"tensor file of artifact {artifact_id!r} is missing or altered")
            if manifest.get("model", name) != name or manifest.get("weights_sha256") != state["weights_sha256"]:
                raise IntegrityError(f"artifact {artifact_id!r} was computed for another model or other weights")

    @contextlib.contextmanager
    def model_lock(self, name: str) -> Iterator[None]:
        """An exclusive lock per model across processes (released by the kernel if the holder dies)."""
        path = self._model_dir(name) / ".lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ---- datasets -----------------------------------------------------------------------------------
    def _dataset_dir(self, name: str) -> Path:
        return self.root / "datasets" / check_name(name, "dataset name")

    def has_dataset(self, name: str) -> bool:
        return (self._dataset_dir(name) / "dataset.json").exists()

    def put_dataset(self, record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Store a dataset: tensors x_train, y_train (+ x_test, y_test) and a record with ids and counts.

        Atomic: both files are written to a private directory under <root>/.incoming, which one rename
        then makes datasets/<name>; of two registrations of one name exactly one succeeds and the other
        gets AlreadyExistsError, and the stored data always matches its record."""
        import os
        import shutil

        name = record["name"]
        final = self._dataset_dir(name)
        if self.has_dataset(name):
            raise AlreadyExistsError(f"a dataset named {name!r} exists already")
        data = _tensors_to_bytes(tensors)
        record = {**record, "data_sha256": sha256_bytes(data), "created_at": now_iso()}
        staging = self.root / ".incoming" / f"{name}.{uuid.uuid4().hex}"
        try:
            atomic_write_bytes(staging / "data.safetensors", data)
            atomic_write_json(staging / "dataset.json", record)
            final.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                final.rmdir()  # an empty directory left by an interrupted older write: not a dataset
            try:
                os.rename(staging, final)  # fails if another registration put its directory there first
            except OSError:
                raise AlreadyExistsError(f"a dataset named {name!r} exists already") from None
            dir_fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return record

    def get_dataset(self, name: str) -> dict[str, Any]:
        path = self._dataset_dir(name) / "dataset.json"
        if not path.exists():
            raise NotFoundError(f"no dataset named {name!r}")
        return read_json(path)

    def load_dataset(self, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        record = self.get_dataset(name)
        data = (self._dataset_dir(name) / "data.safetensors").read_bytes()
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
        atomic_write_bytes(self.root / "artifacts" / f"{artifact_id}.safetensors", data)
        atomic_write_json(self.root / "artifacts" / f"{artifact_id}.json", manifest)
        return manifest

    def get_artifact_manifest(self, artifact_id: str) -> dict[str, Any]:
        path = self.root / "artifacts" / f"{check_name(artifact_id, 'artifact id')}.json"
        if not path.exists():
            raise NotFoundError(f"no artifact {artifact_id!r}")
        manifest = read_json(path)
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
        path = self.root / "artifacts" / f"{artifact_id}.safetensors"
        data = path.read_bytes() if path.exists() else b""
        if sha256_bytes(data) != manifest["file_sha256"]:
            raise IntegrityError(f"tensor file of artifact {artifact_id!r} is missing or altered")
        return _tensors_from_bytes(data), manifest

    # ---- reports ------------------------------------------------------------------------------------
    def put_report(self, request_id: str, png: bytes) -> str:
        """Store the PNG report of a finished request (δ, samples, per-class accuracy); returns its sha256."""
        atomic_write_bytes(self.root / "reports" / f"{check_name(request_id, 'request id')}.png", png)
        return sha256_bytes(png)

    def get_report(self, request_id: str) -> bytes:
        """The request's PNG report; NotFoundError when the job did not write one."""
        path = self.root / "reports" / f"{check_name(request_id, 'request id')}.png"
        if not path.exists():
            raise NotFoundError(f"forget request {request_id!r} has no report")
        return path.read_bytes()
