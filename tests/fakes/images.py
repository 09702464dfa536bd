"""Tiny real images for tests (Pillow)."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

RGB = tuple[int, int, int]
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_PAD_CHUNK = b"paDd"  # ancillary, private, safe-to-copy: decoders skip it
_CHUNK_OVERHEAD = 12  # length + type + crc


def _encode(width: int, height: int, color: RGB, fmt: str, **options: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format=fmt, **options)
    return buf.getvalue()


def make_png(width: int, height: int, color: RGB = (200, 30, 30)) -> bytes:
    """A solid-colour RGB PNG."""
    return _encode(width, height, color, "PNG")


def make_jpeg(width: int, height: int, color: RGB = (30, 30, 200), quality: int = 90) -> bytes:
    """A solid-colour RGB JPEG."""
    return _encode(width, height, color, "JPEG", quality=quality)


def png_chunk(chunk_type: bytes, data: bytes) -> bytes:
    """One PNG chunk with a correct CRC."""
    crc = zlib.crc32(chunk_type + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + chunk_type + data + struct.pack(">I", crc)


def padded_png(min_size_bytes: int, width: int = 8, height: int = 8) -> bytes:
    """A valid PNG of at least `min_size_bytes`, padded with an ancillary chunk before IEND."""
    base = make_png(width, height)
    assert base.endswith(_PNG_IEND)
    pad = max(0, min_size_bytes - len(base) - _CHUNK_OVERHEAD)
    return base[: -len(_PNG_IEND)] + png_chunk(_PAD_CHUNK, bytes(pad)) + _PNG_IEND
