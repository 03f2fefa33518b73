"""Image uploads to /v1/models/{model}/predict: a PNG or JPEG body, or several in multipart/form-data, decoded into
the model's input (channels converted, resized); malformed, oversized or mistyped uploads are 4xx problems."""

import io
import struct
import zlib

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.main import create_app
from tests.service.conftest import auth

PREDICT = "/v1/models/tiny/predict"  # model `tiny` takes 1×8×8


def encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def grey(seed: int, size: tuple[int, int] = (8, 8)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    return Image.fromarray(pixels, mode="L")


def as_json_probabilities(client, images: list[Image.Image]) -> list[list[float]]:
    """What /v1 predict answers for these (already 8×8 greyscale) images sent as JSON pixels / 255."""
    x = [(np.asarray(image, dtype=np.float32) / 255)[None].tolist() for image in images]
    response = client.post(PREDICT, json={"inputs": x}, headers=auth("inference"))
    assert response.status_code == 200, response.text
    return [p["probabilities"] for p in response.json()["predictions"]]


def post_image(client, data: bytes, content_type: str):
    return client.post(PREDICT, content=data, headers={**auth("inference"), "Content-Type": content_type})


def probabilities(response) -> list[list[float]]:
    assert response.status_code == 200, response.text
    return [p["probabilities"] for p in response.json()["predictions"]]


def assert_problem(response, status: int, needle: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert needle in response.json()["detail"], response.json()


def test_a_png_body_predicts_as_its_pixels_over_255(client, model_store):
    image = grey(0)
    assert probabilities(post_image(client, encoded(image, "PNG"), "image/png")) == \
        as_json_probabilities(client, [image])


def test_a_jpeg_body_predicts_as_its_decoded_pixels(client, model_store):
    data = encoded(grey(1), "JPEG")
    decoded = Image.open(io.BytesIO(data))  # lossy: compare with what the JPEG decodes to
    assert probabilities(post_image(client, data, "image/jpeg; charset=binary")) == \
        as_json_probabilities(client, [decoded])


def test_colour_and_other_sizes_are_converted_and_resized(client, model_store):
    rgba = Image.fromarray(np.random.default_rng(2).integers(0, 256, (20, 12, 4), dtype=np.uint8), mode="RGBA")
    expected = rgba.convert("L").resize((8, 8), Image.Resampling.BILINEAR)
    assert probabilities(post_image(client, encoded(rgba, "PNG"), "image/png")) == \
        as_json_probabilities(client, [expected])


def test_sixteen_bit_greyscale_keeps_its_high_byte(client, model_store):
    high = np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint16)
    image = Image.frombytes("I;16", (8, 8), (high * 256 + 17).astype("<u2").tobytes())
    assert probabilities(post_image(client, encoded(image, "PNG"), "image/png")) == \
        as_json_probabilities(client, [Image.fromarray(high.astype(np.uint8), mode="L")])


def test_multipart_predicts_every_image_in_order(client, model_store):
    first, second, third = grey(4), grey(5), grey(6, size=(16, 16))
    jpeg = encoded(second, "JPEG")
    files = [("images", ("a.png", encoded(first, "PNG"), "image/png")),
             ("images", ("b.jpg", jpeg, "image/jpeg")),
             ("more", ("c.png", encoded(third, "PNG"), "image/png"))]
    response = client.post(PREDICT, files=files, headers=auth("inference"))
    expected = as_json_probabilities(client, [first, Image.open(io.BytesIO(jpeg)),
                                              third.resize((8, 8), Image.Resampling.BILINEAR)])
    assert probabilities(response) == expected


def test_json_predictions_still_work(client, model_store):
    response = client.post(PREDICT, json={"inputs": [[[[0.25] * 8] * 8]]}, headers=auth("inference"))
    assert response.status_code == 200 and len(response.json()["predictions"][0]["probabilities"]) == 10


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height greyscale pixels, with one tiny compressed row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 9)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize(("data", "content_type", "status", "needle"), [
    (b"\x89PNG\r\n\x1a\n not really", "image/png", 422, "not a PNG or JPEG"),
    (b"GIF89a" + b"\x00" * 32, "image/png", 422, "not a PNG or JPEG"),
    (None, "image/png", 422, "decodes"),  # truncated: the first half of a real PNG
    (_png_claiming(5000, 5000), "image/png", 413, "5000×5000"),  # under Pillow's own bomb limit, over ours
    (_png_claiming(100_000, 100_000), "image/png", 413, "pixels"),  # over Pillow's: refused while opening
    (b"BM" + b"\x00" * 64, "image/bmp", 415, "image/png"),
    (b"hello", "text/plain", 415, "text/plain"),
])
def test_bad_uploads_are_4xx_problems(client, model_store, data, content_type, status, needle):
    if data is None:
        whole = encoded(grey(7, size=(64, 64)), "PNG")
        data = whole[:len(whole) // 2]
    assert_problem(post_image(client, data, content_type), status, needle)


def test_a_5000_square_png_is_refused_before_decoding(client, model_store):
    bomb = encoded(Image.new("L", (5000, 5000)), "PNG")  # 25 MB of pixels in a few kB of file
    assert len(bomb) < 100_000
    assert_problem(post_image(client, bomb, "image/png"), 413, "at most 16777216")


@pytest.mark.parametrize(("files", "data", "status", "needle"), [
    ([("images", ("a.txt", b"hello", "text/plain"))], None, 415, "text/plain"),
    ([("images", ("a.png", b"not a png", "image/png"))], None, 422, "not a PNG or JPEG"),
    ([("images", ("a.png", encoded(grey(9), "PNG"), "image/png"))], {"note": "a field, not a file"}, 422,
     "'note' is not a file"),
])
def test_bad_multipart_parts_are_4xx_problems(client, model_store, files, data, status, needle):
    response = client.post(PREDICT, files=files, data=data, headers=auth("inference"))
    assert_problem(response, status, needle)


def test_a_multipart_body_without_parts_or_boundary_is_422(client, model_store):
    headers = {**auth("inference"), "Content-Type": "multipart/form-data; boundary=xyz"}
    assert_problem(client.post(PREDICT, content=b"--xyz--\r\n", headers=headers), 422, "no image part")
    no_boundary = {**auth("inference"), "Content-Type": "multipart/form-data"}
    assert client.post(PREDICT, content=b"junk", headers=no_boundary).status_code == 422


def test_more_images_than_the_batch_limit_is_413(settings, model_store):
    small = settings.model_copy(update={"max_predict_batch": 2})
    files = [("images", (f"{i}.png", encoded(grey(i), "PNG"), "image/png")) for i in range(3)]
    with TestClient(create_app(small), raise_server_exceptions=False) as client:
        assert_problem(client.post(PREDICT, files=files, headers=auth("inference")), 413, "at most 2")
        assert client.post(PREDICT, files=files[:2], headers=auth("inference")).status_code == 200


def test_images_need_a_one_or_three_channel_model(client, model_store):
    from unlearning import NormalizedClassifier, build_model

    net = NormalizedClassifier(build_model("small_cnn", 2, 10), [0.5, 0.5], [0.25, 0.25])
    model_store.create_model({"name": "two", "arch": "small_cnn", "input_shape": [2, 8, 8], "num_classes": 10,
                              "mean": [0.5, 0.5], "std": [0.25, 0.25], "train_dataset": "tinyset"},
                             net.state_dict())
    response = client.post("/v1/models/two/predict", content=encoded(grey(8), "PNG"),
                           headers={**auth("inference"), "Content-Type": "image/png"})
    assert_problem(response, 415, "1 or 3 input channels")


def test_a_truncated_multipart_body_is_422_not_fewer_predictions(client, model_store):
    files = [("images", (f"{i}.png", encoded(grey(i), "PNG"), "image/png")) for i in range(2)]
    request = httpx.Request("POST", "http://test" + PREDICT, files=files)
    body = request.read()
    headers = {**auth("inference"), "Content-Type": request.headers["Content-Type"]}
    assert client.post(PREDICT, content=body, headers=headers).status_code == 200
    assert_problem(client.post(PREDICT, content=body[:-60], headers=headers), 422, "closing boundary")


def test_a_body_of_many_tiny_parts_is_refused_at_the_first_part_over_the_limit(client, model_store):
    part = (b'--B\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n\r\n")
    headers = {**auth("inference"), "Content-Type": "multipart/form-data; boundary=B"}
    response = client.post(PREDICT, content=part * 20_000 + b"--B--\r\n", headers=headers)
    assert_problem(response, 413, "more than 256 parts")


@pytest.mark.parametrize("repeated", [b"Content-Type: image/jpeg\r\n",
                                      b'Content-Disposition: form-data; name="other"; filename="b.png"\r\n'])
def test_a_part_that_repeats_a_header_is_422(client, model_store, repeated):
    part = (b'--B\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n" + repeated + b"\r\n" + encoded(grey(10), "PNG") + b"\r\n--B--\r\n")
    headers = {**auth("inference"), "Content-Type": "multipart/form-data; boundary=B"}
    assert_problem(client.post(PREDICT, content=part, headers=headers), 422, "repeats its content-")


@pytest.mark.parametrize("content_type", [
    "multipart/form-data; boundary=B; x*" + "1" * 5000 + "*=utf-8''x",  # more digits than int() takes
    "multipart/form-data; boundary=" + "B" * 300,  # over the parser's boundary limit
])
def test_unparsable_multipart_headers_are_422(client, model_store, content_type):
    headers = {**auth("inference"), "Content-Type": content_type}
    assert client.post(PREDICT, content=b"--B--\r\n", headers=headers).status_code == 422
