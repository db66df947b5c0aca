"""Multimodal hashes must equal vLLM 0.33's.

The golden digests were produced by running vLLM 0.33.0's own `MultiModalHasher.hash_kwargs` and
`ImageMediaIO.load_bytes` (from its PyPI wheel, with torch stubbed out) on these exact bytes.
"""

from __future__ import annotations

import io

import blake3
import pytest

from kvgate.vllm_compat.image_header import read_image_header
from kvgate.vllm_compat.mm_hash import image_mm_hash, mm_identifier

MODEL = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
GOLDEN = {
    # 4x3 RGB PNG: plain RGB, hashed as the bare file bytes.
    "rgb_png": (
        "89504e470d0a1a0a0000000d49484452000000040000000308020000003b9639910000001449444154789c"
        "63e4129163800126062480c20100093400428f0b6d120000000049454e44ae426082",
        "0652647fc6f9db7ae706df2c8a438ff2087b7ed2728a3533345cd3eec0525cc8",
    ),
    # 5x2 RGBA PNG: converted to RGB, so the conversion settings are hashed with the bytes.
    "rgba_png": (
        "89504e470d0a1a0a0000000d4948445200000005000000020806000000906a165d0000001649444154789c"
        "63e412916b6040034ce8020c0c0c0c001cca00c0d235448b0000000049454e44ae426082",
        "669f3ef6315eac9c7b5846e464a326fc4ca6c54e4526f2a1672dc8ae86b05ea3",
    ),
    # 3x3 greyscale PNG: also converted.
    "grey_png": (
        "89504e470d0a1a0a0000000d49484452000000030000000308000000007343ea630000000f49444154789c"
        "63f465606062806000037f0053cdec7fd60000000049454e44ae426082",
        "37faa47ee1e577c7905faa866bf3c50be7fb41df68d957b0df82c96c1cba193f",
    ),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_vectors(name: str) -> None:
    data_hex, expected = GOLDEN[name]
    assert image_mm_hash(bytes.fromhex(data_hex), MODEL) == expected


def test_plain_rgb_framing_is_documented_formula() -> None:
    data = b"not really an image"

    def framed(chunk: bytes) -> bytes:
        return len(chunk).to_bytes(8, "little") + chunk

    expected = blake3.blake3(
        framed(b"image") + b"\x03" + framed(b"image") + b"\x03" + framed(data)
        + framed(b"model_id") + b"\x03" + framed(MODEL.encode())
    ).hexdigest()
    assert image_mm_hash(data, MODEL) == expected


def test_hash_depends_on_model_and_bytes() -> None:
    data = bytes.fromhex(GOLDEN["rgb_png"][0])
    assert image_mm_hash(data, MODEL) != image_mm_hash(data, "other/model")
    assert image_mm_hash(data, MODEL) != image_mm_hash(data + b"\x00", MODEL)
    assert len(image_mm_hash(data, MODEL, "sha256")) == 64


def test_uuid_replaces_hash() -> None:
    assert mm_identifier(b"x", MODEL, uuid="my-image-1") == "my-image-1"
    assert mm_identifier(b"x", MODEL) == image_mm_hash(b"x", MODEL)


PIL = pytest.importorskip("PIL.Image")


def _encode(mode: str, size: tuple[int, int], fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    color: object = 128 if mode in ("L", "P", "1") else tuple([100] * len(mode))
    PIL.new(mode, size, color).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("RGB", "PNG"), ("RGBA", "PNG"), ("L", "PNG"), ("P", "PNG"), ("LA", "PNG"),
     ("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("P", "GIF"), ("RGB", "BMP"),
     ("RGB", "WEBP"), ("RGBA", "WEBP")],
)
def test_header_matches_pillow(mode: str, fmt: str) -> None:
    data = _encode(mode, (37, 21), fmt)
    header = read_image_header(data)
    opened = PIL.open(io.BytesIO(data))
    assert header is not None
    assert (header.width, header.height) == opened.size == (37, 21)
    assert header.is_plain_rgb == (
        opened.mode == "RGB" and "transparency" not in opened.info
    )


def test_png_with_trns_is_not_plain_rgb() -> None:
    data = _encode("RGB", (4, 4), "PNG", transparency=(100, 100, 100))
    header = read_image_header(data)
    assert header is not None and header.mode == "RGB" and not header.is_plain_rgb


def test_unreadable_header() -> None:
    assert read_image_header(b"garbage") is None
    assert read_image_header(b"\x89PNG\r\n\x1a\n") is None
