"""FastAPI dependencies: settings, store, ledger, Redis queue, inference runtime and the caller's role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis
from rq import Queue

from models_store import Ledger, Store
from service.errors import Problem
from service.inference import InferenceRuntime
from unlearnd.keys import key_id
from unlearnd.settings import Settings


@dataclass(frozen=True)
class Services:
    """What one API process holds for its lifetime (built in `create_app`)."""

    settings: Settings
    store: Store
    ledger: Ledger
    redis: Redis
    queue: Queue
    api_keys: dict[str, str]  # key -> role
    runtime: InferenceRuntime


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


@dataclass(frozen=True)
class Principal:
    key_id: str
    role: str


_bearer = HTTPBearer(auto_error=False)


def require_roles(*roles: str):
    """A dependency that admits a valid Bearer key whose role is one of `roles` (401 / 403 otherwise)."""

    def check(
        services: ServicesDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None:
            raise Problem(401, "Unauthorized", "send an API key as 'Authorization: Bearer <key>'", challenge)
        role = services.api_keys.get(credentials.credentials)
        if role is None:
            raise Problem(401, "Unauthorized", "the API key is not valid", challenge)
        if role not in roles:
            raise Problem(403, "Forbidden", f"this endpoint needs role {' or '.join(roles)}; the key has {role}")
        return Principal(key_id(credentials.credentials), role)

    return check


AnyRole = Annotated[Principal, Depends(require_roles("admin", "governance", "inference"))]
Governance = Annotated[Principal, Depends(require_roles("admin", "governance"))]
Inference = Annotated[Principal, Depends(require_roles("admin", "inference"))]
Admin = Annotated[Principal, Depends(require_roles("admin"))]
