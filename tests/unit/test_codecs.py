"""`service.codecs.decode_image`: PNGs that need no conversion are decoded with libspng, and give exactly the pixels
Pillow gives; every other image (EXIF, other sizes, depths or colour types) and every malformed one goes to Pillow.
`multipart_images`: a part is an image file however its Content-Disposition is written."""

import io
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from service import codecs
from service.codecs import decode_image
from service.errors import Problem


def png(pixels: np.ndarray, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB").save(out, format="PNG", **options)
    return out.getvalue()


def pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def pillow_only(data: bytes, input_shape: tuple[int, int, int], monkeypatch) -> np.ndarray:
    with monkeypatch.context() as patch:
        patch.setattr(codecs, "_png_as_is", lambda *args: None)
        return decode_image(data, input_shape)


def refuse_pillow(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("Pillow was asked to decode a PNG libspng takes as is")

    monkeypatch.setattr(codecs.Image, "open", fail)


EXIF_ROTATED = Image.Exif()
EXIF_ROTATED[0x0112] = 3  # orientation: rotated 180°
RAW_EXIF = EXIF_ROTATED.tobytes()
XMP_ROTATED = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
               b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="3"/></rdf:RDF>'
               b'</x:xmpmeta>')


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def with_chunks(data: bytes, *chunks: bytes) -> bytes:
    """`data` with `chunks` right after its IHDR (8 + 25 bytes)."""
    return data[:33] + b"".join(chunks) + data[33:]


@pytest.mark.parametrize(("shape", "options", "extra"), [
    ((8, 8), {}, ()),
    ((8, 8), {"optimize": True}, ()),
    ((8, 8), {"interlace": 1}, ()),  # Adam7
    ((8, 8), {"dpi": (72, 72)}, (chunk(b"gAMA", struct.pack(">I", 45455)), chunk(b"sRGB", b"\x00"))),
    ((32, 32, 3), {}, ()),
    ((32, 32, 3), {"compress_level": 0}, ()),
    ((32, 32, 3), {"interlace": 1}, ()),
])
def test_plain_pngs_skip_pillow_and_decode_to_what_pillow_gives(monkeypatch, shape, options, extra):
    data = with_chunks(png(pixels(shape, seed=len(shape) + len(options)), **options), *extra)
    input_shape = (1, 8, 8) if len(shape) == 2 else (3, 32, 32)
    expected = pillow_only(data, input_shape, monkeypatch)
    refuse_pillow(monkeypatch)
    decoded = decode_image(data, input_shape)
    assert decoded.dtype == np.uint8 and decoded.shape == input_shape
    np.testing.assert_array_equal(decoded, expected)


def _flip(data: bytes, index: int) -> bytes:
    flipped = bytearray(data)
    flipped[index] ^= 1
    return bytes(flipped)


IMAGE = pixels((8, 8), seed=7)
PLAIN = png(IMAGE)
IDAT_PIXELS = PLAIN.index(b"IDAT") + 8  # inside the zlib stream; the chunk's CRC no longer matches


@pytest.mark.parametrize("data", [
    pytest.param(with_chunks(PLAIN, chunk(b"tRNS", b"\x00\x00")), id="tRNS"),
    pytest.param(with_chunks(PLAIN, chunk(b"iTXt", b"XML:com.adobe.xmp\0\1\0\0\0" + zlib.compress(XMP_ROTATED))),
                 id="XMP orientation"),
    pytest.param(with_chunks(PLAIN, chunk(b"tEXt", b"exif\0" + RAW_EXIF)), id="tEXt exif"),
    pytest.param(with_chunks(PLAIN, chunk(b"acTL", struct.pack(">II", 1, 0)),
                             chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, 4, 4, 0, 0, 1, 10, 0, 0))),
                 id="APNG frame smaller than the image"),
    pytest.param(with_chunks(PLAIN, chunk(b"sRGB", b"")), id="sRGB of the wrong length"),
    pytest.param(_flip(PLAIN, 29), id="IHDR CRC"),
    pytest.param(_flip(PLAIN, IDAT_PIXELS), id="IDAT bit flip"),
    pytest.param(PLAIN[:-12], id="no IEND"),
])
def test_pngs_with_other_chunks_or_bad_crcs_go_to_pillow_and_get_its_answer(monkeypatch, data):
    expected = _answer(lambda: pillow_only(data, (1, 8, 8), monkeypatch))
    opened = []
    real_open = codecs.Image.open
    monkeypatch.setattr(codecs.Image, "open", lambda *args, **kwargs: opened.append(1) or real_open(*args, **kwargs))
    assert _answer(lambda: decode_image(data, (1, 8, 8))) == expected and opened == [1]


def _answer(decode) -> object:
    """What a decode gives: its pixels as bytes, or the status of the problem it raised."""
    try:
        return decode().tobytes()
    except Problem as problem:
        return problem.status


def test_orientation_in_xmp_is_applied():
    data = with_chunks(PLAIN, chunk(b"iTXt", b"XML:com.adobe.xmp\0\1\0\0\0" + zlib.compress(XMP_ROTATED)))
    np.testing.assert_array_equal(decode_image(data, (1, 8, 8))[0], IMAGE[::-1, ::-1])


