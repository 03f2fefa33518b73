"""Request and response bodies of the public API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workers.methods import REQUESTABLE

Method = Literal[REQUESTABLE]  # type: ignore[valid-type]  # names from the one method registry
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class ForgetRequestCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    classes: list[int] | None = Field(None, min_length=1, max_length=10_000, description="Class indices to forget.")
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
    status: Status
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

    inputs: list[Any] = Field(..., min_length=1, description="Images as C×H×W nested lists of floats in [0, 1].")


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
