"""What the API decides and writes, apart from HTTP: accepting a forget request and rolling a model back.

The routes parse, authorize and shape answers; these functions take what they act on as keyword arguments
and raise `Problem` for what they refuse.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from redis.exceptions import RedisError
from rq import Queue

from models_store import Ledger, Store
from models_store.store import now_iso
from service.errors import Problem
from service.idempotency import Claim
from service.schemas import ForgetRequestCreate, ForgetRequestPublic
from unlearnd.queue import enqueue_request
from unlearnd.settings import Settings

log = logging.getLogger(__name__)

MAX_LISTED_IDS = 20
"""How many unknown sample ids a 422 lists."""


def accept_forget_request(
    *, model: str, body: ForgetRequestCreate, actor: str, claim: Claim | None,
    store: Store, ledger: Ledger, queue: Queue, settings: Settings,
) -> ForgetRequestPublic:
    """Check the forget set against the model, record the request durably and queue its job.

    An Idempotency-Key `claim` is bound to the new request in the same ledger transaction."""
    record = store.get_model(model)
    if body.classes is not None:
        _check_classes(body.classes, record, gone=_forgotten_classes(store.read_state(model)))
    if body.samples is not None:
        _check_samples(body.samples, record, store=store, limit=settings.max_sample_ids)
    request_id = f"fr_{uuid.uuid4().hex}"
    stored = ledger.create({
        "id": request_id, "model": model, "classes": body.classes, "samples": body.samples,
        "method": body.method, "reason": body.reason, "key_id": actor, "callback_url": body.callback_url,
    }, idempotency=None if claim is None else (claim.key_id, claim.key))
    try:
        enqueue_request(queue, ledger, request_id, settings)
    except RedisError as exc:  # the ledger row is durable; the janitor enqueues it when Redis is back
        log.warning("could not enqueue %s now, the janitor will: %s", request_id, exc)
    return ForgetRequestPublic.from_record(stored)


def _forgotten_classes(state: dict[str, Any]) -> set[int]:
    """Classes the served state has forgotten, by any method."""
    return {*state.get("forgotten_classes", []), *state.get("smoothed_classes", [])}


def _check_classes(classes: list[int], record: dict[str, Any], *, gone: set[int]) -> None:
    """Class indices must be classes of the model, and at least one class must stay: a request that would
    forget every class can never succeed, so it is refused here instead of failing the batch it would join."""
    out_of_range = [c for c in classes if not 0 <= c < record["num_classes"]]
    if out_of_range:
        raise Problem(422, "Invalid classes",
                      f"classes {out_of_range} are outside 0..{record['num_classes'] - 1}")
    if len(gone | set(classes)) >= record["num_classes"]:
        already = f" ({len(gone)} already forgotten: {sorted(gone)})" if gone else ""
        raise Problem(422, "Invalid classes", f"the request would leave the model no class to predict: it has "
                      f"{record['num_classes']} classes{already}")


def _check_samples(samples: list[str], record: dict[str, Any], *, store: Store, limit: int) -> None:
    """Sample ids must name training samples of the model's training set, and not all of them."""
    if len(samples) > limit:
        raise Problem(422, "Too many samples", f"{len(samples)} sample ids; at most {limit} per request "
                      "(UNLEARND_MAX_SAMPLE_IDS)")
    known = set(store.get_dataset(record["train_dataset"])["ids_train"])
    unknown = [s for s in samples if s not in known]
    if unknown:
        shown = ", ".join(repr(s) for s in unknown[:MAX_LISTED_IDS])
        more = f" and {len(unknown) - MAX_LISTED_IDS} more" if len(unknown) > MAX_LISTED_IDS else ""
        raise Problem(422, "Unknown sample ids", f"{len(unknown)} ids are not in training set "
                      f"{record['train_dataset']!r}: {shown}{more}", unknown_ids=unknown[:MAX_LISTED_IDS])
    if len(samples) >= len(known):
        raise Problem(422, "Invalid samples", "the request would forget every training sample")


def rollback_model(
    *, model: str, state_version: int, reason: str | None, actor: str, store: Store, ledger: Ledger,
) -> dict[str, Any]:
    """Serve an earlier state again as a new state version, and audit it; returns the new state.

    Refuses (409) instead of waiting while a forget job holds the model."""
    store.read_state(model)  # 404 for an unknown model, before anything is written
    with store.try_model_lock(model) as locked:
        if not locked:
            raise Problem(409, "Model busy",
                          f"a forget job is running on {model!r}; retry when it has finished")
        current = store.read_state(model)
        target = next((s for s in store.state_history(model) if s["state_version"] == state_version), None)
        if target is None:
            raise Problem(404, "Unknown state", f"model {model!r} has no state version {state_version}")
        if state_version == current["state_version"]:
            raise Problem(409, "Already serving", f"state {state_version} is the current state")
        kept = {k: v for k, v in target.items() if k != "outcome"}  # that state's job result is not this one
        new_state = {**kept, "state_version": current["state_version"] + 1, "updated_at": now_iso(),
                     "rolled_back_to": state_version}
        store.write_state(model, new_state)
    ledger.audit("model.rollback", actor, model=model, detail={
        "from_state": current["state_version"], "to_state": state_version,
        "new_state": new_state["state_version"], "reason": reason})
    return new_state
