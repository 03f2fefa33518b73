"""Bring your own model and data (role admin): POST /v1/models, POST /v1/datasets, GET /v1/datasets[/{name}].

Every upload is parsed and validated completely (unlearnd.ingest) before anything is written, so bad
input answers 4xx (its IngestError, mapped in service/errors.py) and leaves the store untouched. torch is
imported only when a registration runs.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from models_store import NotFoundError, Store
from models_store.errors import AlreadyExistsError
from models_store.store import check_name
from service.deps import Admin, Governance, LedgerDep, SettingsDep, StoreDep
from service.errors import Problem, describe_errors
from service.schemas import (
    NAME_SCHEMA,
    DatasetName,
    DatasetPublic,
    DatasetSource,
    DatasetsPublic,
    ModelMetadata,
    ModelPublic,
    parse_model_metadata,
)
from unlearnd.ingest.datasets import SOURCES, ParsedDataset, load_source, parse_npz, public_dataset
from unlearnd.ingest.models import check_dataset_fits, parse_model

log = logging.getLogger(__name__)
router = APIRouter(tags=["registry"])


class RegisteredModel(ModelPublic):
    format: str
    mean: list[float]
    std: list[float]
    torchscript_sha256: str | None = None
    supersedes: dict[str, Any] | None = None


# ---- models -------------------------------------------------------------------------------------------
def _dataset_for(store: Store, meta: ModelMetadata, name: str | None, role: str) -> None:
    if name is None:
        return
    check_name(name, f"{role} name")
    try:
        dataset = store.get_dataset(name)
    except NotFoundError:
        raise Problem(422, "Unknown dataset", f"{role} {name!r} is not registered; POST /v1/datasets first") \
            from None
    check_dataset_fits(meta, dataset, role)


@router.post("/v1/models", status_code=201, response_model=RegisteredModel, responses={
    409: {"description": "A model of that name exists (and new_version is not true), or a job holds it"},
    422: {"description": "Malformed archive or state_dict, bad metadata, unknown or unfitting dataset"},
})
def register_model(
    response: Response,
    store: StoreDep,
    ledger: LedgerDep,
    principal: Admin,
    file: UploadFile = File(..., description="TorchScript archive, or a state_dict (.pt/.pth via torch.save, "
                            "or .safetensors) of the bare network when 'arch' is given."),
    metadata: str = Form(..., min_length=1, description='JSON: {"name", "input_shape": [C,H,W], "num_classes", '
                         '"class_names"?, "mean"?, "std"?, "train_dataset", "test_dataset"?}'),
    arch: str | None = Form(None, description="small_cnn, resnet18_small or torchvision:<name>; "
                            "only with a state_dict"),
    new_version: bool = Query(False, description="Register new weights as the next version of an existing "
                              "model (fresh served state, nothing applied)"),
) -> dict[str, Any]:
    """Register a model (version 1), or with ?new_version=true the next version of one."""
    meta = parse_model_metadata(metadata)
    check_name(meta.name, "model name")
    if store.has_model(meta.name) and not new_version:
        raise Problem(409, "Already exists", f"a model named {meta.name!r} exists already; send "
                      "?new_version=true to register these weights as its next version")
    _dataset_for(store, meta, meta.train_dataset, "train_dataset")
    _dataset_for(store, meta, meta.test_dataset, "test_dataset")
    parsed = parse_model(file.file.read(), file.filename or "", (arch or "").strip() or None, meta)
    record: dict[str, Any] = {
        "name": meta.name, "arch": parsed.arch, "format": parsed.format, "input_shape": meta.input_shape,
        "num_classes": meta.num_classes, "class_names": meta.class_names,
        "mean": parsed.model.mean.flatten().tolist(),
        "std": parsed.model.std.flatten().tolist(), "train_dataset": meta.train_dataset,
        "test_dataset": meta.test_dataset, "source_filename": file.filename,
    }
    if record["class_names"] is None:  # the training set's names, when they name exactly these classes
        names = store.get_dataset(meta.train_dataset).get("class_names")
        record["class_names"] = names if names is not None and len(names) == meta.num_classes else None
    with store.try_model_lock(meta.name) as locked:
        if not locked:
            raise Problem(409, "Model busy", f"a forget job is running on {meta.name!r}; retry when it ends",
                          headers={"Retry-After": "30"})
        if store.has_model(meta.name) and not new_version:  # registered while we validated
            raise Problem(409, "Already exists", f"a model named {meta.name!r} exists already")
        if parsed.torchscript is not None:
            record["torchscript_sha256"] = store.put_torchscript(meta.name, parsed.torchscript)
        if new_version:
            stored = store.create_model_version(record, parsed.state_dict)
        else:
            stored = store.create_model(record, parsed.state_dict)
    log.info("registered model %s version %s (%s)", meta.name, stored["version"], parsed.format)
    action = "model.register" if stored["version"] == 1 else "model.new_version"
    ledger.audit(action, principal.key_id,
                 model=meta.name, detail={k: stored.get(k) for k in (
                     "version", "weights_sha256", "format", "arch", "torchscript_sha256",
                     "train_dataset", "test_dataset", "supersedes")})
    response.headers["Location"] = f"/v1/models/{meta.name}"
    return {**stored, "unlearning": store.read_state(meta.name).as_stored()}


# ---- datasets -----------------------------------------------------------------------------------------
_DATASET_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["name", "file"], "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", **NAME_SCHEMA,
                             "description": "1-64 letters, digits, '.', '_' or '-'"},
                    "file": {"type": "string", "format": "binary", "description":
                             ".npz: x_train (N,C,H,W uint8 0-255 or float 0-1), y_train (N,) ints, optional "
                             "ids_train (N,) strings or ints (default: the row index), x_test, y_test, "
                             "class_names"},
                }}},
            "application/json": {"schema": DatasetSource.model_json_schema()},
        },
    },
}


def _store_dataset(store: Store, name: str, parsed: ParsedDataset) -> dict[str, Any]:
    record = store.put_dataset(parsed.record(name), parsed.tensors)
    log.info("registered dataset %s (%s, %d train, %d test)", name, record["source"], record["n_train"],
             record["n_test"])
    return public_dataset(record)


_DATASET_ERRORS: dict[int | str, Any] = {
    400: {"description": "A malformed multipart form (or more fields than name and file)"},
    409: {"description": "A dataset of that name exists"},
    413: {"description": "Body (UNLEARND_MAX_BODY_BYTES) or unpacked archive (UNLEARND_MAX_DATASET_BYTES) "
                         "too large"},
    415: {"description": "Neither multipart/form-data nor application/json"},
    422: {"description": "Malformed npz, wrong shapes or dtypes, NaN/inf, values out of range, bad ids, "
                         "missing root"},
}


@router.post("/v1/datasets", status_code=201, response_model=DatasetPublic, response_model_exclude_unset=True,
             openapi_extra=_DATASET_BODY, responses=_DATASET_ERRORS)
async def register_dataset(
    request: Request, response: Response, store: StoreDep, ledger: LedgerDep, settings: SettingsDep,
    principal: Admin,
) -> dict[str, Any]:
    """Register a dataset: an uploaded .npz (multipart) or data already on the server (JSON)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        async with request.form(max_files=1, max_fields=4) as form:
            name, upload = form.get("name"), form.get("file")
            if not isinstance(name, str) or not name:
                raise Problem(422, "Invalid request", "name: the form field 'name' is required")
            if upload is None or isinstance(upload, str):
                raise Problem(422, "Invalid request",
                              "file: the form field 'file' (an .npz upload) is required")
            _check_new_dataset(store, name)
            data = await upload.read()
        max_unpacked = settings.max_dataset_bytes
        parse = lambda: parse_npz(data, max_uncompressed_bytes=max_unpacked)  # noqa: E731
    elif content_type == "application/json":
        try:
            body = DatasetSource.model_validate(json.loads(await request.body()))
        except ValidationError as exc:
            raise Problem(422, "Invalid request", describe_errors(exc.errors(), unnamed="body")) from None
        except (ValueError, TypeError, RecursionError) as exc:  # not JSON, or too deeply nested to parse
            raise Problem(422, "Invalid request", str(exc)) from None
        name = body.name
        if body.source not in SOURCES:
            raise Problem(422, "Invalid dataset", f"unknown source {body.source!r}; known: {list(SOURCES)}")
        _check_new_dataset(store, name)
        parse = lambda: load_source(body.source, body.root)  # noqa: E731
    else:
        raise Problem(415, "Unsupported media type", "send multipart/form-data (name, file=.npz) or "
                      'application/json {"name", "source", "root"}')
    parsed = await run_in_threadpool(parse)
    public = await run_in_threadpool(_store_dataset, store, name, parsed)
    keys = ("source", "n_train", "n_test", "input_shape", "num_classes", "data_sha256")
    ledger.audit("dataset.register", principal.key_id,
                 detail={"dataset": name, **{k: public.get(k) for k in keys}})
    response.headers["Location"] = f"/v1/datasets/{name}"
    return public


def _check_new_dataset(store: Store, name: str) -> None:
    check_name(name, "dataset name")
    if store.has_dataset(name):
        raise AlreadyExistsError(f"a dataset named {name!r} exists already")


@router.get("/v1/datasets", response_model_exclude_unset=True)
def list_datasets(store: StoreDep, _: Governance) -> DatasetsPublic:
    """Every registered dataset: source, counts, shapes, classes (ids as a short preview)."""
    data = [DatasetPublic(**public_dataset(record)) for record in store.list_datasets()]
    return DatasetsPublic(data=data, count=len(data))


@router.get("/v1/datasets/{name}", response_model=DatasetPublic, response_model_exclude_unset=True)
def get_dataset(
    name: DatasetName, store: StoreDep, _: Governance,
    include_ids: bool = Query(False, description="Include every training sample id (ids_train)"),
) -> dict[str, Any]:
    """One dataset; with ?include_ids=true also the full list of training sample ids."""
    record = store.get_dataset(name)
    public = public_dataset(record)
    if include_ids:
        public["ids_train"] = record.get("ids_train", [])
    return public
