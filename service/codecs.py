"""Request bodies into image batches, and batches of results into Open Inference Protocol (V2) answers.

Every decoder returns (N, C, H, W) float32 pixels in [0, 1] for the model's input shape [C, H, W], or raises a
4xx `Problem` saying what is wrong:
- JSON `{"inputs": [...]}`: C×H×W nested lists of floats in [0, 1];
- PNG or JPEG (`image/png`, `image/jpeg`, alone or as the file parts of `multipart/form-data`), decoded with
  Pillow (or libspng, for a PNG that needs no conversion: `_png_as_is`): EXIF orientation applied, converted to
  greyscale (C = 1) or RGB (C = 3; an alpha channel is dropped, 16-bit greyscale keeps its high byte), resized
  to H×W with bilinear interpolation when its size differs (the aspect ratio is not kept), pixels divided by 255.
  An image over MAX_IMAGE_PIXELS pixels is refused before it is decoded;
- V2 tensors (JSON `data` or the binary tensor data extension): FP32 in [0, 1], or UINT8 divided by 255.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyspng
from fastapi import Request
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.errors import Problem, describe_errors
from service.schemas import PredictRequest

MAX_IMAGE_PIXELS = 4096 * 4096
"""Most pixels (width × height) of one uploaded image: larger ones are refused with 413 before decoding, so a
small file that would decode to gigabytes (a decompression bomb) costs nothing."""
IMAGE_TYPES = ("image/png", "image/jpeg")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPES = {"L": 0, "RGB": 2}
"""Pillow mode -> PNG colour type (IHDR) of its 8-bit pixels: greyscale, truecolour."""
PNG_PLAIN_CHUNKS: dict[bytes, int | None] = {b"IHDR": 13, b"IDAT": None, b"IEND": 0, b"gAMA": 4, b"sRGB": 1,
                                             b"pHYs": 9}
"""Chunk type -> its length (None: any) in a PNG that libspng may decode: the image and ancillary chunks neither
decoder applies to the pixels. Any other chunk (text, EXIF and XMP, which can rotate the image; APNG frames; a
palette) sends the file to Pillow."""
PREDICT_TYPES = ("application/json", *IMAGE_TYPES, "multipart/form-data")

V2_INPUT = "input"
V2_DATATYPES = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}
"""Input datatypes of the V2 endpoint, with their wire formats (little-endian)."""
V2_OUTPUTS = {"probabilities": "FP32", "label": "INT64"}
"""Output name -> datatype: class probabilities [N, classes] and the most probable class [N]."""
V2_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""Content-Encoding of a V2 inference request -> zlib's `wbits`: gzip, and deflate (the zlib format, RFC 9110)."""


def media_type(content_type: str | None) -> str:
    """'image/png' from 'Image/PNG; charset=...'; '' when there is none."""
    return (content_type or "").split(";", 1)[0].strip().lower()


# ---- checks shared by every input form ---------------------------------------------------------------------
def check_images(x: np.ndarray, input_shape: Sequence[int], max_batch: int) -> np.ndarray:
    """`x` when it is (N, C, H, W) float32 pixels in [0, 1] for this input shape, with 1 <= N <= max_batch;
    otherwise a 413 (too many) or 422 problem."""
    if x.ndim == 0:
        raise Problem(422, "Invalid inputs", f"inputs are one number; expected [N, {', '.join(map(str, input_shape))}]")
    expected = (len(x), *input_shape)
    if x.shape != expected or len(x) == 0:  # before the batch limit: a wrong shape is the problem to report
        raise Problem(422, "Invalid inputs", f"inputs have shape {list(x.shape)}; expected "
                      f"[N, {', '.join(map(str, input_shape))}] with N >= 1")
    if len(x) > max_batch:
        raise Problem(413, "Too many inputs", f"{len(x)} images; at most {max_batch} per call "
                      "(UNLEARND_MAX_PREDICT_BATCH)")
    low, high = float(x.min()), float(x.max())
    if not (low >= 0.0 and high <= 1.0):  # also false for NaN
        if not np.isfinite(x).all():
            raise Problem(422, "Invalid inputs", "inputs contain NaN or infinite values")
        raise Problem(422, "Invalid inputs", f"pixel values must lie in [0, 1]; got [{low:g}, {high:g}]")
    return x


