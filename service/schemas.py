"""Request and response bodies of the public API."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, get_args

from fastapi import Path
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from models_store.ledger import RequestStatus
from service.errors import describe_errors
from unlearnd.ingest.datasets import MAX_CHANNELS, MAX_CLASSES, MAX_SIDE, SOURCES
from unlearnd.ingest.errors import InvalidModelError
from workers.methods import REQUESTABLE

Method = Literal[REQUESTABLE]  # type: ignore[valid-type]  # names from the one method registry


ClassIndex = Annotated[StrictInt, Field(le=2**31 - 1, json_schema_extra={"minimum": 0})]
"""A class index as JSON sends it: an integer (strict: `true` is not class 1, `1.0` and "1" are refused). Below 0
or beyond the model's classes is refused when the request is accepted, naming the model's range."""

STORE_NAME = r"^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.[A-Za-z0-9_-])*\.?$"
"""`models_store.store.check_name` as a JSON Schema pattern (with at most 64 characters): letters, digits, '.',
'_' and '-', starting with a letter or digit, never '..'."""
NAME_SCHEMA: dict[str, Any] = {"minLength": 1, "maxLength": 64, "pattern": STORE_NAME}
"""What the OpenAPI says of a store name; `check_name` enforces it (422 naming the rule)."""
ModelName = Annotated[str, Path(json_schema_extra=NAME_SCHEMA, description="A model's name.")]
DatasetName = Annotated[str, Path(json_schema_extra=NAME_SCHEMA, description="A dataset's name.")]


FORGET_REQUEST_EXAMPLES = {
    "classes": {"summary": "Forget a class", "value": {
        "classes": [3], "method": "auto", "reason": "GDPR art. 17 request #1234",
        "callback_url": "https://governance.example.com/hooks/unlearnd"}},
    "samples": {"summary": "Forget training samples", "value": {
        "samples": ["17", "204"], "reason": "consent withdrawn"}},
}


class ForgetRequestCreate(BaseModel):
    """Body of POST /v1/models/{model}/forget-requests: exactly one of `classes` or `samples`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [example["value"] for example in FORGET_REQUEST_EXAMPLES.values()]})

    classes: list[ClassIndex] | None = Field(None, min_length=1, max_length=10_000, json_schema_extra={
        "uniqueItems": True}, description="Class indices to forget (0 to the model's classes − 1).")
    samples: list[str] | None = Field(None, min_length=1, json_schema_extra={"uniqueItems": True},
                                      description="Training-set sample ids to forget.")
    method: Method = "auto"
    reason: str | None = Field(None, max_length=2000)
    callback_url: str | None = Field(None, max_length=2000, pattern=r"^https?://[^\s]+$",
                                     description="POSTed the final record, signed, when the request ends.")

    @model_validator(mode="after")
    def exactly_one_forget_set(self) -> ForgetRequestCreate:
        if (self.classes is None) == (self.samples is None):
            raise ValueError("give exactly one of 'classes' or 'samples'")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError("'classes' holds duplicates")
        if self.samples is not None and len(set(self.samples)) != len(self.samples):
            raise ValueError("'samples' holds duplicates")
        return self


Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"}, examples=["2026-03-01T12:00:00.123+00:00"])]
"""A time as the ledger and the store write it: ISO 8601 with its UTC offset (RFC 3339)."""

JOB_STAGES = ("loading", "calibrating", "optimising", "verifying", "publishing")
"""What a worker reports while it computes a request, in this order."""
Stage = Literal[("queued", "waiting to retry", *JOB_STAGES, "done", "cancelled")]  # type: ignore[valid-type]
_LEGACY_STAGES = {"evaluating": "verifying"}
"""Stages that older workers wrote, by the one that replaced them."""


