"""What the API decides and writes, apart from HTTP: checking a forget request and rolling a model back.

The routes parse, authorize and shape answers; these functions take what they act on as keyword arguments
and raise `Problem` for what they refuse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from models_store import IntegrityError, Ledger, NotFoundError, Store
from models_store.state import ServedState
from service.errors import Problem
from service.schemas import ForgetRequestCreate
from unlearnd.settings import Settings

MAX_LISTED_IDS = 20
"""How many unknown sample ids a 422 lists."""


def check_forget_request(*, model: str, body: ForgetRequestCreate, store: Store, settings: Settings,
                         reads: dict[tuple[str, str], Any] | None = None) -> None:
    """Refuse (404, 422) a forget set that does not fit the model; `service.intake` records the ones that do.

    `reads` keeps what was read from the store for the next check of the same group (a model's record, its
    served state, its training ids), so that a burst of requests for one model reads each once."""
    reads = {} if reads is None else reads

    def read(what: str, name: str, load: Callable[[str], Any]) -> Any:
        if (what, name) not in reads:
            reads[what, name] = load(name)
        return reads[what, name]

    record = read("model", model, store.get_model)
    if body.classes is not None:
        gone = read("classes_gone", model, lambda name: store.read_state(name).classes_gone)
        _check_classes(body.classes, record, gone=gone)
    if body.samples is not None:
        known = read("ids_train", record["train_dataset"], lambda name: set(store.get_dataset(name)["ids_train"]))
        _check_samples(body.samples, record, known=known, limit=settings.max_sample_ids)


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


def _check_samples(samples: list[str], record: dict[str, Any], *, known: set[str], limit: int) -> None:
    """Sample ids must name training samples of the model's training set, and not all of them."""
    if len(samples) > limit:
        raise Problem(422, "Too many samples", f"{len(samples)} sample ids; at most {limit} per request "
                      "(UNLEARND_MAX_SAMPLE_IDS)")
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
    reinstate: list[str] | None = None, force: bool = False,
) -> tuple[ServedState, list[str]]:
    """Serve an earlier state again as a new state version, and audit it; returns the new state and the ids of
    the requests it took out of force (now `reverted`).

    A rollback to a state from before some deletions must say so: `reinstate` lists exactly those requests (or
    `force`), with a reason; otherwise 409 lists them and nothing changes.

    Refuses (409) instead of waiting while a forget job holds the model, and (409) a target state that fails
    verification (its signature, weights, artifacts: `Store.verify_state_files`). The current state is not
    required to verify: rolling back is how a tampered one is replaced."""
    store.read_state(model, verify=False)  # 404 for an unknown model, before anything is written
    with store.try_model_lock(model) as locked:
        if not locked:
            raise Problem(409, "Model busy",
                          f"a forget job is running on {model!r}; retry when it has finished")
        current = store.read_state(model, verify=False)
        try:
            target = store.read_state_version(model, state_version, verify=False)
        except NotFoundError:
            raise Problem(404, "Unknown state", f"model {model!r} has no state version {state_version}") from None
        if state_version == current.state_version:
            raise Problem(409, "Already serving", f"state {state_version} is the current state")
        _check_rollback_target(model, state_version, actor=actor, store=store, ledger=ledger)
        undone = sorted(set(current.requests) - set(target.requests))
        _check_reinstated(undone, reinstate or [], force=force, reason=reason)
        new_state = store.publish_state(current.rolled_back(target))  # signed anew
    ledger.audit("model.rollback", actor, model=model, detail={
        "from_state": current.state_version, "to_state": state_version,
        "new_state": new_state.state_version, "reason": reason, "reverted": undone})
    reverted = [i for i in undone if ledger.mark_reverted(i, actor=actor, to_state=state_version, reason=reason)]
    return new_state, reverted


def _check_reinstated(undone: list[str], reinstate: list[str], *, force: bool, reason: str | None) -> None:
    """409 unless a rollback that takes requests out of force names them (or is forced) and gives a reason."""
    if not undone:
        if reinstate:
            raise Problem(422, "Nothing to reinstate", f"this rollback takes no request out of force: {reinstate}")
        return
    stray = sorted(set(reinstate) - set(undone))
    if stray:
        raise Problem(422, "Not taken out of force", f"this rollback does not take {stray} out of force",
                      requests=undone)
    if not force and set(reinstate) != set(undone):
        raise Problem(409, "Rollback would un-forget",
                      f"state to serve again predates {len(undone)} deletion requests; list them all in "
                      "`reinstate` (or set `force`) with a `reason` to serve their data again", requests=undone)
    if not reason:
        raise Problem(422, "Reason required", "a rollback that reinstates forgotten data needs a `reason`")


def _check_rollback_target(model: str, version: int, *, actor: str, store: Store, ledger: Ledger) -> None:
    """409 (audited) unless the state to serve again verifies: signature, weights and artifacts."""
    try:
        store.verify_state_files(model, store.read_state_version(model, version))
    except (IntegrityError, NotFoundError) as exc:
        ledger.audit("model.rollback_refused", actor, model=model, detail={"to_state": version, "reason": str(exc)})
        raise Problem(409, "State fails verification",
                      f"state {version} of model {model!r} cannot be served again: {exc}", reason=str(exc)) from None
