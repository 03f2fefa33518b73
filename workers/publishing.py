"""Publishing a job's result: the next served state, written in one atomic replace, and finding what an
earlier attempt of the same request already published."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from models_store import Store
from models_store.state import ServedState


@dataclass(frozen=True)
class Outcome:
    """What one computation published, shared by every request of its batch."""

    result: dict[str, Any]
    state_before: ServedState
    state_after: ServedState
    artifacts: list[dict[str, Any]]  # manifests of the artifacts in force after


def publish(store: Store, state: ServedState, outcome: dict[str, Any] | None = None, **changes: Any) -> ServedState:
    """Publish the state after `state` with these changes; StaleStateError if `state` is no longer current.

    `outcome` (the job's result and its artifact ids) is kept in the new state, so a job that crashes after
    this write and before recording its requests can finish from it instead of computing again
    (`published_outcome`).
    """
    return store.publish_state(state.advanced(outcome=outcome, **changes))


def published_outcome(store: Store, model: str, request_id: str) -> tuple[Outcome, list[str]] | None:
    """If an earlier attempt published `request_id`: the Outcome of the state that first covered it and the
    ids of the batch computed with it."""
    if not store.read_state(model).covers(request_id):
        return None
    history = store.state_history(model)
    for before, after in itertools.pairwise(history):
        if after.covers(request_id) and after.outcome is not None:
            stored = dict(after.outcome)
            manifests = [store.get_artifact_manifest(a) for a in stored.pop("artifact_ids", [])]
            batch = [r for r in after.requests if not before.covers(r)]
            return Outcome(stored, before, after, manifests), batch
    return None
