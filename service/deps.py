"""FastAPI dependencies, one per resource the API process holds (built in `create_app`, kept on `app.state`),
and the caller's role. A route's signature shows what it touches; a test overrides one piece with
`app.dependency_overrides[get_queue] = ...`. They are `async def` (none blocks), so FastAPI runs them on the event
loop instead of handing each request to its thread pool and back."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis
from rq import Queue

from models_store import Ledger, Store
from service.errors import Problem
from service.inference import InferenceRuntime
from service.intake import Intake
from unlearnd.security.secret_files import key_id
from unlearnd.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_ledger(request: Request) -> Ledger:
    return request.app.state.ledger


async def get_redis(request: Request) -> Redis:
    return request.app.state.redis


async def get_queue(request: Request) -> Queue:
    return request.app.state.queue


async def get_intake(request: Request) -> Intake:
    return request.app.state.intake


async def get_runtime(request: Request) -> InferenceRuntime:
    return request.app.state.runtime


async def get_api_keys(request: Request) -> dict[str, str]:
    """API key -> role."""
    return request.app.state.api_keys


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
LedgerDep = Annotated[Ledger, Depends(get_ledger)]
RedisDep = Annotated[Redis, Depends(get_redis)]
QueueDep = Annotated[Queue, Depends(get_queue)]
IntakeDep = Annotated[Intake, Depends(get_intake)]
RuntimeDep = Annotated[InferenceRuntime, Depends(get_runtime)]
ApiKeysDep = Annotated[dict[str, str], Depends(get_api_keys)]


@dataclass(frozen=True)
class Principal:
    key_id: str
    role: str


_bearer = HTTPBearer(auto_error=False)


def role_of(api_keys: dict[str, str], presented: str) -> str | None:
    """The role of the presented key, or None: compared with every key in constant time (hmac.compare_digest
    over sha256 digests, so neither the position of a first differing byte nor a key's length shows in
    the timing), never by a dict lookup."""
    digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
    found = None
    for key, role in api_keys.items():
        if hmac.compare_digest(digest, hashlib.sha256(key.encode()).digest()):
            found = role
    return found


def require_roles(*roles: str):
    """A dependency that admits a valid Bearer key whose role is one of `roles` (401 / 403 otherwise)."""

    async def check(
        api_keys: ApiKeysDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None:
            raise Problem(401, "Unauthorized", "send an API key as 'Authorization: Bearer <key>'", challenge)
        role = role_of(api_keys, credentials.credentials)
        if role is None:
            raise Problem(401, "Unauthorized", "the API key is not valid", challenge)
        if role not in roles:
            raise Problem(403, "Forbidden",
                          f"this endpoint needs role {' or '.join(roles)}; the key has {role}")
        return Principal(key_id(credentials.credentials), role)

    return check


AnyRole = Annotated[Principal, Depends(require_roles("admin", "governance", "inference"))]
Governance = Annotated[Principal, Depends(require_roles("admin", "governance"))]
Inference = Annotated[Principal, Depends(require_roles("admin", "inference"))]
Admin = Annotated[Principal, Depends(require_roles("admin"))]
