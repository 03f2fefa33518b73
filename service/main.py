"""The FastAPI application factory: `uvicorn service.main:create_app_from_env --factory` (UNLEARND_*
settings)."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from models_store import Ledger, Store
from service.errors import (
    add_openapi_schemas,
    document_problems,
    problem_responses,
    register_exception_handlers,
)
from service.inference import InferenceRuntime
from service.limits import BodySizeLimit
from service.metrics import HTTPMetrics
from service.metrics import router as metrics_router
from service.routes import audit, forget_requests, health, keys, models, registry
from service.schemas import ForgetRequestCreate
from unlearnd.queue import forget_queue, redis_connection
from unlearnd.security.api_keys import ROLES, load_or_create_api_keys
from unlearnd.security.signing import load_signer
from unlearnd.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="unlearnd",
        version="0.1.0",
        description="Make trained image classifiers forget: forget vectors and zero-shot Lipschitz "
                    "smoothing.",
    )
    # What the process holds for its lifetime; routes take each piece through its dependency (service.deps).
    app.state.settings = settings
    app.state.signer = load_signer(settings)  # signs and verifies served states, manifests (and receipts)
    app.state.store = Store(settings.store_dir, signer=app.state.signer)
    app.state.ledger = Ledger(settings.ledger_path)
    app.state.redis = redis_connection(settings)
    app.state.queue = forget_queue(app.state.redis, settings)
    app.state.api_keys = load_or_create_api_keys(settings)
    app.state.runtime = InferenceRuntime(app.state.store, settings.device, ledger=app.state.ledger,
                                         verify_interval_s=settings.verify_interval_s)
    register_exception_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HTTPMetrics)  # outermost: sees every answer, the body limit's 413s included
    # What models.py's rollback can refuse besides 401/403/404/422 (document_problems adds those everywhere).
    rollback = next(r for r in models.router.routes if getattr(r, "name", "") == "rollback")
    rollback.responses = {**problem_responses(409, descriptions={409: (  # type: ignore[attr-defined]
        "A forget job holds the model, the state is served already, or the rollback would take requests "
        "out of force that `reinstate` does not list")}), **rollback.responses}  # type: ignore[attr-defined]
    for router in (health.router, models.router, forget_requests.router, audit.router, registry.router,
                   keys.router, metrics_router):
        document_problems(router, all_roles=ROLES)
        app.include_router(router)
    add_openapi_schemas(app, [ForgetRequestCreate])
    return app


def create_app_from_env() -> FastAPI:
    """The uvicorn factory: `uvicorn service.main:create_app_from_env --factory`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s api %(levelname)s %(message)s")
    return create_app(get_settings())
