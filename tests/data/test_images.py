"""Decoding: every odd mode becomes clean uint8 pixels; every unusable file a named reason."""

import io

import numpy as np
import pytest
from PIL import Image

from foldwise.data.images import REASONS, SkipImage, convert_array, decode, resize
from tests.conftest import jpeg_bytes


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def reason(data: bytes) -> str:
    with pytest.raises(SkipImage) as info:
        decode(data, 3)
    assert info.value.reason in REASONS
    return info.value.reason


def test_unusable_files_get_a_reason_not_a_crash():
    good = jpeg_bytes(120)
    png = bytearray(encode(Image.new("RGB", (8, 8), (1, 2, 3))))
    png[20] ^= 0xFF  # header CRC no longer matches
    assert reason(b"") == "empty file"
    assert reason(b"just some notes\n") == "not an image"
    assert reason(good[: len(good) // 2]) == "truncated"
    assert reason(bytes(png)) == "corrupt"


def test_modes_are_converted_to_the_channel_count():
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 0))  # fully transparent red
    assert decode(encode(rgba), 3)[0, 0].tolist() == [255, 255, 255]  # flattened onto white
    palette = Image.new("P", (4, 2), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert decode(encode(palette), 3)[0, 0].tolist() == [10, 200, 30]
    palette.info["transparency"] = 1
    assert decode(encode(palette, transparency=1), 3)[0, 0].tolist() == [255, 255, 255]
    sixteen = Image.fromarray(np.full((2, 4), 65535, dtype=np.uint16))
    assert decode(encode(sixteen), 1)[0, 0].tolist() == [255]
    half = Image.fromarray(np.full((2, 4), 32896, dtype=np.uint16))  # 128 * 257
    assert decode(encode(half), 1)[0, 0].tolist() == [128]
    cmyk = decode(encode(Image.new("CMYK", (4, 2), (0, 255, 255, 0)), "JPEG"), 3)  # red in CMYK
    assert cmyk.shape == (2, 4, 3) and cmyk[0, 0, 0] > 200 and cmyk[0, 0, 1] < 60
    grey = decode(encode(Image.new("L", (4, 2), 77)), 3)
    assert grey.shape == (2, 4, 3) and grey[0, 0].tolist() == [77, 77, 77]
    assert decode(encode(Image.new("RGB", (4, 2), (90, 90, 90))), 1).shape == (2, 4, 1)


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (6, 2), (10, 10, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise
    assert decode(encode(image, "JPEG", exif=exif), 3).shape == (6, 2, 3)


def test_resize_keeps_aspect_and_crops_or_forces_a_pair():
    wide = Image.new("L", (40, 20))
    assert resize(wide, 10).size == (10, 10)
    assert resize(wide, (8, 12)).size == (12, 8)  # (height, width)
    assert resize(wide, 0) is wide
    marked = np.zeros((20, 40), dtype=np.uint8)
    marked[:, 15:25] = 255  # a bright centre band survives the centre crop
    cropped = np.asarray(resize(Image.fromarray(marked), 10))
    assert cropped[:, 3:7].mean() > 200 and cropped[:, :2].mean() < 30


def test_convert_array_is_a_no_op_when_nothing_changes():
    pixels = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert convert_array(pixels, 3) is pixels
    assert convert_array(pixels[..., :1], 3).shape == (2, 2, 3)
    assert convert_array(pixels, 3, 4).shape == (4, 4, 3)