class Progress(BaseModel):
    """How far a request is. `stage` is `queued` (or `waiting to retry` after a crash) until a worker takes it,
    then the job's stages in order, and `done` or `cancelled` at the end. Methods add their own figures (e.g.
    `epoch`, `forget_acc`, `retain_acc`)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"stage": "optimising", "stage_fraction": 0.4, "fraction": 0.43, "elapsed_s": 2.1, "eta_s": 2.8,
         "attempt": 1, "epoch": 7, "forget_acc": 0.0, "retain_acc": 0.97},
        {"stage": "queued", "fraction": 0.0}]})

    stage: Stage = Field(..., description="Where the request is: `queued`, `waiting to retry`, then the job's "
                         f"stages {', '.join(JOB_STAGES)}, and `done` or `cancelled`.")
    stage_fraction: float | None = Field(None, ge=0, le=1, description="How far the current stage is, 0..1.")
    fraction: float = Field(0.0, ge=0, le=1, description="How far the whole request is, 0..1.")
    elapsed_s: float | None = Field(None, ge=0, description="Seconds since the job started.")
    eta_s: float | None = Field(None, ge=0, description="Estimated seconds until the job ends; null until a rate "
                                "is measured.")
    attempt: int | None = Field(None, ge=1, description="Which candidate of the method is being computed (the "
                                "utility guard may ask for a second one).")

    @model_validator(mode="before")
    @classmethod
    def _legacy_stage(cls, data: Any) -> Any:
        """Records written by older workers named their steps freely; they read as the stage they belong to."""
        if isinstance(data, dict) and data.get("stage") not in (None, *get_args(Stage)):
            data = {**data, "stage": _LEGACY_STAGES.get(data["stage"], "optimising"), "step": data["stage"]}
        return data


class Metrics(BaseModel):
    """Figures of the model as served, in percent."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"UA": 100.0, "RA": 99.1, "TA": 97.8, "TA_forgotten": 0.0, "MIA": 100.0}]})

    UA: float | None = Field(None, description="Unlearning accuracy: 100 − accuracy on the forget set.")
    RA: float | None = Field(None, description="Accuracy on the retain set.")
    TA: float | None = Field(None, description="Test accuracy (for class requests: on the remaining classes).")
    TA_forgotten: float | None = Field(None, description="Test accuracy on the forgotten classes.")
    MIA: float | None = Field(None, description="MIA-efficacy: share of the forget set a membership attack "
                              "calls non-member (the OPTML SVC attack on one shadow sample; comparable with the "
                              "papers, but it can flip with the shadow seed: read MIA_mean and MIA_thr too).")
    MIA_min: float | None = Field(None, description="The same attack's lowest MIA-efficacy over 3 shadow seeds.")
    MIA_mean: float | None = Field(None, description="The same attack's mean MIA-efficacy over 3 shadow seeds.")
    MIA_scale: float | None = Field(None, description="The SVC attack with gamma='scale', mean over the shadow seeds.")
    MIA_thr: float | None = Field(None, description="A per-class confidence-threshold attack's MIA-efficacy.")


class BeforeAfter(BaseModel):
    before: Metrics
    after: Metrics


class GuardVerdict(BaseModel):
    """What the utility guard measured on held-out data (accuracies in percent)."""

    model_config = ConfigDict(extra="allow")

    measured_on: dict[str, int] = Field(..., description="How many samples each figure was measured on.")
    baseline: float | None = Field(None, description="Held-out retained accuracy of what is served now.")
    candidate: float | None = Field(None, description="The same, of the candidate.")
    bound: float | None = Field(None, description="The least accuracy the candidate may have.")
    forget_accuracy: float | None = Field(None, description="The candidate's accuracy on the forget set.")
    forget_target: float | None = Field(None, description="What the forget accuracy should be.")
    passed: bool
    reason: str


class GuardAttempt(BaseModel):
    """One candidate the guard judged: its setting, how it stopped, and the verdict."""

    model_config = ConfigDict(extra="allow")

    setting: dict[str, Any] = Field(default_factory=dict)
    passed: bool
    reason: str


class Guard(BaseModel):
    """The utility guard's decision on what was published (see the README, "The utility guard")."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "passed": True, "verdict": {"measured_on": {"retain": 200, "forget": 180}, "baseline": 98.5,
                                    "candidate": 98.0, "bound": 95.5, "forget_accuracy": 0.0,
                                    "forget_target": 0.0, "passed": True, "reason": "within bounds"},
        "attempts": [{"setting": {"optimizer": "adam", "lr": 0.013}, "passed": True, "reason": "within bounds"}]}]})

    passed: bool
    verdict: GuardVerdict | None = None
    attempts: list[GuardAttempt] = Field(default_factory=list)


class GuardRefusal(BaseModel):
    model_config = ConfigDict(extra="allow")

    method: str
    reason: str
    guard: Guard | None = None


class AutoChoice(BaseModel):
    """What `method: auto` chose and why."""

    chosen: str
    why: str
    refused: list[GuardRefusal] = Field(default_factory=list, description="Methods tried first and refused by "
                                        "the utility guard.")


class Reversal(BaseModel):
    """A rollback took this request's forgetting out of force."""

    by: str = Field(..., description="Key id of the admin who rolled back.")
    to_state: int = Field(..., description="The state version served again.")
    reason: str | None = None
    at: Timestamp


