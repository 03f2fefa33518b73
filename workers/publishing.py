"""Publishing a job's result: the next served state, written in one atomic replace, and finding what an
earlier attempt of the same request already published."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from models_store import Store
from models_store.store import now_iso


@dataclass(frozen=True)
class Outcome:
    """What one computation published, shared by every request of its batch."""

    result: dict[str, Any]
    state_before: dict[str, Any]
    state_after: dict[str, Any]
    artifacts: list[dict[str, Any]]  # manifests of the artifacts in force after


def publish(store: Store, model: str, state: dict[str, Any], outcome: dict[str, Any] | None = None,
            **changes: Any) -> dict[str, Any]:
    """Write the next served state (state_version + 1) in one atomic replace; returns it.

    `outcome` (the job's result and its artifact ids) is kept in the new state, so a job that crashes after
    this write and before recording its requests can finish from it instead of computing again
    (`published_outcome`).
    """
    kept = {k: v for k, v in state.items() if k not in ("rolled_back_to", "outcome")}
    version = state["state_version"] + 1
    new_state = {**kept, **changes, "state_version": version, "updated_at": now_iso()}
    if outcome is not None:
        new_state["outcome"] = {**outcome, "state_version": version}
    store.write_state(model, new_state)
    return new_state


def published_outcome(store: Store, model: str, request_id: str) -> tuple[Outcome, list[str]] | None:
    """If an earlier attempt published `request_id`: the Outcome of the state that first covered it and the
    ids of the batch computed with it."""
    if request_id not in store.read_state(model).get("requests", []):
        return None
    history = store.state_history(model)
    for before, after in itertools.pairwise(history):
        if request_id in after.get("requests", []) and "outcome" in after:
            stored = dict(after["outcome"])
            manifests = [store.get_artifact_manifest(a) for a in stored.pop("artifact_ids", [])]
            batch = [r for r in after["requests"] if r not in before.get("requests", [])]
            return Outcome(stored, before, after, manifests), batch
    return None
