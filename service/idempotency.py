"""Idempotency-Key on POST forget-requests (draft-ietf-httpapi-idempotency-key-header).

A request with a key claims it in the ledger transaction that records the request, together with its answer
(`service.intake`), so a key is either unknown or bound to an accepted request and its 202. A later request with
the key and the same body gets that answer again (`answer_key_in_use`, marked `Idempotent-Replayed`); with
another body it is refused (422). A refused request claims nothing: the client may retry with the same key. The
key is looked up before a refusal is answered (`earlier_answer`), so a retry of an accepted request is replayed
even when its checks would refuse it today.

Ledgers written before claims were recorded with their request may hold a claim bound to no request (its process
died while accepting, or is still accepting): 409 while it is fresh, taken over after `STALE_CLAIM_S`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fastapi import Response

from models_store import Ledger
from models_store.ledger import IdempotencyClaim, StoredAnswer
from service.errors import Problem
from service.schemas import ForgetRequestPublic

STALE_CLAIM_S = 60.0
"""A claim bound to no request after this long is taken over by a retry instead of answering 409."""


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

    @classmethod
    def accepted_record(cls, record: dict[str, Any]) -> Answer:
        return cls.accepted(ForgetRequestPublic.from_record(record))

    def stored(self) -> StoredAnswer:
        return self.status_code, self.body, self.headers

    def response(self, headers: dict[str, str] | None = None) -> Response:
        return Response(self.body, status_code=self.status_code, headers={**self.headers, **(headers or {})},
                        media_type="application/json")


def earlier_answer(ledger: Ledger, claim: IdempotencyClaim) -> Response | None:
    """For a request that a check refuses now: the answer of its Idempotency-Key's first request (as
    `answer_key_in_use`), None when the key is unknown. A retry must replay what was accepted even when the same
    body would be refused today (e.g. another request has forgotten classes since, or the callback host's
    address changed)."""
    row = ledger.idempotency_row(claim)
    return None if row is None else answer_key_in_use(ledger, claim, row)


def answer_key_in_use(ledger: Ledger, claim: IdempotencyClaim, row: dict[str, Any]) -> Response:
    """The answer to a request whose Idempotency-Key was claimed before (`row`): the first answer again, marked
    as a replay. Raises 422 when the key was used with another body, 409 while a claim bound to no request is
    fresh."""
    if row["body_sha256"] != claim.body_sha256:
        raise Problem(422, "Idempotency key reused", "this Idempotency-Key was used with another body")
    if row["status_code"] is not None:
        answer = Answer(row["status_code"], row["response"], json.loads(row["headers"]))
    elif row["request_id"] is not None:  # accepted, but its process died before storing the answer: answer now
        answer = Answer.accepted_record(ledger.get(row["request_id"]))
        ledger.idempotency_finish(claim.key_id, claim.key, answer.status_code, answer.body, answer.headers)
    else:
        raise Problem(409, "Request in progress", "the first request with this Idempotency-Key is still being "
                      "accepted; retry shortly")
    return answer.response({"Idempotent-Replayed": "true"})
