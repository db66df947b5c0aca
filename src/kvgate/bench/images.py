"""Deterministic PNG images for multimodal workloads, written with zlib alone.

An image is a grid of flat-coloured cells whose colours come from the seed. Writing the PNG by
hand (instead of through Pillow) keeps the bytes identical across library versions, which is
what makes "same seed, same requests" hold for image bytes too, and flat cells compress to a few
kilobytes even at 2048x2048, so a workload of many large images stays cheap to hold in memory
as ready-to-send request bodies. Servers size vision tokens by resolution, not by content.
"""

from __future__ import annotations

import base64
import struct
import zlib

from kvgate.bench.text import seeded_rng

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_CELLS_PER_SIDE = 8
# Fixed level: the compressed bytes must not depend on a default that could change.
_ZLIB_LEVEL = 6


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def generate_png(width_px: int, height_px: int, *seed_parts: object) -> bytes:
    """An RGB PNG of the given size, determined entirely by ``seed_parts``."""
    if width_px <= 0 or height_px <= 0:
        raise ValueError(f"image size must be positive, got {width_px}x{height_px}")
    rng = seeded_rng("image", width_px, height_px, *seed_parts)
    cell_w = -(-width_px // _CELLS_PER_SIDE)
    cell_h = -(-height_px // _CELLS_PER_SIDE)
    rows: list[bytes] = []
    for _ in range(_CELLS_PER_SIDE):
        colours = [bytes(rng.randrange(256) for _ in range(3)) for _ in range(_CELLS_PER_SIDE)]
        # Filter byte 0 (None) then the pixels; one row object is reused for the band.
        row = b"\x00" + b"".join(colour * cell_w for colour in colours)[: width_px * 3]
        rows.append(row * cell_h)
    raw = b"".join(rows)[: height_px * (1 + width_px * 3)]
    header = struct.pack(">IIBBBBB", width_px, height_px, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (_PNG_MAGIC + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw, _ZLIB_LEVEL)) + _chunk(b"IEND", b""))


def png_data_url(png: bytes) -> str:
    """The image as a ``data:image/png;base64,...`` URL, as OpenAI's image_url parts take it."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def parse_resolution(text: str) -> tuple[int, int]:
    """``"1024x768"`` -> (1024, 768)."""
    width, sep, height = text.strip().lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise ValueError(f"resolution must look like 1024x768, got {text!r}")
    return int(width), int(height)
