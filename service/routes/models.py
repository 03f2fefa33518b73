from __future__ import annotations

from fastapi import APIRouter

from service.deps import AnyRole, Inference, ServicesDep
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
