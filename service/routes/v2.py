"""The Open Inference Protocol (KServe V2) over REST: health, model metadata and readiness, and inference with
JSON tensors or the binary tensor data extension (service.codecs decodes both), each also under
`/versions/{version}` for the versions the metadata lists. Errors are RFC 9457 problem documents that also carry
`error` (the detail), the member V2 clients read, as application/json."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from starlette.concurrency import run_in_threadpool

from service.codecs import V2_ENCODINGS, V2_INPUT, V2_OUTPUTS, parse_v2_request, v2_decompressed, v2_response
from service.deps import AnyRole, Inference, RuntimeDep, SettingsDep
from service.errors import Problem, problem_responses
from service.inference import InferenceRuntime, LoadedState
from service.schemas import ModelName
from unlearnd.settings import Settings

router = APIRouter(prefix="/v2", tags=["open inference protocol"])

EXTENSIONS = ["binary_tensor_data"]
ModelVersion = Annotated[str, Path(description="A version of the model, as its metadata lists them (`versions`).")]


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


def _versions(served: LoadedState) -> list[str]:
    """The versions of the model that are served: the one of its served state."""
    return [str(served.model_version)]


def _check_version(served: LoadedState, version: str | None) -> LoadedState:
    """`served`, unless `version` is given and not one of its versions: then a 404 problem naming those."""
    if version is not None and version not in _versions(served):
        raise Problem(404, "Not found", f"model {served.name!r} has no version {version!r}; its versions are "
                      f"{_versions(served)}")
    return served


def _metadata(served: LoadedState) -> dict[str, Any]:
    return {"name": served.name, "versions": _versions(served),
            "platform": f"pytorch_{served.model_format}",
            "inputs": [{"name": V2_INPUT, "datatype": "FP32", "shape": [-1, *served.input_shape]}],
            "outputs": [{"name": "probabilities", "datatype": V2_OUTPUTS["probabilities"],
                         "shape": [-1, served.num_classes]},
                        {"name": "label", "datatype": V2_OUTPUTS["label"], "shape": [-1]}]}


_VERSIONED = problem_responses(404, 503, descriptions={
    404: "No such model, or not one of the versions its metadata lists (the problem names those)"})


@router.get("/models/{model}", responses=problem_responses(503))
def model_metadata(model: ModelName, runtime: RuntimeDep, _: AnyRole) -> dict[str, Any]:
    """The served model version, its input (FP32 in [0, 1]; UINT8 0-255 is accepted too) and its outputs:
    class probabilities and the most probable class."""
    return _metadata(runtime.served(model))


@router.get("/models/{model}/versions/{version}", responses=_VERSIONED)
def model_version_metadata(model: ModelName, version: ModelVersion, runtime: RuntimeDep,
                           _: AnyRole) -> dict[str, Any]:
    """`GET /v2/models/{model}`, for one of the versions it lists; 404 for any other."""
    return _metadata(_check_version(runtime.served(model), version))


@router.get("/models/{model}/ready", responses=problem_responses(503))
def model_ready(model: ModelName, runtime: RuntimeDep, _: AnyRole) -> dict[str, Any]:
    """200 when the model's served state loads and verifies; 503 with the reason when it does not."""
    runtime.served(model)
    return {"name": model, "ready": True}


@router.get("/models/{model}/versions/{version}/ready", responses=_VERSIONED)
def model_version_ready(model: ModelName, version: ModelVersion, runtime: RuntimeDep, _: AnyRole) -> dict[str, Any]:
    """`GET /v2/models/{model}/ready`, for one of the versions the model's metadata lists; 404 for any other."""
    _check_version(runtime.served(model), version)
    return {"name": model, "ready": True}


_HEADER_LENGTH = "Inference-Header-Content-Length"
_BODY = {"parameters": [{"name": _HEADER_LENGTH, "in": "header", "required": False, "description": (
    "Binary tensor data extension: the body is this many bytes of JSON inference request, then the inputs' raw "
    "bytes (0, a body of tensor bytes only, is not supported)"),
    "schema": {"type": "integer", "minimum": 1, "maximum": 2**40}}],
         "requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/V2InferenceRequest"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary", "description": (
        "Binary tensor data extension: Inference-Header-Content-Length bytes of JSON inference request, then the "
        "input's raw little-endian bytes (its parameters.binary_data_size)")}},
}}}
_ANSWER: dict[int | str, Any] = {200: {
    "description": "Inference response: JSON, or (when an output is asked for with binary_data) its JSON header "
                   "followed by raw little-endian tensor bytes",
    "content": {"application/json": {"schema": {"type": "object"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


_INFER_PROBLEMS = problem_responses(413, 415, 422, 503, descriptions={
    413: "Body too large (also once decompressed), or more images than UNLEARND_MAX_PREDICT_BATCH",
    415: f"A Content-Encoding other than identity, {' or '.join(V2_ENCODINGS)}",
    422: "Not a valid inference request for this model (input name, datatype, shape, sizes, values)"})


@router.post("/models/{model}/infer", openapi_extra=_BODY, response_class=Response,
             responses={**_ANSWER, **_INFER_PROBLEMS})
async def infer(model: ModelName, request: Request, runtime: RuntimeDep, settings: SettingsDep,
                _: Inference) -> Response:
    """Class probabilities and labels with every forget vector in force applied. One input, `input`: shape
    [N, C, H, W], datatype FP32 (in [0, 1]) or UINT8 (divided by 255), as JSON `data` or binary tensor data.
    Outputs `probabilities` (FP32 [N, classes]) and `label` (INT64 [N]), JSON unless asked for as binary
    (`binary_data` per output, or `binary_data_output` for all). Concurrent calls are computed together, in one
    forward pass per batch. The body may be compressed (`Content-Encoding: gzip` or `deflate`)."""
    return await _infer(model, None, request, runtime, settings)


@router.post("/models/{model}/versions/{version}/infer", openapi_extra=_BODY, response_class=Response,
             responses={**_ANSWER, **_INFER_PROBLEMS, **_VERSIONED})
async def infer_version(model: ModelName, version: ModelVersion, request: Request, runtime: RuntimeDep,
                        settings: SettingsDep, _: Inference) -> Response:
    """`POST /v2/models/{model}/infer`, for one of the versions the model's metadata lists; 404 for any other."""
    return await _infer(model, version, request, runtime, settings)


async def _infer(model: str, version: str | None, request: Request, runtime: InferenceRuntime,
                 settings: Settings) -> Response:
    """What both infer routes answer; `version` None when the path names none."""
    header_length = request.headers.get(_HEADER_LENGTH)
    if header_length is not None and not (header_length.isascii() and header_length.isdigit()
                                          and len(header_length) <= 13):
        raise Problem(422, "Invalid inference request", f"{_HEADER_LENGTH} must be a number of bytes")
    served = _check_version(await runtime.snapshot(model), version)
    body, encoding = await request.body(), request.headers.get("content-encoding")
    if encoding is not None:  # inflating up to the body limit takes a while: not on the event loop
        body = await run_in_threadpool(v2_decompressed, body, encoding, settings.max_body_bytes)
    parsed, x = parse_v2_request(body, None if header_length is None else int(header_length),
                                 model, served.input_shape, settings.max_predict_batch)
    served, probabilities = await runtime.predict(model, x)
    _check_version(served, version)  # the state served meanwhile may be another version's
    content, headers = v2_response(parsed, probabilities, {
        "model_name": model, "model_version": str(served.model_version),
        "parameters": {"state_version": served.state_version, "weights_sha256": served.weights_sha256,
                       "applied": ",".join(served.artifacts)}})
    return Response(content, headers=headers)