def from_uint8(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels as float32 in [0, 1] (divided by 255, as registered datasets are)."""
    return np.divide(pixels, np.float32(255.0), dtype=np.float32)


# ---- /v1/models/{model}/predict ----------------------------------------------------------------------------
async def predict_inputs(request: Request, input_shape: Sequence[int], max_batch: int) -> np.ndarray:
    """The images of a predict call, by its Content-Type (JSON when it has none)."""
    media = media_type(request.headers.get("content-type"))
    if media in ("", "application/json"):
        return images_from_json(await request.body(), input_shape, max_batch)
    if media in IMAGE_TYPES:
        return from_uint8(decode_image(await request.body(), input_shape)[None])
    if media == "multipart/form-data":
        images = multipart_images(await request.body(), request.headers["content-type"], max_batch)
        return from_uint8(np.stack([decode_image(image, input_shape) for image in images]))
    raise Problem(415, "Unsupported Media Type", f"send {', '.join(PREDICT_TYPES)}; not {media}")


def images_from_json(raw: bytes, input_shape: Sequence[int], max_batch: int) -> np.ndarray:
    try:
        inputs = PredictRequest.model_validate_json(raw).inputs
    except ValidationError as exc:
        raise Problem(422, "Invalid request", describe_errors(exc.errors(), prefix="body")) from None
    if b"true" in raw or b"false" in raw:  # only then can the lists hold a JSON boolean: look for it (slow)
        _reject_booleans(inputs)
    if len(inputs) > max_batch:  # before converting what will be refused anyway
        raise Problem(413, "Too many inputs", f"{len(inputs)} images; at most {max_batch} per call "
                      "(UNLEARND_MAX_PREDICT_BATCH)")
    try:
        x = np.asarray(inputs, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):  # OverflowError: an integer beyond any float (10**400)
        raise Problem(422, "Invalid inputs", "inputs must be equally shaped nested lists of numbers") from None
    return check_images(x, input_shape, max_batch)


def _reject_booleans(inputs: list[Any]) -> None:
    """`true`/`false` are not pixel values (numpy would read them as 1.0/0.0): a 422 when nested lists hold one."""
    stack: list[Any] = [inputs]
    while stack:
        item = stack.pop()
        if type(item) is bool:
            raise Problem(422, "Invalid inputs", "inputs must be nested lists of numbers; true/false are not "
                          "pixel values")
        if type(item) is list:
            stack.extend(item)


_PLAIN_FILE_PART = re.compile(rb'form-data; name="[^"\\]*"; filename="[^"\\]*"')
"""A file part's Content-Disposition as httpx, requests and curl write it. Such a part needs no call to
`parse_options_header`, which takes a third of the time python-multipart needs for a body of small images."""


class _ImageParts:
    """Callbacks for python-multipart's streaming parser that keep each part's bytes in memory (Starlette's
    `request.form()` would spool every file part through a temporary file), checking each part as it ends and
    stopping at the first part over `max_parts`, so a body of many tiny parts costs no more than `max_parts`."""

    def __init__(self, max_parts: int) -> None:
        self.max_parts = max_parts
        self.images: list[bytes] = []
        self.closed = False  # the closing boundary was read
        self._headers: dict[bytes, bytes] = {}
        self._field = self._value = b""
        self._chunks: list[bytes] = []

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {"on_part_begin": self._begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_part_data": self._data, "on_part_end": self._end, "on_end": self._close}

    def _begin(self) -> None:
        if len(self.images) == self.max_parts:
            raise Problem(413, "Too many inputs", f"more than {self.max_parts} parts; at most {self.max_parts} "
                          "images per call (UNLEARND_MAX_PREDICT_BATCH)")
        self._headers, self._chunks = {}, []

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        name = self._field.lower()
        if name in self._headers:  # which one counts would be a guess: two parsers could read two different images
            raise Problem(422, "Invalid multipart body", f"a part repeats its {name.decode('latin-1')} header")
        self._headers[name] = self._value
        self._field = self._value = b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        self._chunks.append(data[start:end])

    def _end(self) -> None:
        disposition = self._headers.get(b"content-disposition")
        if disposition is None:
            raise Problem(422, "Invalid multipart body", "a part has no Content-Disposition: send each image as a "
                          "file part (Content-Disposition: form-data with a filename)")
        if _PLAIN_FILE_PART.fullmatch(disposition) is None:
            kind, options = _parse_header(disposition)
            if kind != b"form-data":  # RFC 7578, section 4.2
                raise Problem(422, "Invalid multipart body", f"a part's Content-Disposition is "
                              f"{kind.decode('latin-1')!r}; each part of multipart/form-data must be 'form-data'")
            if b"filename" not in options:
                raise Problem(422, "Invalid multipart body", f"part {self._name()!r} is not a file: send each image "
                              "as a file part (Content-Disposition with a filename)")
        part_type = self._headers.get(b"content-type", b"").decode("latin-1")
        if media_type(part_type) not in IMAGE_TYPES:
            raise Problem(415, "Unsupported Media Type", f"part {self._name()!r} is {part_type!r}; each part must be "
                          f"one of {', '.join(IMAGE_TYPES)}")
        self.images.append(b"".join(self._chunks))

    def _name(self) -> str:
        """The part's form field name, for messages."""
        _, options = _parse_header(self._headers.get(b"content-disposition"))
        return options.get(b"name", b"").decode("utf-8", "replace")

    def _close(self) -> None:
        self.closed = True


def _parse_header(value: bytes | str | None) -> tuple[bytes, dict[bytes, bytes]]:
    """A header value's lower-case type (`form-data`, ...) and parameters (`boundary`, `name`, `filename`, ...); a
    422 when they do not parse."""
    try:
        return parse_options_header(value)
    except (ValueError, TypeError) as exc:  # e.g. a Content-Type with characters outside latin-1
        raise Problem(422, "Invalid multipart body", f"a header's parameters do not parse: {exc}") from None


def multipart_images(body: bytes, content_type: str, max_batch: int) -> list[bytes]:
    """The bytes of every part of a multipart/form-data body, in order: each must be a file part (a
    Content-Disposition with a filename) of type image/png or image/jpeg, and at most `max_batch` of them."""
    boundary = _parse_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise Problem(422, "Invalid multipart body", "the Content-Type names no boundary")
    parts = _ImageParts(max_batch)
    try:
        parser = MultipartParser(boundary, parts.callbacks())
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:  # a malformed body (MultipartParseError and the parser's limits)
        raise Problem(422, "Invalid multipart body", str(exc)) from None
    if not parts.closed:
        raise Problem(422, "Invalid multipart body", "the body ends before the closing boundary")
    if not parts.images:
        raise Problem(422, "Invalid multipart body", "no image part")
    return parts.images


def decode_image(data: bytes, input_shape: Sequence[int]) -> np.ndarray:
    """One PNG or JPEG as (C, H, W) uint8 for the model's [C, H, W] (the module's rule)."""
    channels, height, width = input_shape
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise Problem(415, "Unsupported Media Type", f"images feed models with 1 or 3 input channels; this one "
                      f"takes {channels}: send the inputs as JSON or V2 tensors")
    as_is = _png_as_is(data, mode, width, height)
    if as_is is not None:
        return as_is.reshape(height, width, channels).transpose(2, 0, 1)
    try:
        with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise Problem(413, "Image too large", f"{image.width}×{image.height} pixels; at most "
                              f"{MAX_IMAGE_PIXELS} per image")
            image.draft(mode, (width, height))  # JPEG: decode at 1/2, 1/4 or 1/8 scale when still >= H×W
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            converted = _converted(image, mode)
            if converted.size != (width, height):
                converted = converted.resize((width, height), Image.Resampling.BILINEAR)
            # tobytes is row-major H×W×C (for L and RGB) and, for small images, cheaper than np.asarray
            pixels = np.frombuffer(converted.tobytes(), dtype=np.uint8).reshape(height, width, channels)
    except Problem:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Problem(413, "Image too large", str(exc)) from None
    except UnidentifiedImageError:
        raise Problem(422, "Invalid image", "not a PNG or JPEG image") from None
    except Exception as exc:  # Pillow reports a malformed file in many ways (OSError, SyntaxError, ValueError...)
        raise Problem(422, "Invalid image", f"not a PNG or JPEG image that decodes: {exc}") from None
    return pixels.transpose(2, 0, 1)


def _png_as_is(data: bytes, mode: str, width: int, height: int) -> np.ndarray | None:
    """(H, W) or (H, W, C) uint8 pixels of a PNG that Pillow would hand over unchanged, decoded with libspng: 5-10×
    faster than Pillow on small images. That is a PNG of 8-bit greyscale or RGB as `mode`, H×W, holding only
    PNG_PLAIN_CHUNKS, IHDR first and IEND last, each with a valid CRC (libspng, as pyspng sets it up, checks none).
    None for any other file, and for one libspng refuses: Pillow decodes those, or says what is wrong with them.
    One difference stays: libspng does not check the zlib stream's Adler-32, so a file whose every CRC is valid but
    whose Adler-32 is not (made so on purpose: corruption breaks a CRC) decodes here, where Pillow refuses it."""
    if width * height > MAX_IMAGE_PIXELS or not data.startswith(PNG_SIGNATURE):
        return None
    offset = len(PNG_SIGNATURE)
    while True:
        if offset + 12 > len(data):
            return None  # cut off before IEND
        length, kind = struct.unpack_from(">I4s", data, offset)
        end = offset + 12 + length
        expected = PNG_PLAIN_CHUNKS.get(kind, -1)
        if end > len(data) or (expected is not None and expected != length):
            return None
        if (kind == b"IHDR") != (offset == len(PNG_SIGNATURE)):
            return None  # IHDR is the first chunk, and only the first
        if zlib.crc32(memoryview(data)[offset + 4:end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            return None
        if kind == b"IHDR" and struct.unpack_from(">IIBB", data, offset + 8) != (width, height, 8,
                                                                                PNG_COLOUR_TYPES[mode]):
            return None  # IHDR: width, height, bit depth, colour type
        if kind == b"IEND":
            break
        offset = end
    try:
        return pyspng.load(data)
    except Exception:  # malformed: let Pillow's message say why
        return None


def _converted(image: Image.Image, mode: str) -> Image.Image:
    if image.mode.startswith("I"):  # 16-bit (or 32-bit integer) greyscale: keep the high byte of 16 bits
        high = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        image = Image.fromarray(high, mode="L")
    return image if image.mode == mode else image.convert(mode)


# ---- the Open Inference Protocol (V2) ----------------------------------------------------------------------
class V2Tensor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[StrictInt] = Field(..., max_length=8)
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: list[Any] | None = None


class V2RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class V2InferenceRequest(BaseModel):
    """The JSON of `POST /v2/models/{model}/infer` (the inference header when binary data follows)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    model_name: str | None = Field(None, description="Not in the protocol, but KServe's Python client sends it: "
                                   "when given, the model of the path.")
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[V2Tensor] = Field(..., min_length=1, max_length=16)
    outputs: list[V2RequestedOutput] | None = Field(None, max_length=16)


def _bad(detail: str) -> Problem:
    return Problem(422, "Invalid inference request", detail)


def v2_decompressed(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """`body` decoded from its Content-Encoding (identity, gzip or deflate), never beyond `max_bytes`: a 413 problem
    when it would decompress to more, a 415 for another encoding, a 422 for a stream that does not decode."""
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        return body
    if coding not in V2_ENCODINGS:
        raise Problem(415, "Unsupported Media Type", f"Content-Encoding {encoding!r} is not supported; send the "
                      f"body as is (identity) or compressed with {' or '.join(V2_ENCODINGS)}")
    inflater = zlib.decompressobj(V2_ENCODINGS[coding])
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise _bad(f"the body is not valid {coding} data: {exc}") from None
    if len(data) > max_bytes:
        raise Problem(413, "Request body too large", f"the body decompresses to more than {max_bytes} bytes "
                      "(UNLEARND_MAX_BODY_BYTES)")
    if not inflater.eof or inflater.unused_data:
        raise _bad(f"the body is not one complete {coding} stream")
    return data


def parse_v2_request(body: bytes, header_length: int | None, model: str, input_shape: Sequence[int],
                     max_batch: int) -> tuple[V2InferenceRequest, np.ndarray]:
    """The request to `model` and its images. With `header_length` (Inference-Header-Content-Length), the body is
    that many bytes of JSON followed by the binary tensor data of every input that names its `binary_data_size`."""
    if header_length == 0:
        raise _bad("Inference-Header-Content-Length is 0: a body of only tensor bytes, without a JSON inference "
                   "header, is not supported; send the JSON inference header first and its length in bytes")
    if header_length is not None and header_length > len(body):
        raise _bad(f"Inference-Header-Content-Length is {header_length}; the body has {len(body)} bytes")
    header = body if header_length is None else body[:header_length]
    binary = memoryview(body)[len(header):]
    try:
        request = V2InferenceRequest.model_validate_json(header)
    except ValidationError as exc:
        raise _bad(describe_errors(exc.errors(), prefix="body")) from None
    if request.model_name is not None and request.model_name != model:
        raise _bad(f"the request names model {request.model_name!r}, the path {model!r}")
    if len(request.inputs) != 1 or request.inputs[0].name != V2_INPUT:
        names = [tensor.name for tensor in request.inputs]
        raise _bad(f"this model takes one input, {V2_INPUT!r}; got {names}")
    _check_outputs(request)
    tensor = request.inputs[0]
    size = tensor.parameters.get("binary_data_size")
    if size is None:
        if len(binary):
            raise _bad(f"{len(binary)} bytes follow the inference header, but no input names a binary_data_size")
        pixels = _json_tensor(tensor)
    else:
        if type(size) is not int or size != len(binary):
            raise _bad(f"binary_data_size is {size!r}; {len(binary)} bytes follow the inference header")
        pixels = _binary_tensor(tensor, binary)
    x = from_uint8(pixels) if pixels.dtype == np.uint8 else np.array(pixels, dtype=np.float32)
    return request, check_images(x, input_shape, max_batch)


def _check_outputs(request: V2InferenceRequest) -> None:
    """Each output asked for is known, asked for once, and says `binary_data` (or, for the request,
    `binary_data_output`) as a JSON boolean, if at all."""
    _check_boolean(request.parameters, "binary_data_output", "the request's")
    names: set[str] = set()
    for output in request.outputs or ():
        if output.name not in V2_OUTPUTS:
            raise _bad(f"unknown output {output.name!r}; outputs are {list(V2_OUTPUTS)}")
        if output.name in names:
            raise _bad(f"output {output.name!r} is asked for twice")
        names.add(output.name)
        if "classification" in output.parameters:
            raise _bad("the classification extension is not supported: ask for the 'label' output")
        _check_boolean(output.parameters, "binary_data", f"output {output.name!r}:")


def _check_boolean(parameters: dict[str, Any], name: str, whose: str) -> None:
    value = parameters.get(name, False)
    if type(value) is not bool:
        raise _bad(f"{whose} {name} must be true or false; got {json.dumps(value)}")


def _element_count(tensor: V2Tensor) -> int:
    if any(dim < 0 for dim in tensor.shape):
        raise _bad(f"shape {tensor.shape} has a negative dimension")
    return math.prod(tensor.shape)


def _datatype(tensor: V2Tensor) -> np.dtype:
    dtype = V2_DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise _bad(f"datatype {tensor.datatype!r}; send {' or '.join(V2_DATATYPES)}")
    return dtype


def _binary_tensor(tensor: V2Tensor, binary: memoryview) -> np.ndarray:
    dtype = _datatype(tensor)
    if tensor.data is not None:
        raise _bad("an input carries either `data` or a binary_data_size, not both")
    count = _element_count(tensor)
    if count * dtype.itemsize != len(binary):
        raise _bad(f"shape {tensor.shape} of {tensor.datatype} needs {count * dtype.itemsize} bytes; "
                   f"binary_data_size is {len(binary)}")
    return np.frombuffer(binary, dtype=dtype).reshape(tensor.shape)


def _json_tensor(tensor: V2Tensor) -> np.ndarray:
    dtype = _datatype(tensor)
    if tensor.data is None:
        raise _bad("the input has neither `data` nor a binary_data_size")
    leaves = _leaf_types(tensor.data)
    for kind, why in _NOT_NUMBERS.items():  # numpy would read each as a number, or as NaN
        if kind in leaves:
            raise _bad(f"data must be numbers; {why}")
    try:
        values = np.asarray(tensor.data, dtype=np.float64 if dtype == np.float32 else None)
    except (ValueError, TypeError, OverflowError):  # OverflowError: an integer beyond any float (10**400)
        raise _bad("data must be numbers, as a flat list or nested lists of equal lengths") from None
    count = _element_count(tensor)
    if values.size != count:
        raise _bad(f"data has {values.size} values; shape {tensor.shape} needs {count}")
    if dtype == np.uint8 and values.size and (values.dtype.kind not in "iu"
                                              or not 0 <= values.min() <= values.max() <= 255):
        raise _bad("UINT8 data must be integers from 0 to 255")
    return values.astype(dtype).reshape(tensor.shape)


_NOT_NUMBERS = {bool: "true/false are not pixel values", type(None): "null is not a number",
                str: "strings are not numbers"}
"""JSON values in `data` that are no pixel values -> why, for the message."""


def _leaf_types(data: list[Any]) -> set[type]:
    """The types of every value in nested lists `data`, lists aside."""
    types: set[type] = set()
    stack = [data]
    while stack:
        items = stack.pop()
        kinds = set(map(type, items))
        types |= kinds - {list}
        if list in kinds:
            stack.extend(item for item in items if type(item) is list)
    return types


def v2_response(request: V2InferenceRequest, probabilities: np.ndarray, header: dict[str, Any]) -> \
        tuple[bytes, dict[str, str]]:
    """Body and headers of the answer: `header` (model_name, model_version, parameters) with the outputs asked
    for (all by default), each as JSON `data` or, when asked (`binary_data`, or `binary_data_output` for every
    output), as raw little-endian bytes after the JSON (Inference-Header-Content-Length)."""
    tensors = {"probabilities": probabilities.astype("<f4", copy=False),
               "label": probabilities.argmax(axis=1).astype("<i8")}
    every_binary = request.parameters.get("binary_data_output") is True
    wanted = request.outputs or [V2RequestedOutput(name=name) for name in V2_OUTPUTS]
    outputs, chunks = [], []
    for output in wanted:
        array = tensors[output.name]
        described: dict[str, Any] = {"name": output.name, "datatype": V2_OUTPUTS[output.name],
                                     "shape": list(array.shape)}
        if output.parameters.get("binary_data", every_binary) is True:
            raw = array.tobytes()
            described["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            described["data"] = array.ravel().tolist()
        outputs.append(described)
    answer = {**header, **({"id": request.id} if request.id is not None else {}), "outputs": outputs}
    text = json.dumps(answer, separators=(",", ":")).encode()
    if not chunks:
        return text, {"Content-Type": "application/json"}
    return b"".join([text, *chunks]), {"Content-Type": "application/octet-stream",
                                       "Inference-Header-Content-Length": str(len(text))}
