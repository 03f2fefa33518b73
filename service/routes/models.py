from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from models_store.store import now_iso
from service.deps import Admin, AnyRole, Inference, ServicesDep
from service.errors import Problem
from service.schemas import ModelPublic, ModelsPublic, Prediction, PredictRequest, PredictResponse

router = APIRouter(prefix="/v1/models", tags=["models"])


def _public(services: ServicesDep, record: dict) -> ModelPublic:
    state = services.store.read_state(record["name"])
    return ModelPublic(**record, unlearning=state)


@router.get("")
def list_models(services: ServicesDep, _: AnyRole) -> ModelsPublic:
    """Every registered model with the unlearning in force."""
    data = [_public(services, record) for record in services.store.list_models()]
    return ModelsPublic(data=data, count=len(data))


@router.get("/{model}")
def get_model(model: str, services: ServicesDep, _: AnyRole) -> ModelPublic:
    """One model: shapes, classes, weights sha256 and the unlearning in force."""
    return _public(services, services.store.get_model(model))


@router.post("/{model}/predict")
def predict(model: str, body: PredictRequest, services: ServicesDep, request_: Inference) -> PredictResponse:
    """Predictions with every forget vector in force added to the inputs (x + δ, clipped to [0, 1])."""
    runtime = services.runtime
    served, probabilities = runtime.predict(model, body.inputs, services.settings.max_predict_batch)
    predictions = [Prediction(label=int(p.argmax()), probabilities=[round(float(v), 6) for v in p])
                   for p in probabilities]
    return PredictResponse(model=model, model_version=served.model_version, state_version=served.state_version,
                           weights_sha256=served.weights_sha256, applied=list(served.artifacts),
                           predictions=predictions)


@router.get("/{model}/state")
def get_state(model: str, services: ServicesDep, _: AnyRole) -> dict:
    """The served state: weights, artifacts applied and the requests they cover, plus earlier state versions."""
    state = services.store.read_state(model)
    history = [{"state_version": s["state_version"], "updated_at": s.get("updated_at"),
                "weights_sha256": s["weights_sha256"], "artifacts": s["artifacts"],
                "requests": len(s["requests"])} for s in services.store.state_history(model)]
    return {**state, "history": history}


class RollbackRequest(BaseModel):
    state_version: int = Field(..., ge=1, description="The earlier state to serve again.")
    reason: str | None = Field(None, max_length=2000)


@router.post("/{model}/rollback")
def rollback(model: str, body: RollbackRequest, services: ServicesDep, principal: Admin) -> dict:
    """Serve an earlier state again, as a new state version; recorded in the audit log. While a forget job
    holds the model, answers 409 (retry when it is done) instead of waiting for it."""
    services.store.read_state(model)  # 404 for an unknown model, before anything is written
    with services.store.try_model_lock(model) as locked:
        if not locked:
            raise Problem(409, "Model busy", f"a forget job is running on {model!r}; retry when it has finished")
        current = services.store.read_state(model)
        target = next((s for s in services.store.state_history(model)
                       if s["state_version"] == body.state_version), None)
        if target is None:
            raise Problem(404, "Unknown state", f"model {model!r} has no state version {body.state_version}")
        if body.state_version == current["state_version"]:
            raise Problem(409, "Already serving", f"state {body.state_version} is the current state")
        kept = {k: v for k, v in target.items() if k != "outcome"}  # that state's job result is not this one
        new_state = {**kept, "state_version": current["state_version"] + 1, "updated_at": now_iso(),
                     "rolled_back_to": body.state_version}
        services.store.write_state(model, new_state)
    services.ledger.audit("model.rollback", principal.key_id, model=model, detail={
        "from_state": current["state_version"], "to_state": body.state_version,
        "new_state": new_state["state_version"], "reason": body.reason})
    return new_state
