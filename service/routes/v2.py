"""The Open Inference Protocol (KServe V2) over REST: health, model metadata and readiness, and inference with
JSON tensors or the binary tensor data extension (service.codecs decodes both). Errors are RFC 9457 problem
documents that also carry `error` (the detail), the member V2 clients read, as application/json."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from service.codecs import V2_INPUT, V2_OUTPUTS, parse_v2_request, v2_response
from service.deps import AnyRole, Inference, RuntimeDep, SettingsDep
from service.errors import Problem, problem_responses
from service.inference import LoadedState
from service.schemas import ModelName

router = APIRouter(prefix="/v2", tags=["open inference protocol"])

EXTENSIONS = ["binary_tensor_data"]


@router.get("/health/live")
async def live() -> dict[str, bool]:
    """The process is up."""
    return {"live": True}


@router.get("/health/ready")
async def ready() -> dict[str, bool]:
    """The process can take inference requests (models load on their first; `/v2/models/{model}/ready` says
    whether one verifies)."""
    return {"ready": True}


@router.get("")
async def server_metadata(_: AnyRole) -> dict[str, Any]:
    """Server name, version and protocol extensions."""
    return {"name": "unlearnd", "version": "0.1.0", "extensions": EXTENSIONS}


def _metadata(served: LoadedState) -> dict[str, Any]:
    return {"name": served.name, "versions": [str(served.model_version)],
            "platform": f"pytorch_{served.model_format}",
            "inputs": [{"name": V2_INPUT, "datatype": "FP32", "shape": [-1, *served.input_shape]}],
            "outputs": [{"name": "probabilities", "datatype": V2_OUTPUTS["probabilities"],
                         "shape": [-1, served.num_classes]},
                        {"name": "label", "datatype": V2_OUTPUTS["label"], "shape": [-1]}]}


@router.get("/models/{model}", responses=problem_responses(503))
def model_metadata(model: ModelName, runtime: RuntimeDep, _: AnyRole) -> dict[str, Any]:
    """The served model version, its input (FP32 in [0, 1]; UINT8 0-255 is accepted too) and its outputs:
    class probabilities and the most probable class."""
    return _metadata(runtime.served(model))


@router.get("/models/{model}/ready", responses=problem_responses(503))
def model_ready(model: ModelName, runtime: RuntimeDep, _: AnyRole) -> dict[str, Any]:
    """200 when the model's served state loads and verifies; 503 with the reason when it does not."""
    runtime.served(model)
    return {"name": model, "ready": True}


_HEADER_LENGTH = "Inference-Header-Content-Length"
_BODY = {"parameters": [{"name": _HEADER_LENGTH, "in": "header", "required": False, "description": (
    "Binary tensor data extension: the body is this many bytes of JSON inference request, then the inputs' raw "
    "bytes"), "schema": {"type": "integer", "minimum": 0, "maximum": 2**40}}],
         "requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/V2InferenceRequest"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary", "description": (
        "Binary tensor data extension: Inference-Header-Content-Length bytes of JSON inference request, then the "
        "input's raw little-endian bytes (its parameters.binary_data_size)")}},
}}}
_ANSWER = {200: {"description": "Inference response: JSON, or (when an output is asked for with binary_data) "
                                "its JSON header followed by raw little-endian tensor bytes",
                 "content": {"application/json": {"schema": {"type": "object"}},
                             "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


@router.post("/models/{model}/infer", openapi_extra=_BODY, response_class=Response, responses={
    **_ANSWER, **problem_responses(413, 422, 503, descriptions={
        413: "Body too large, or more images than UNLEARND_MAX_PREDICT_BATCH",
        422: "Not a valid inference request for this model (input name, datatype, shape, sizes, values)"})})
async def infer(model: ModelName, request: Request, runtime: RuntimeDep, settings: SettingsDep,
                _: Inference) -> Response:
    """Class probabilities and labels with every forget vector in force applied. One input, `input`: shape
    [N, C, H, W], datatype FP32 (in [0, 1]) or UINT8 (divided by 255), as JSON `data` or binary tensor data.
    Outputs `probabilities` (FP32 [N, classes]) and `label` (INT64 [N]), JSON unless asked for as binary
    (`binary_data` per output, or `binary_data_output` for all). Concurrent calls are computed together, in one
    forward pass per batch."""
    header_length = request.headers.get(_HEADER_LENGTH)
    if header_length is not None and not (header_length.isascii() and header_length.isdigit()
                                          and len(header_length) <= 13):
        raise Problem(422, "Invalid inference request", f"{_HEADER_LENGTH} must be a number of bytes")
    served = await runtime.snapshot(model)
    parsed, x = parse_v2_request(await request.body(), None if header_length is None else int(header_length),
                                 model, served.input_shape, settings.max_predict_batch)
    served, probabilities = await runtime.predict(model, x)
    content, headers = v2_response(parsed, probabilities, {
        "model_name": model, "model_version": str(served.model_version),
        "parameters": {"state_version": served.state_version, "weights_sha256": served.weights_sha256,
                       "applied": ",".join(served.artifacts)}})
    return Response(content, headers=headers)
