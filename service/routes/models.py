from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, StrictInt

from models_store import Store
from service.codecs import predict_inputs
from service.deps import Admin, AnyRole, Inference, LedgerDep, QueueDep, RuntimeDep, SettingsDep, StoreDep
from service.domain import rollback_model
from service.errors import problem_responses
from service.schemas import ModelName, ModelPublic, ModelsPublic, Prediction, PredictRequest, PredictResponse
from unlearnd.callbacks import notify_terminal

router = APIRouter(prefix="/v1/models", tags=["models"])


def _public(store: Store, record: dict) -> ModelPublic:
    return ModelPublic(**record, unlearning=store.read_state(record["name"]).as_stored())


@router.get("")
def list_models(store: StoreDep, _: AnyRole) -> ModelsPublic:
    """Every registered model with the unlearning in force."""
    data = [_public(store, record) for record in store.list_models()]
    return ModelsPublic(data=data, count=len(data))


@router.get("/{model}")
def get_model(model: ModelName, store: StoreDep, _: AnyRole) -> ModelPublic:
    """One model: shapes, classes, weights sha256 and the unlearning in force."""
    return _public(store, store.get_model(model))


_BINARY = {"type": "string", "format": "binary"}
_PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": PredictRequest.model_json_schema()},
    "image/png": {"schema": _BINARY},
    "image/jpeg": {"schema": _BINARY},
    "multipart/form-data": {"schema": {"type": "object", "required": ["images"], "properties": {
        "images": {"type": "array", "items": _BINARY, "description": "One file part per image (image/png or "
                   "image/jpeg), any field name; predictions come in the order of the parts."}}},
        "encoding": {"images": {"contentType": "image/png, image/jpeg"}}},
}}}


@router.post("/{model}/predict", openapi_extra=_PREDICT_BODY, responses=problem_responses(413, 415, 503, descriptions={
    413: "Body too large, more images than UNLEARND_MAX_PREDICT_BATCH, or an image over the pixel limit",
    415: "A Content-Type other than JSON, PNG, JPEG or multipart of PNG/JPEG parts",
    503: "The served state, its weights or its artifacts do not verify"}))
async def predict(model: ModelName, request: Request, runtime: RuntimeDep, settings: SettingsDep,
                  _: Inference) -> PredictResponse:
    """Predictions with every forget vector in force added to the inputs (x + δ, clipped to [0, 1]).

    Images come as JSON (`{"inputs": [...]}`: C×H×W nested lists of floats in [0, 1]), as one PNG or JPEG body
    (`image/png`, `image/jpeg`), or as several in `multipart/form-data` (one file part each, in order); images are
    converted to the model's channels and resized to its height and width (docs/operations.md, "Inference").
    Concurrent calls are computed together, in one forward pass per batch."""
    served = await runtime.snapshot(model)
    x = await predict_inputs(request, served.input_shape, settings.max_predict_batch)
    served, probabilities = await runtime.predict(model, x)
    rounded = probabilities.astype(np.float64).round(6).tolist()
    predictions = [Prediction(label=label, probabilities=p)
                   for label, p in zip(probabilities.argmax(axis=1).tolist(), rounded, strict=True)]
    return PredictResponse(model=model, model_version=served.model_version,
                           state_version=served.state_version, weights_sha256=served.weights_sha256,
                           applied=list(served.artifacts), predictions=predictions)


@router.get("/{model}/state")
def get_state(model: ModelName, store: StoreDep, _: AnyRole) -> dict:
    """The served state: weights, artifacts applied and the requests they cover, plus earlier state
    versions."""
    state = store.read_state(model)
    history = [{"state_version": s.state_version, "updated_at": s.updated_at, "weights_sha256": s.weights_sha256,
                "artifacts": list(s.artifacts), "requests": len(s.requests)} for s in store.state_history(model)]
    return {**state.as_stored(), "history": history}


class RollbackRequest(BaseModel):
    state_version: StrictInt = Field(..., ge=1, le=2**53, description="The earlier state to serve again.")
    reason: str | None = Field(None, max_length=2000)
    reinstate: list[str] = Field(default_factory=list, max_length=10_000, description="Requests this rollback "
                                 "takes out of force (they become `reverted`); all of them, or `force`.")
    force: bool = Field(False, description="Take every request out of force that the rollback requires.")


@router.post("/{model}/rollback")
def rollback(model: ModelName, body: RollbackRequest, store: StoreDep, ledger: LedgerDep, queue: QueueDep,
             settings: SettingsDep, principal: Admin) -> dict:
    """Serve an earlier state again, as a new state version; recorded in the audit log. While a forget job
    holds the model, answers 409 (retry when it is done) instead of waiting for it. A state from before some
    deletions is served again only when `reinstate` lists those requests (or `force`) with a `reason`: they
    become `reverted` and get their callback; otherwise 409 lists them."""
    new_state, reverted = rollback_model(model=model, state_version=body.state_version, reason=body.reason,
                                         actor=principal.key_id, store=store, ledger=ledger,
                                         reinstate=body.reinstate, force=body.force)
    for request_id in reverted:
        notify_terminal(ledger, request_id, settings, queue.connection)
    return new_state.as_stored()
