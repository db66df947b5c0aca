"""vLLM's multimodal item hash (vllm/multimodal/hasher.py, processing/inputs.py, 0.33.0).

vLLM hashes an image by its *original encoded file bytes* (not its pixels) with the model id:
`MultiModalHasher.hash_kwargs(algo, model_id=..., image=MediaWithBytes)`. The digest input is a
framed stream, so distinct inputs never serialize alike: each chunk is preceded by its length
(8 bytes, little-endian); values are tagged 0x00 None, 0x01 sequence (+ length), 0x02 mapping
(+ length), 0x03 leaf; kwargs go in sorted key order. For a plain RGB image that is

    blake3( L("image") 03 L("image") 03 L(file_bytes)  L("model_id") 03 L(model_id) )

with L(x) = len(x) as 8 bytes LE + x ("image" twice: the MediaWithBytes wrapper re-serializes
its bytes under the same key). When decoding changes the image -- vLLM converts anything that is
not plain RGB (RGBA, grey, palette, CMYK, transparency) to RGB -- the wrapper hashes
`{"io_config": {"image_mode": "RGB", "rgba_background_color": (255, 255, 255)}, "data": bytes}`
instead. The hex digest is the item's identifier in block-hash extra keys and KV events.

A client-supplied content-part `uuid` replaces the hash when the request carries no processor
kwargs (`mm_identifier`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Literal, Protocol

import blake3

from kvgate.vllm_compat.image_header import read_image_header

MMHashAlgo = Literal["blake3", "sha256", "sha512"]

_TAG_NONE, _TAG_SEQUENCE, _TAG_MAPPING, _TAG_LEAF = b"\x00", b"\x01", b"\x02", b"\x03"
# ImageMediaIO defaults: target mode and the background alpha is flattened onto.
_RGB_IO_CONFIG: Mapping[str, object] = MappingProxyType(
    {"image_mode": "RGB", "rgba_background_color": (255, 255, 255)}
)


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> object: ...

    def hexdigest(self) -> str: ...


_HASHERS: Mapping[MMHashAlgo, Callable[[], _Hasher]] = MappingProxyType({
    "blake3": blake3.blake3,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
})


def _length(value: int) -> bytes:
    return value.to_bytes(8, "little")


def _framed(chunk: bytes) -> Iterator[bytes]:
    yield _length(len(chunk))
    yield chunk


def _leaf(value: Any) -> Iterator[bytes]:
    if isinstance(value, bytes):
        yield from _framed(value)
    elif isinstance(value, str):
        yield from _framed(value.encode("utf-8"))
    elif isinstance(value, int):
        # np.array(int).tobytes(): int64, little-endian on the platforms vLLM runs on.
        yield from _framed(value.to_bytes(8, "little", signed=True))
    else:
        raise TypeError(f"no vLLM serialization for {type(value).__name__}")


def _value(value: Any) -> Iterator[bytes]:
    """vLLM's `iter_value_to_bytes` for the value types image hashing uses."""
    if value is None:
        yield _TAG_NONE
    elif isinstance(value, list | tuple):
        yield _TAG_SEQUENCE
        yield _length(len(value))
        for element in value:
            yield from _value(element)
    elif isinstance(value, Mapping):
        yield _TAG_MAPPING
        yield _length(len(value))
        for key, element in value.items():
            yield from _framed(str(key).encode("utf-8"))
            yield from _value(element)
    else:
        yield _TAG_LEAF
        yield from _leaf(value)


def _item(key: str, value: Any) -> Iterator[bytes]:
    yield from _framed(key.encode("utf-8"))
    yield from _value(value)


def image_mm_hash(
    file_bytes: bytes,
    model_id: str,
    algo: MMHashAlgo = "blake3",
    *,
    plain_rgb: bool | None = None,
) -> str:
    """The mm_hash vLLM computes for an image given as encoded file bytes (e.g. a data: URL).

    `plain_rgb` says whether the decoded image is plain RGB (no conversion); None reads it
    from the header, assuming plain RGB when the header is unreadable.
    """
    if plain_rgb is None:
        header = read_image_header(file_bytes)
        plain_rgb = header is None or header.is_plain_rgb
    media: Any = file_bytes if plain_rgb else {"io_config": _RGB_IO_CONFIG, "data": file_bytes}
    hasher = _HASHERS[algo]()
    hasher.update(b"".join(_framed(b"image")))
    hasher.update(_TAG_LEAF)  # the MediaWithBytes object is a leaf of the outer "image" key...
    for chunk in _item("image", media):  # ...that serializes its bytes under "image" again
        hasher.update(chunk)
    for chunk in _item("model_id", model_id):
        hasher.update(chunk)
    return hasher.hexdigest()


def mm_identifier(
    file_bytes: bytes, model_id: str, uuid: str | None = None, algo: MMHashAlgo = "blake3"
) -> str:
    """The identifier of one image item: the client's `uuid` when given, else `image_mm_hash`."""
    if uuid is not None:
        return uuid
    return image_mm_hash(file_bytes, model_id, algo)