@pytest.mark.parametrize("options", [
    {"exif": EXIF_ROTATED},
    {"pnginfo": "text"},  # EXIF as the "Raw profile type exif" text chunk older writers use
    {"pnginfo": "ztxt"},
])
def test_a_png_with_exif_goes_to_pillow_and_is_turned_upright(options):
    if "pnginfo" in options:
        info = PngImagePlugin.PngInfo()
        info.add_text("Raw profile type exif", f"\nexif\n{len(RAW_EXIF):8d}\n{RAW_EXIF.hex()}",
                      zip=options["pnginfo"] == "ztxt")
        options = {"pnginfo": info}
    image = pixels((8, 8), seed=1)
    np.testing.assert_array_equal(decode_image(png(image, **options), (1, 8, 8))[0], image[::-1, ::-1])


@pytest.mark.parametrize(("image", "input_shape"), [
    (pixels((8, 8, 3), seed=2), (1, 8, 8)),  # RGB for a greyscale model: converted
    (pixels((8, 8), seed=3), (3, 8, 8)),  # greyscale for an RGB model: converted
    (pixels((16, 16), seed=4), (1, 8, 8)),  # another size: resized
])
def test_pngs_that_need_converting_go_to_pillow(monkeypatch, image, input_shape):
    opened = []
    real_open = codecs.Image.open
    monkeypatch.setattr(codecs.Image, "open", lambda *args, **kwargs: opened.append(1) or real_open(*args, **kwargs))
    decoded = decode_image(png(image), input_shape)
    assert opened == [1] and decoded.shape == input_shape


def test_a_truncated_plain_png_is_a_422_problem():
    whole = png(pixels((8, 8), seed=5))
    with pytest.raises(Problem) as refused:
        decode_image(whole[:len(whole) // 2], (1, 8, 8))  # IDAT cut short, no IEND
    assert refused.value.status == 422


def test_a_plain_png_with_a_corrupted_pixel_stream_is_a_422_problem():
    whole = bytearray(png(pixels((8, 8), seed=6)))
    idat = whole.index(b"IDAT")
    whole[idat + 6:idat + 12] = b"\xff" * 6  # inside the zlib stream (and its CRC no longer matches)
    with pytest.raises(Problem) as refused:
        decode_image(bytes(whole), (1, 8, 8))
    assert refused.value.status == 422


# ---- multipart/form-data ---------------------------------------------------------------------------------------
def form(*dispositions: bytes, part_type: bytes = b"image/png") -> bytes:
    """A multipart body (boundary B) of one 1-byte part per Content-Disposition."""
    parts = [b"--B\r\nContent-Disposition: " + d + b"\r\nContent-Type: " + part_type + b"\r\n\r\nx\r\n"
             for d in dispositions]
    return b"".join(parts) + b"--B--\r\n"


@pytest.mark.parametrize("disposition", [
    b'form-data; name="images"; filename="0.png"',  # as httpx, requests and curl write it
    b'form-data; filename="0.png"; name="images"',
    b'form-data; name=images; filename=0.png',
    b'form-data; name="images"; filename="a \\"quoted\\" name.png"',
    b'Form-Data; name="images"; filename="0.png"; size=1',
])
def test_every_way_of_writing_a_file_part_is_one(disposition):
    assert codecs.multipart_images(form(disposition, disposition), "multipart/form-data; boundary=B", 8) == [
        b"x", b"x"]


@pytest.mark.parametrize(("disposition", "part_type", "status", "message"), [
    (b'form-data; name="filename"', b"image/png", 422, "part 'filename' is not a file"),
    (b'form-data; name="images"; file="0.png"', b"image/png", 422, "part 'images' is not a file"),
    (b'form-data; name="images"; filename="0.png"', b"text/plain", 415, "part 'images' is 'text/plain'"),
    (b'attachment; filename="0.png"', b"image/png", 422, "Content-Disposition is 'attachment'"),
    (b'attachment; name="images"; filename="0.png"', b"image/png", 422, "Content-Disposition is 'attachment'"),
    (b'name="images"; filename="0.png"', b"image/png", 422, "Content-Disposition is 'name="),
])
def test_a_part_that_is_not_an_image_file_is_refused_by_name(disposition, part_type, status, message):
    with pytest.raises(Problem) as refused:
        codecs.multipart_images(form(disposition, part_type=part_type), "multipart/form-data; boundary=B", 8)
    assert refused.value.status == status
    assert message in refused.value.detail


def test_a_part_without_content_disposition_is_refused():
    body = b"--B\r\nContent-Type: image/png\r\n\r\nx\r\n--B--\r\n"
    with pytest.raises(Problem) as refused:
        codecs.multipart_images(body, "multipart/form-data; boundary=B", 8)
    assert refused.value.status == 422
    assert "has no Content-Disposition" in refused.value.detail


def test_file_parts_as_httpx_writes_them_need_no_parameter_parser(monkeypatch):
    parsed = []
    parse = codecs.parse_options_header
    monkeypatch.setattr(codecs, "parse_options_header", lambda value: parsed.append(value) or parse(value))
    request = httpx.Request("POST", "http://127.0.0.1/", files=[("images", (f"{i}.png", b"x", "image/png"))
                                                                 for i in range(2)])
    assert codecs.multipart_images(request.read(), request.headers["Content-Type"], 8) == [b"x", b"x"]
    assert parsed == [request.headers["Content-Type"]]  # the body's boundary, and no part's disposition
