"""Generated images and filler text: valid, sized as asked, deterministic."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from kvgate.bench.images import generate_png, parse_resolution, png_data_url
from kvgate.bench.text import PIECES, approx_tokens, filler


@pytest.mark.parametrize("size", [(1, 1), (7, 3), (512, 512), (1024, 768)])
def test_png_decodes_at_the_requested_size(size: tuple[int, int]) -> None:
    png = generate_png(*size, "seed")
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        assert image.size == size
        assert image.mode == "RGB"


def test_png_is_deterministic_and_seeded() -> None:
    assert generate_png(64, 64, 1) == generate_png(64, 64, 1)
    assert generate_png(64, 64, 1) != generate_png(64, 64, 2)
    # Flat cells keep even large images small enough to hold many request bodies.
    assert len(generate_png(2048, 2048, 0)) < 64_000


def test_data_url_and_resolution_parsing() -> None:
    url = png_data_url(b"\x89PNGxyz")
    assert base64.b64decode(url.split(",", 1)[1]) == b"\x89PNGxyz"
    assert parse_resolution(" 1024X768 ") == (1024, 768)
    with pytest.raises(ValueError):
        parse_resolution("1024")


def test_filler_is_exactly_the_asked_tokens() -> None:
    assert all(len(piece) == 4 for piece in PIECES)
    text = filler(1000, "x", 1)
    assert approx_tokens(text) == 1000
    assert text == filler(1000, "x", 1)
    assert text != filler(1000, "x", 2)
    assert filler(0, "x") == ""
