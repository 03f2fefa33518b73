"""Idempotency-Key on POST forget-requests (draft-ietf-httpapi-idempotency-key-header).

A request with a key claims it in the ledger transaction that records the request, together with its answer
(`service.intake`), so a key is either unknown or bound to an accepted request and its 202. A later request with
the key and the same body gets that answer again (`answer_key_in_use`, marked `Idempotent-Replayed`); with
another body it is refused (422). A refused request claims nothing: the client may retry with the same key. The
key is looked up before a refusal is answered (`earlier_answer`), so a retry of an accepted request is replayed
even when its checks would refuse it today.

The key is the header's Structured Field string (`"…"`, the draft's form) or, as many clients send it, the bare
value: `"k1"` and `k1` are one key (`claim_of`). "The same body" is the same request once parsed (canonical JSON),
not the same bytes. A key is kept `UNLEARND_IDEMPOTENCY_KEY_TTL_S` (24 h by default); after that a request with it
is new, and the janitor deletes it.

Ledgers written before claims were recorded with their request may hold a claim bound to no request (its process
died while accepting, or is still accepting): 409 while it is fresh, taken over after `STALE_CLAIM_S`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from fastapi import Response

from models_store import Ledger
from models_store.ledger import IdempotencyClaim, StoredAnswer
from service.errors import Problem
from service.schemas import ForgetRequestCreate, ForgetRequestPublic

STALE_CLAIM_S = 60.0
"""A claim bound to no request after this long is taken over by a retry instead of answering 409."""

_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])+)"'
                        r'(?:;[ ]*[a-z*][a-z0-9_.*-]*(?:=(?:"(?:[^"\\]|\\.)*"|[^;",\s]+))?)*')
"""A non-empty Structured Field string (RFC 8941, section 3.3.3): printable ASCII in double quotes, `\\"` and
`\\\\` its only escapes; parameters (section 3.1.2) may follow, and mean nothing here."""


def idempotency_key(header: str) -> str:
    """The key an `Idempotency-Key` header names: the content of a Structured Field string, or a bare value as it
    is. 422 for a quoted value that is no valid, non-empty Structured Field string."""
    value = header.strip(" ")
    if not value.startswith('"'):
        return value
    match = _SF_STRING.fullmatch(value)
    if match is None:
        raise Problem(422, "Invalid Idempotency-Key", 'a quoted Idempotency-Key must be a Structured Field string: '
                      'printable ASCII between double quotes, with \\" and \\\\ the only escapes')
    return re.sub(r'\\(["\\])', r"\1", match.group(1))


def claim_of(key_id: str, header: str, model: str, body: ForgetRequestCreate, raw_body: bytes | None = None,
             ) -> IdempotencyClaim:
    """The claim of a request to `model` with an `Idempotency-Key` header, over its canonical body: the fields it
    sets to other than their defaults (so a field added later with a default changes no stored digest). With
    `raw_body`, a key stored with the digest of the same bytes (by an earlier version) matches too."""
    canonical = json.dumps(body.model_dump(mode="json", exclude_defaults=True), sort_keys=True, separators=(",", ":"))
    return IdempotencyClaim.of(key_id, idempotency_key(header), model, canonical.encode(), raw_body)


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


def earlier_answer(ledger: Ledger, claim: IdempotencyClaim, key_ttl_s: float) -> Response | None:
    """For a request that a check refuses now: the answer of its Idempotency-Key's first request (as
    `answer_key_in_use`), None when the key is unknown. A retry must replay what was accepted even when the same
    body would be refused today (e.g. another request has forgotten classes since, or the callback host's
    address changed)."""
    row = ledger.idempotency_row(claim, key_ttl_s)
    return None if row is None else answer_key_in_use(ledger, claim, row)


def answer_key_in_use(ledger: Ledger, claim: IdempotencyClaim, row: dict[str, Any]) -> Response:
    """The answer to a request whose Idempotency-Key was claimed before (`row`): the first answer again, marked
    as a replay. Raises 422 when the key was used with another body, 409 while a claim bound to no request is
    fresh."""
    if not claim.same_body(row["body_sha256"]):
        raise Problem(422, "Idempotency key reused", "this Idempotency-Key was used with another body")
    if row["status_code"] is not None:
        answer = Answer(row["status_code"], row["response"], json.loads(row["headers"]))
    elif row["request_id"] is not None:  # accepted, but its process died before storing the answer: answer now
        answer = Answer.accepted_record(ledger.get(row["request_id"]))
        ledger.idempotency_finish(claim, row["request_id"], answer.status_code, answer.body, answer.headers)
    else:
        raise Problem(409, "Request in progress", "the first request with this Idempotency-Key is still being "
                      "accepted; retry shortly")
    return answer.response({"Idempotent-Replayed": "true"})
