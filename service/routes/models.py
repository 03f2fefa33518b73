from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field, StrictInt

from models_store import Store
from service.deps import Admin, AnyRole, Inference, LedgerDep, QueueDep, RuntimeDep, SettingsDep, StoreDep
from service.domain import rollback_model
from service.schemas import ModelPublic, ModelsPublic, Prediction, PredictRequest, PredictResponse
from unlearnd.callbacks import notify_terminal

router = APIRouter(prefix="/v1/models", tags=["models"])


def _public(store: Store, record: dict) -> ModelPublic:
    state = store.read_state(record["name"])
    return ModelPublic(**record, unlearning=state)


@router.get("")
def list_models(store: StoreDep, _: AnyRole) -> ModelsPublic:
    """Every registered model with the unlearning in force."""
    data = [_public(store, record) for record in store.list_models()]
    return ModelsPublic(data=data, count=len(data))


@router.get("/{model}")
def get_model(model: str, store: StoreDep, _: AnyRole) -> ModelPublic:
    """One model: shapes, classes, weights sha256 and the unlearning in force."""
    return _public(store, store.get_model(model))


@router.post("/{model}/predict")
def predict(model: str, body: PredictRequest, runtime: RuntimeDep, settings: SettingsDep,
            _: Inference) -> PredictResponse:
    """Predictions with every forget vector in force added to the inputs (x + δ, clipped to [0, 1])."""
    served, probabilities = runtime.predict(model, body.inputs, settings.max_predict_batch)
    predictions = [Prediction(label=int(p.argmax()), probabilities=[round(float(v), 6) for v in p])
                   for p in probabilities]
    return PredictResponse(model=model, model_version=served.model_version,
                           state_version=served.state_version, weights_sha256=served.weights_sha256,
                           applied=list(served.artifacts), predictions=predictions)


@router.get("/{model}/state")
def get_state(model: str, store: StoreDep, _: AnyRole) -> dict:
    """The served state: weights, artifacts applied and the requests they cover, plus earlier state
    versions."""
    state = store.read_state(model)
    history = [{"state_version": s["state_version"], "updated_at": s.get("updated_at"),
                "weights_sha256": s["weights_sha256"], "artifacts": s["artifacts"],
                "requests": len(s["requests"])} for s in store.state_history(model)]
    return {**state, "history": history}


class RollbackRequest(BaseModel):
    state_version: StrictInt = Field(..., ge=1, le=2**53, description="The earlier state to serve again.")
    reason: str | None = Field(None, max_length=2000)
    reinstate: list[str] = Field(default_factory=list, max_length=10_000, description="Requests this rollback "
                                 "takes out of force (they become `reverted`); all of them, or `force`.")
    force: bool = Field(False, description="Take every request out of force that the rollback requires.")


@router.post("/{model}/rollback")
def rollback(model: str, body: RollbackRequest, store: StoreDep, ledger: LedgerDep, queue: QueueDep,
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
    return new_state
