"""The FastAPI application factory: `uvicorn service.main:create_app_from_env --factory` (UNLEARND_*
settings)."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from models_store import Ledger, Store
from service.errors import register_exception_handlers
from service.inference import InferenceRuntime
from service.limits import BodySizeLimit
from service.routes import audit, forget_requests, health, keys, models, registry
from unlearnd.queue import forget_queue, redis_connection
from unlearnd.security.api_keys import load_or_create_api_keys
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
    for router in (health.router, models.router, forget_requests.router, audit.router, registry.router,
                   keys.router):
        app.include_router(router)
    return app


def create_app_from_env() -> FastAPI:
    """The uvicorn factory: `uvicorn service.main:create_app_from_env --factory`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s api %(levelname)s %(message)s")
    return create_app(get_settings())
