"""Size and colour mode of an encoded image, read from its header (no decoding).

Two vLLM behaviours depend on them: the number of vision tokens (from width and height) and the
multimodal hash, which also covers the conversion vLLM applies when the decoded image is not
plain RGB (`ImageMediaIO.load_bytes` converts to RGB and then hashes the conversion settings
with the bytes). The mode reported is the one Pillow would open the image in; `None` means the
header could not be read.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_MODES: Mapping[int, str] = MappingProxyType({0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"})
# JPEG start-of-frame markers carrying the size (all SOFn except DHT C4, JPG C8, DAC CC).
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_MODES: Mapping[int, str] = MappingProxyType({1: "L", 3: "RGB", 4: "CMYK"})


@dataclass(frozen=True, slots=True)
class ImageHeader:
    width: int
    height: int
    mode: str
    has_transparency: bool = False

    @property
    def is_plain_rgb(self) -> bool:
        """True when vLLM keeps the decoded image as is (no RGB conversion)."""
        return self.mode == "RGB" and not self.has_transparency


def read_image_header(data: bytes) -> ImageHeader | None:
    """Header facts of a PNG, JPEG, GIF, WebP or BMP image, or None if unreadable."""
    try:
        if data.startswith(_PNG_MAGIC):
            return _png(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg(data)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", data[6:10])
            return _checked(width, height, "P")
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp(data)
        if data[:2] == b"BM":
            width, height = struct.unpack("<ii", data[18:26])
            (bits,) = struct.unpack("<H", data[28:30])
            return _checked(width, abs(height), "RGB" if bits >= 24 else "P")
    except (struct.error, IndexError):
        return None
    return None


def _checked(width: int, height: int, mode: str, alpha: bool = False) -> ImageHeader | None:
    return ImageHeader(width, height, mode, alpha) if width > 0 and height > 0 else None


def _png(data: bytes) -> ImageHeader | None:
    width, height = struct.unpack(">II", data[16:24])
    mode = _PNG_MODES.get(data[25], "L")
    if mode == "L" and data[24] == 16:
        mode = "I;16"
    transparency = False
    pos = 8
    while pos + 8 <= len(data):  # a tRNS chunk (before IDAT) gives P/L/RGB transparency
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        chunk = data[pos + 4:pos + 8]
        if chunk == b"tRNS":
            transparency = True
            break
        if chunk in (b"IDAT", b"IEND"):
            break
        pos += 12 + length
    return _checked(width, height, mode, transparency)


def _jpeg(data: bytes) -> ImageHeader | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (segment_len,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in _JPEG_SOF_MARKERS:
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return _checked(width, height, _JPEG_MODES.get(data[pos + 9], "RGB"))
        pos += 2 + segment_len
    return None


def _webp(data: bytes) -> ImageHeader | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        alpha = bool(data[20] & 0x10)
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return _checked(width, height, "RGBA" if alpha else "RGB")
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        alpha = bool(bits >> 28 & 1)
        return _checked((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1,
                        "RGBA" if alpha else "RGB")
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return _checked(width & 0x3FFF, height & 0x3FFF, "RGB")
    return None
