"""Idempotency-Key on POST forget-requests (draft-ietf-httpapi-idempotency-key-header).

A request `begin`s by claiming its key in the ledger. The first request with a key is accepted, its claim
bound to the new request in the ledger's transaction, and its answer stored with `finish`; a refused one
`release`s the claim. A later request with the key and the same body gets the stored answer again (`replay`);
with another body it is refused (422); while the first is still being accepted, 409. A claim bound to no
request after `STALE_CLAIM_S` belongs to a process that died before accepting, and is taken over.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from fastapi import Response

from models_store import Ledger
from service.errors import Problem
from service.schemas import ForgetRequestPublic

STALE_CLAIM_S = 60.0
"""A claim bound to no request after this long is taken over by a retry instead of answering 409."""


@dataclass(frozen=True)
class Claim:
    """One caller's Idempotency-Key, with a digest of what this request sends (the model and the raw body)."""

    key_id: str
    key: str
    body_sha256: str

    @classmethod
    def of(cls, key_id: str, key: str, model: str, body: bytes) -> Claim:
        return cls(key_id, key, hashlib.sha256(model.encode() + b"\0" + body).hexdigest())


@dataclass(frozen=True)
class Answer:
    """An answer as the ledger keeps it for replay."""

    status_code: int
    body: str
    headers: dict[str, str]

    @classmethod
    def accepted(cls, request: ForgetRequestPublic) -> Answer:
        """The 202 of an accepted forget request: its record, and where to poll it."""
        return cls(202, request.model_dump_json(), {"Location": f"/v1/forget-requests/{request.id}"})

    def response(self, headers: dict[str, str] | None = None) -> Response:
        return Response(self.body, status_code=self.status_code, headers={**self.headers, **(headers or {})},
                        media_type="application/json")


def begin(ledger: Ledger, claim: Claim) -> Answer | None:
    """Claim the key: None when this request holds it now (go on and accept), else the first answer to replay.

    Raises 422 when the key was used with another body, 409 while its first request is being accepted."""
    existing = ledger.idempotency_begin(claim.key_id, claim.key, claim.body_sha256)
    if existing is None:
        return None
    if existing["body_sha256"] != claim.body_sha256:
        raise Problem(422, "Idempotency key reused", "this Idempotency-Key was used with another body")
    if existing["status_code"] is not None:
        return Answer(existing["status_code"], existing["response"], json.loads(existing["headers"]))
    if existing["request_id"] is not None:
        # accepted, but the process that accepted it died before storing its answer: answer now
        answer = Answer.accepted(ForgetRequestPublic.from_record(ledger.get(existing["request_id"])))
        finish(ledger, claim, answer)
        return answer
    if ledger.idempotency_take_over(claim.key_id, claim.key, STALE_CLAIM_S):
        return None
    raise Problem(409, "Request in progress", "the first request with this Idempotency-Key is still being "
                  "accepted; retry shortly")


def replay(answer: Answer) -> Response:
    """The stored answer again, marked as a replay."""
    return answer.response({"Idempotent-Replayed": "true"})


def finish(ledger: Ledger, claim: Claim, answer: Answer) -> None:
    """Store the answer that later requests with this key replay."""
    ledger.idempotency_finish(claim.key_id, claim.key, answer.status_code, answer.body, answer.headers)


def release(ledger: Ledger, claim: Claim) -> None:
    """Drop the claim of a refused request, so the client may retry with the same key."""
    ledger.idempotency_release(claim.key_id, claim.key)
