"""Request and response bodies of the public API."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

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
ClassIndex = Annotated[StrictInt, Field(ge=-(2**31), le=2**31 - 1)]
"""A class index as JSON sends it: an integer (strict: `true` is not class 1, `1.0` and "1" are refused)."""


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

    classes: list[ClassIndex] | None = Field(None, min_length=1, max_length=10_000,
                                      description="Class indices to forget.")
    samples: list[str] | None = Field(None, min_length=1, description="Training-set sample ids to forget.")
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


class ForgetRequestPublic(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str
    model: str
    classes: list[int] | None = None
    samples: list[str] | None = None
    method: Method
    reason: str | None = None
    status: RequestStatus
    progress: dict[str, Any]
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    attempts: int = 0
    callback_url: str | None = None
    callback: dict[str, Any] | None = None
    cancel_requested: bool = False

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ForgetRequestPublic:
        return cls(**{k: v for k, v in record.items() if k in cls.model_fields})


class ForgetRequestsPublic(BaseModel):
    data: list[ForgetRequestPublic]
    count: int
    next_cursor: str | None = None


class AuditEntry(BaseModel):
    seq: int
    at: str
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
    created_at: str
    unlearning: UnlearningInForce


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[Any] = Field(..., min_length=1,
                              description="Images as C×H×W nested lists of floats in [0, 1].")

    @field_validator("inputs")
    @classmethod
    def _no_booleans(cls, v: list[Any]) -> list[Any]:
        """`true`/`false` are not pixel values (numpy would read them as 1.0/0.0)."""
        stack: list[Any] = [v]
        while stack:
            item = stack.pop()
            if type(item) is bool:
                raise ValueError("inputs must be nested lists of numbers; true/false are not pixel values")
            if type(item) is list:
                types = set(map(type, item))
                if bool in types:
                    raise ValueError("inputs must be nested lists of numbers; true/false are not pixel values")
                if list in types:
                    stack.extend(x for x in item if type(x) is list)
        return v


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

    name: str = Field(..., min_length=1, max_length=64)
    source: str = Field(..., description=f"one of {list(SOURCES)}")
    root: str | None = Field(None, max_length=4096,
                             description="A directory on the server (not for builtin).")


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
    except json.JSONDecodeError as exc:
        raise InvalidModelError(f"metadata is not JSON: {exc}") from None
    try:
        return ModelMetadata.model_validate(obj)
    except ValidationError as exc:
        raise InvalidModelError(describe_errors(exc.errors(), limit=1, prefix="metadata")) from None
