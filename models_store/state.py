"""The served state of a model: one typed, immutable record per state version.

A state names the weights served and the forget-vector artifacts applied at inference, the requests it covers,
and what the methods need to stay consistent with it (docs/architecture.md, "The served state"). It is created,
advanced and rolled back only by the methods below; `models_store.store.Store` is its one owner, which signs each
version, stores it and publishes a new one only on top of the version it was computed from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from typing import Any


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _ints(values: Iterable[Any]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _strs(values: Iterable[Any]) -> tuple[str, ...]:
    return tuple(str(v) for v in values)


@dataclass(frozen=True)
class ServedState:
    """One version of what a model serves. Sequences are tuples; `bank` and `outcome` are read-only by
    convention (never mutate a state: derive the next one with `advanced` or `rolled_back`)."""

    model: str
    state_version: int
    weights_sha256: str
    model_version: int = 1
    artifacts: tuple[str, ...] = ()
    """Artifact ids in force: forget vectors applied at inference (their δ are summed)."""
    requests: tuple[str, ...] = ()
    """Forget requests this state covers."""
    forgotten_classes: tuple[int, ...] = ()
    """Classes suppressed by the forget vector in force."""
    forgotten_samples: tuple[str, ...] = ()
    """Every sample id forgotten, by either method."""
    vector_samples: tuple[str, ...] = ()
    """Sample ids suppressed by a sample-wise forget vector in force."""
    bank: Mapping[int, str] = field(default_factory=dict)
    """{class: class_vector artifact id} computed for these weights (reused by vector arithmetic)."""
    smoothed: tuple[str, ...] = ()
    """Zero-shot artifacts that produced these weights, oldest first."""
    smoothed_classes: tuple[int, ...] = ()
    """Classes forgotten by zero-shot smoothing."""
    gate_classes: tuple[int, ...] | None = None
    """When set, inference applies δ only to inputs the model assigns to one of these classes."""
    outcome: Mapping[str, Any] | None = None
    """The result of the job that published this state (lets a retried job finish without recomputing)."""
    rolled_back_to: int | None = None
    """Set when this state serves an earlier version again."""
    updated_at: str = ""
    signature: Mapping[str, str] | None = field(default=None, compare=False)
    """The store's signature of the stored document (set when read or written; not part of the document)."""

    # ---- creation -------------------------------------------------------------------------------------
    @classmethod
    def initial(cls, model: str, weights_sha256: str, *, model_version: int = 1,
                state_version: int = 1) -> ServedState:
        """Nothing applied: the weights as registered (`state_version` keeps counting across model versions)."""
        return cls(model=model, state_version=state_version, weights_sha256=weights_sha256,
                   model_version=model_version, updated_at=now_iso())

    def advanced(self, *, outcome: Mapping[str, Any] | None = None, **changes: Any) -> ServedState:
        """The next version: these fields changed, the rest kept (a job's outcome and a rollback mark are not)."""
        return replace(self, **_normalised(changes), state_version=self.state_version + 1, updated_at=now_iso(),
                       rolled_back_to=None, signature=None,
                       outcome=None if outcome is None else {**outcome, "state_version": self.state_version + 1})

    def rolled_back(self, target: ServedState) -> ServedState:
        """`target` served again as the version after this one (without that state's job outcome)."""
        return replace(target, state_version=self.state_version + 1, updated_at=now_iso(), outcome=None,
                       rolled_back_to=target.state_version, signature=None)

    # ---- what the methods ask ---------------------------------------------------------------------------
    @property
    def classes_gone(self) -> set[int]:
        """Classes forgotten by any method."""
        return {*self.forgotten_classes, *self.smoothed_classes}

    def covers(self, request_id: str) -> bool:
        return request_id in self.requests

    # ---- the stored document ------------------------------------------------------------------------------
    def to_document(self) -> dict[str, Any]:
        """The JSON document that is signed and stored (lists for tuples, string keys for the bank)."""
        document: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "signature":
                continue
            value = getattr(self, f.name)
            if f.name == "bank":
                value = {str(k): v for k, v in sorted(value.items())}
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            document[f.name] = value
        return document

    def as_stored(self) -> dict[str, Any]:
        """The document with its signature, as stored and as the API shows it."""
        document = self.to_document()
        if self.signature is not None:
            document["signature"] = dict(self.signature)
        return document

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ServedState:
        """Parse a stored document (older documents lack some fields: they take the defaults); the signature is
        the store's business and is ignored here. KeyError/ValueError/TypeError when a required field is bad."""
        known = {f.name for f in fields(cls)} - {"signature"}
        values = {k: v for k, v in document.items() if k in known}
        for required in ("model", "state_version", "weights_sha256"):
            if required not in values:
                raise KeyError(f"served state document lacks {required!r}")
        return cls(**_normalised(values))


def _normalised(values: Mapping[str, Any]) -> dict[str, Any]:
    """Field values in their declared types (lists from JSON become tuples, bank keys ints)."""
    out = dict(values)
    for name in ("artifacts", "requests", "forgotten_samples", "vector_samples", "smoothed"):
        if name in out:
            out[name] = _strs(out[name] or ())
    for name in ("forgotten_classes", "smoothed_classes"):
        if name in out:
            out[name] = _ints(out[name] or ())
    if out.get("gate_classes") is not None:
        out["gate_classes"] = _ints(out["gate_classes"])
    if "bank" in out:
        out["bank"] = {int(k): str(v) for k, v in (out["bank"] or {}).items()}
    for name in ("state_version", "model_version"):
        if name in out:
            out[name] = int(out[name])
    if out.get("outcome") is not None:
        out["outcome"] = dict(out["outcome"])
    return out
