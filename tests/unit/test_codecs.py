"""`service.codecs.decode_image`: PNGs that need no conversion are decoded with libspng, and give exactly the pixels
Pillow gives; every other image (EXIF, other sizes, depths or colour types) and every malformed one goes to Pillow."""

import io

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


@pytest.mark.parametrize(("shape", "options"), [
    ((8, 8), {}),
    ((8, 8), {"optimize": True}),
    ((8, 8), {"interlace": 1}),  # Adam7
    ((8, 8), {"transparency": 0}),  # a tRNS chunk: neither decoder applies it to L or RGB
    ((32, 32, 3), {}),
    ((32, 32, 3), {"compress_level": 0}),
    ((32, 32, 3), {"interlace": 1}),
])
def test_plain_pngs_skip_pillow_and_decode_to_what_pillow_gives(monkeypatch, shape, options):
    data = png(pixels(shape, seed=len(shape) + len(options)), **options)
    input_shape = (1, 8, 8) if len(shape) == 2 else (3, 32, 32)
    expected = pillow_only(data, input_shape, monkeypatch)
    refuse_pillow(monkeypatch)
    decoded = decode_image(data, input_shape)
    assert decoded.dtype == np.uint8 and decoded.shape == input_shape
    np.testing.assert_array_equal(decoded, expected)


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
