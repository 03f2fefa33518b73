"""The FastAPI application factory: `uvicorn service.main:create_app_from_env --factory` (UNLEARND_*
settings)."""

from __future__ import annotations

import gc
import multiprocessing

from fastapi import FastAPI

from models_store import Ledger, Store, open_database
from service.codecs import V2InferenceRequest
from service.errors import (
    add_openapi_schemas,
    document_problems,
    problem_responses,
    register_exception_handlers,
)
from service.head import HeadAsGet
from service.inference import InferenceRuntime
from service.intake import Intake
from service.limits import BodySizeLimit
from service.metrics import HTTPMetrics
from service.metrics import router as metrics_router
from service.request_id import RequestContext
from service.routes import admin, audit, forget_requests, health, keys, models, registry, reports, v2
from service.schemas import ForgetRequestCreate
from unlearnd.blobs import open_blobs
from unlearnd.cli.processes import die_with_parent
from unlearnd.logs import configure_logging
from unlearnd.queue import forget_queue, redis_connection
from unlearnd.security.api_keys import ROLES, load_or_create_api_keys
from unlearnd.security.signing import announcer, load_signer
from unlearnd.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="unlearnd",
        version="0.1.0",
        description="Make trained image classifiers forget: forget vectors and zero-shot Lipschitz "
                    "smoothing.",
        # operationId = the route function's name, what generated clients call it (tests/service/test_openapi.py
        # checks that they are unique)
        generate_unique_id_function=lambda route: route.name,
    )
    # What the process holds for its lifetime; routes take each piece through its dependency (service.deps).
    app.state.settings = settings
    app.state.signer = load_signer(settings)  # signs and verifies served states, manifests (and receipts)
    database = open_database(settings)  # migrated to the newest schema
    app.state.store = Store(settings.store_dir, signer=app.state.signer, blobs=open_blobs(settings), db=database,
                            on_publish=announcer(settings))  # every API process hears of a new state
    app.state.ledger = Ledger(database)
    app.state.redis = redis_connection(settings)
    app.state.queue = forget_queue(app.state.redis, settings)
    app.state.api_keys = load_or_create_api_keys(settings)
    app.state.runtime = InferenceRuntime.from_settings(settings, app.state.store, ledger=app.state.ledger,
                                                       redis=app.state.redis)
    app.router.on_shutdown.append(app.state.runtime.close)  # answers what is in flight, stops its thread
    app.state.intake = Intake(store=app.state.store, ledger=app.state.ledger, queue=app.state.queue,
                              settings=settings)  # group commit of forget requests
    app.router.on_shutdown.append(app.state.intake.close)
    register_exception_handlers(app)
    app.add_middleware(HeadAsGet)  # innermost: the access log and metrics still see HEAD
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HTTPMetrics)  # sees every answer, the body limit's 413s included
    app.add_middleware(RequestContext, access_log=settings.access_log)  # outermost: request id, access log
    # What models.py's rollback can refuse besides 401/403/404/422 (document_problems adds those everywhere).
    rollback = next(r for r in models.router.routes if getattr(r, "name", "") == "rollback")
    rollback.responses = {**problem_responses(409, descriptions={409: (  # type: ignore[attr-defined]
        "A forget job holds the model, the state is served already, or the rollback would take requests "
        "out of force that `reinstate` does not list")}), **rollback.responses}  # type: ignore[attr-defined]
    # The prediction routes first: Starlette tries routes in order, and no two routers share a method and path.
    for router in (v2.router, models.router, forget_requests.router, health.router, audit.router, registry.router,
                   keys.router, metrics_router, admin.router, reports.router):
        document_problems(router, all_roles=ROLES)
        app.include_router(router)
    add_openapi_schemas(app, [ForgetRequestCreate, V2InferenceRequest])
    return app


GC_GEN0_THRESHOLD = 20_000
"""Container objects allocated (net) between two young-generation collections of the API process (Python's default:
700). Measured with a forget-request load of 300/s: 700 ran a full collection of the unfrozen heap every few seconds
(up to 66 ms after `settle_heap`'s freeze; 266 ms without it); 20,000 ran a young collection every ~2 s (8 ms) and
no full one in the run."""


def settle_heap() -> None:
    """Import the inference stack (torch: what the first prediction would import) and take everything alive now out
    of the cycle collector's reach (`gc.freeze`): a full collection then walks only what the process allocated
    since, instead of torch's and the app's ~300,000 objects, which held every request up for 50–270 ms at a time.
    Also makes young collections rarer (`GC_GEN0_THRESHOLD`), so that fewer requests in flight survive into the old
    generation."""
    import unlearnd.runtime  # noqa: F401  (loading a model)
    import unlearning.evaluation  # noqa: F401  (torch, and what applies a forget vector)

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def create_app_from_env() -> FastAPI:
    """The uvicorn factory: `uvicorn service.main:create_app_from_env --factory`."""
    settings = get_settings()
    configure_logging(settings, "api")
    if (supervisor := multiprocessing.parent_process()) is not None:  # a worker of `uvicorn --workers N`
        die_with_parent(supervisor.pid)
    app = create_app(settings)
    settle_heap()
    return app