class Result(BaseModel):
    """What a finished job produced. Succeeded: the artifact, how it was computed and the metrics before and
    after. Failed by the utility guard: `guard_refusals`. Reverted: `reverted`. Methods add their own fields
    (e.g. `bank_reused`, `epochs`, `steps`, `recomputed_vectors`)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "artifact_id": "fv_3f2a…", "method": "forget_vector", "strategy": "class_vector", "state_version": 2,
        "duration_s": 4.2, "bank_reused": [], "bank_computed": [3], "gated": True,
        "metrics": {"before": {"UA": 1.2, "RA": 99.0, "TA": 97.5, "MIA": 3.0},
                    "after": {"UA": 100.0, "RA": 98.8, "TA": 97.4, "TA_forgotten": 0.0, "MIA": 100.0}},
        "guard": {"passed": True, "attempts": []}, "coalesced_with": []}]})

    artifact_id: str | None = Field(None, description="The artifact published (a forget vector or new weights).")
    method: str | None = Field(None, description="The method that produced it (what `auto` chose).")
    state_version: int | None = Field(None, description="The served state that put it in force.")
    duration_s: float | None = Field(None, ge=0, description="Compute time of the job, seconds.")
    strategy: str | None = Field(None, description="How the method computed it (e.g. `class_vector`, "
                                 "`arithmetic`, `sample_vector`).")
    stop_reason: str | None = None
    gated: bool | None = Field(None, description="Class vectors: δ only on inputs assigned to a forgotten class.")
    weights_sha256: str | None = Field(None, description="Zero-shot: the new weights.")
    parent_weights_sha256: str | None = Field(None, description="Zero-shot: the weights it started from.")
    metrics: BeforeAfter | None = None
    guard: Guard | None = None
    auto: AutoChoice | None = None
    coalesced_with: list[str] | None = Field(None, description="Requests computed in the same job.")
    guard_refusals: list[GuardRefusal] | None = Field(None, description="Failed: every method the guard refused.")
    reverted: Reversal | None = None


class Callback(BaseModel):
    """Where the callback to `callback_url` stands: pending from the moment the request ends until it is delivered
    or given up."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"delivered": True, "pending": False, "status": 204, "attempts": 1, "message_id": "msg_5b1c…",
         "at": "2026-03-01T12:00:05.002+00:00"}]})

    delivered: bool
    pending: bool = Field(False, description="Attempts are still to come (`delivered` is false meanwhile).")
    status: int | None = Field(None, description="HTTP status of the receiver's last answer, if it answered.")
    attempts: int = Field(..., ge=0, description="Delivery attempts made.")
    message_id: str | None = Field(None, description="`webhook-id` of the message (the same on every attempt); "
                                   "null until the message is made.")
    error: str | None = Field(None, description="Why the last attempt failed (or why the message is not queued "
                              "yet).")
    next_attempt_at: Timestamp | None = Field(None, description="When the next attempt is due, if one is scheduled.")
    at: Timestamp = Field(..., description="When this was recorded.")


class ReceiptArtifact(BaseModel):
    id: str
    kind: str = Field(..., description="`forget_vector`, `class_vector` or `zero_shot`.")
    file_sha256: str
    manifest_sha256: str


class ReceiptBody(BaseModel):
    """What the server certifies about a succeeded request."""

    model_config = ConfigDict(extra="allow")

    request_id: str
    model: str
    method: str = Field(..., description="The method that produced the result.")
    classes: list[int] | None = None
    samples: list[str] | None = None
    weights_sha256_before: str
    weights_sha256_after: str
    state_version: int = Field(..., description="The served state that put it in force.")
    artifacts: list[ReceiptArtifact]
    metrics: BeforeAfter | dict[str, Any] = Field(..., description="As in the request's result.")
    guard: Guard | None = None
    computed_with: list[str] = Field(..., description="Every request of the job (coalesced requests).")
    accepted_at: Timestamp
    finished_at: Timestamp


