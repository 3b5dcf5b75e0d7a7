"""Turn one image (file bytes or pixels) into uint8 pixels of a fixed channel count and size.

Real photo folders hold files that are empty, truncated, not images at all,
or in modes a network cannot take (palette, alpha, CMYK, 16-bit). ``decode``
either returns clean H x W x C uint8 pixels or raises ``SkipImage`` with one
of ``REASONS``, so prepare can skip the file and count it instead of crashing.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

REASONS = ("empty file", "not an image", "truncated", "corrupt", "too large")
# Caps checked before anything is decoded: a file's size (an archive member's as its header
# declares it; reading stops past it) and the pixels an image's header declares. 64 MiB holds
# any photo from a camera; 2**26 = 67,108,864 pixels is 8192 x 8192, above a 48-megapixel
# phone and below PIL's own decompression-bomb limit (89,478,485).
MAX_FILE_BYTES = 64 << 20
MAX_PIXELS = 1 << 26
Size = int | tuple[int, int]  # 0 = keep, N = shorter side to N then centre crop N x N, (h, w) = exactly
# File signatures of common image formats: such a file that does not decode is corrupt, not "not an image".
MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")
BACKGROUND = (255, 255, 255)  # transparent pixels become white (scans, icons, product shots)


class SkipImage(Exception):
    """This file cannot be used as an image; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _flatten(im: Image.Image) -> Image.Image:
    """Modes PIL cannot convert faithfully to L/RGB: 16/32-bit integers, floats, alpha."""
    if im.mode.startswith("I"):  # I;16, I;16B, I (16-bit PNG/TIFF): scale 0..65535 -> 0..255
        wide = np.asarray(im).astype(np.int64).clip(0, 65535)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L")
    if im.mode == "F":
        values = np.asarray(im, dtype=np.float64)
        scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0
        return Image.fromarray(np.nan_to_num(values * scale).clip(0, 255).round().astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im


def resize(im: Image.Image, size: Size) -> Image.Image:
    """Int: shorter side to ``size`` keeping the aspect ratio, then centre crop; pair: exactly (h, w)."""
    if not size:
        return im
    if not isinstance(size, int):
        height, width = size
        return im if im.size == (width, height) else im.resize((width, height), Image.Resampling.BILINEAR)
    w, h = im.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return im.crop((left, top, left + size, top + size))


def convert(im: Image.Image, channels: int, size: Size = 0) -> np.ndarray:
    """``im`` as H x W x ``channels`` uint8 (1 = grey, 3 = RGB), resized per ``size``."""
    im = _flatten(im).convert("L" if channels == 1 else "RGB")
    array = np.asarray(resize(im, size))
    return array[..., None] if array.ndim == 2 else array


def convert_array(pixels: np.ndarray, channels: int, size: Size = 0) -> np.ndarray:
    """Pixels H x W x C (uint8) converted like a decoded file; a no-op when nothing changes."""
    if pixels.shape[-1] == channels and not size:
        return pixels
    return convert(Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels), channels, size)


def decode(data: bytes, channels: int, size: Size = 0) -> np.ndarray:
    """Decode image file bytes to H x W x ``channels`` uint8; ``SkipImage`` when unusable."""
    if not data:
        raise SkipImage("empty file")
    if len(data) > MAX_FILE_BYTES:
        raise SkipImage("too large", f"more than {MAX_FILE_BYTES} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PIL on damaged tags: the file is kept or skipped
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))  # reads the header only
            if im.width * im.height > MAX_PIXELS:
                raise SkipImage("too large", f"{im.width}x{im.height} pixels, more than {MAX_PIXELS}")
            im.load()
        im = ImageOps.exif_transpose(im)  # phone photos store rotation in EXIF
    except UnidentifiedImageError:
        if data.startswith(MAGIC):  # an image header PIL cannot make sense of
            raise SkipImage("corrupt", "unreadable image header") from None
        raise SkipImage("not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SkipImage("too large", str(exc)) from None
    except (OSError, EOFError) as exc:
        text = str(exc).lower()
        if isinstance(exc, EOFError) or "truncated" in text:
            raise SkipImage("truncated", str(exc)) from None
        raise SkipImage("corrupt", str(exc)) from None
    except (SyntaxError, ValueError, TypeError, IndexError, KeyError) as exc:  # malformed headers
        raise SkipImage("corrupt", str(exc)) from None
    try:
        return convert(im, channels, size)
    except (OSError, ValueError) as exc:
        raise SkipImage("corrupt", str(exc)) from None