class ReceiptSignature(BaseModel):
    algorithm: Literal["Ed25519", "HMAC-SHA256"] = Field(..., description="HMAC-SHA256: receipts issued before "
                                                         "Ed25519 signing.")
    key_id: str = Field(..., description="`kid` of the key in GET /v1/keys (Ed25519).")
    value: str = Field(..., description="The signature over the receipt's canonical JSON (sorted keys, no "
                       "spaces), base64url.")


class Receipt(BaseModel):
    """A signed receipt: check it offline with `unlearnd verify-receipt FILE --public-key keys.json`."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "receipt": {"request_id": "fr_0123456789abcdef", "model": "digits-cnn", "method": "forget_vector",
                    "classes": [3], "samples": None, "weights_sha256_before": "9c1e…", "weights_sha256_after": "9c1e…",
                    "state_version": 2, "artifacts": [{"id": "fv_3f2a…", "kind": "forget_vector",
                                                       "file_sha256": "ab12…", "manifest_sha256": "cd34…"}],
                    "metrics": {"before": {"UA": 1.2}, "after": {"UA": 100.0}}, "guard": None,
                    "computed_with": ["fr_0123456789abcdef"], "accepted_at": "2026-03-01T12:00:00.123+00:00",
                    "finished_at": "2026-03-01T12:00:04.456+00:00"},
        "signature": {"algorithm": "Ed25519", "key_id": "Vn0x…", "value": "q83v…"}}]})

    receipt: ReceiptBody
    signature: ReceiptSignature


class ForgetRequestPublic(BaseModel):
    """A forget request as the ledger holds it."""

    model_config = ConfigDict(protected_namespaces=(), json_schema_extra={"examples": [{
        "id": "fr_0123456789abcdef", "model": "digits-cnn", "classes": [3], "samples": None, "method": "auto",
        "reason": "DSR-2026-0042", "status": "running",
        "progress": {"stage": "optimising", "stage_fraction": 0.4, "fraction": 0.43, "elapsed_s": 2.1,
                     "eta_s": 2.8, "attempt": 1},
        "created_at": "2026-03-01T12:00:00.123+00:00", "started_at": "2026-03-01T12:00:00.456+00:00",
        "finished_at": None, "error": None, "result": None, "attempts": 1, "callback_url": None, "callback": None,
        "cancel_requested": False, "accepted_by": "4bf92f3577b34da6a3ce929d0e0e4736"}]})

    id: str = Field(..., description="`fr_` and 32 hex digits.")
    model: str
    classes: list[int] | None = None
    samples: list[str] | None = None
    method: Method = Field(..., description="The method requested (`result.method` says what computed it).")
    reason: str | None = None
    status: RequestStatus = Field(..., description="queued → running → succeeded | failed | cancelled; "
                                  "succeeded → reverted by a rollback.")
    progress: Progress
    created_at: Timestamp
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    error: str | None = Field(None, description="Why it failed.")
    result: Result | None = None
    attempts: int = Field(0, ge=0, description="Times a worker started it (crashes are retried).")
    callback_url: str | None = None
    callback: Callback | None = None
    cancel_requested: bool = Field(False, description="A cancel was asked while it ran; the worker stops at its "
                                   "next progress report (or finishes first).")
    accepted_by: str | None = Field(None, description="The X-Request-ID of the HTTP request that accepted it: the "
                                    "API's and the job's log lines carry it (null for requests older than it).")

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ForgetRequestPublic:
        fields = cls.model_fields
        return cls(**{k: v for k, v in record.items() if k in fields})


class ForgetRequestsPublic(BaseModel):
    data: list[ForgetRequestPublic]
    count: int
    next_cursor: str | None = None


class AuditEntry(BaseModel):
    seq: int
    at: Timestamp
    action: str
    actor: str
    request_id: str | None = None
    model: str | None = None
    detail: dict[str, Any]


class AuditPublic(BaseModel):
    data: list[AuditEntry]
    count: int
    next_cursor: str | None = None


class UnlearningInForce(BaseModel):
    state_version: int
    weights_sha256: str
    artifacts: list[str]
    requests: list[str]
    forgotten_classes: list[int]


class ModelPublic(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: int
    arch: str
    weights_sha256: str
    input_shape: list[int]
    num_classes: int
    class_names: list[str] | None = None
    train_dataset: str | None = None
    test_dataset: str | None = None
    created_at: Timestamp
    unlearning: UnlearningInForce


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[Any] = Field(..., min_length=1,
                              description="Images as C×H×W nested lists of floats in [0, 1].")
    """Checked by `service.codecs.images_from_json`: equally shaped, numbers (never true/false), in [0, 1]."""


class Prediction(BaseModel):
    label: int
    probabilities: list[float]


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    model_version: int
    state_version: int
    weights_sha256: str
    applied: list[str]
    predictions: list[Prediction]


class DatasetSource(BaseModel):
    """JSON body of POST /v1/datasets for data already on the server."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., json_schema_extra=NAME_SCHEMA)
    source: str = Field(..., description=f"one of {list(SOURCES)}", json_schema_extra={"enum": list(SOURCES)})
    root: str | None = Field(None, max_length=4096,
                             description="A directory on the server (not for builtin).")


class DatasetPublic(BaseModel):
    """A registered dataset: its training sample ids as a count and a short preview (all of them with
    `?include_ids=true`)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "name": "digits", "source": "builtin:digits", "input_shape": [1, 8, 8], "num_classes": 10,
        "class_names": None, "n_train": 1437, "n_test": 360, "dtype": "float32",
        "data_sha256": "5e1f…", "created_at": "2026-03-01T11:59:58.001+00:00", "ids_train_preview": ["0", "1"]}]})

    name: str
    source: str | None = Field(None, description="`npz`, `builtin:digits`, `torchvision:<name>` or `imagefolder`.")
    input_shape: list[int] | None = Field(None, description="[C, H, W]")
    num_classes: int | None = None
    class_names: list[str] | None = None
    n_train: int | None = None
    n_test: int | None = None
    data_sha256: str | None = None
    created_at: Timestamp | None = None
    ids_train_preview: list[str] = Field(default_factory=list, description="The first training sample ids.")
    ids_train: list[str] | None = Field(None, description="Every training sample id (`?include_ids=true` only).")


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int


class ModelMetadata(BaseModel):
    """The `metadata` JSON form field of POST /v1/models."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = Field(..., min_length=1, max_length=64)
    input_shape: list[StrictInt] = Field(..., min_length=3, max_length=3, description="[C, H, W]")
    num_classes: StrictInt = Field(..., ge=2, le=MAX_CLASSES)
    class_names: list[str] | None = None
    mean: list[StrictFloat] | None = Field(None, description="Per channel, applied inside the model; default 0.")
    std: list[StrictFloat] | None = Field(None, description="Per channel, applied inside the model; default 1.")
    train_dataset: str = Field(..., min_length=1, max_length=64)
    test_dataset: str | None = Field(None, min_length=1, max_length=64)

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, v: list[int]) -> list[int]:
        c, h, w = v
        if not 1 <= c <= MAX_CHANNELS or not 1 <= h <= MAX_SIDE or not 1 <= w <= MAX_SIDE:
            raise ValueError(f"[C, H, W] with 1 <= C <= {MAX_CHANNELS} and 1 <= H, W <= {MAX_SIDE}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ModelMetadata:
        channels = self.input_shape[0]
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names holds {len(self.class_names)} names "
                             f"for {self.num_classes} classes")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is None:
                continue
            if len(values) != channels:
                raise ValueError(f"{key} holds {len(values)} values for {channels} channels")
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{key} holds NaN or infinite values")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError("std must be positive")
        return self

    @property
    def channels(self) -> int:
        return self.input_shape[0]


def parse_model_metadata(text: str) -> ModelMetadata:
    """The `metadata` form field, validated; InvalidModelError says what is wrong with it."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # not JSON, an integer of thousands of digits, deep nesting
        raise InvalidModelError(f"metadata is not JSON that parses: {exc}") from None
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a "\ud800" escape: text no response could carry
        raise InvalidModelError("metadata holds a lone UTF-16 surrogate: strings must be Unicode text") from None
    try:
        return ModelMetadata.model_validate(obj)
    except ValidationError as exc:
        raise InvalidModelError(describe_errors(exc.errors(), limit=1, prefix="metadata")) from None
