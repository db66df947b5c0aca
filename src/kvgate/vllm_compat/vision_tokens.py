"""How many placeholder tokens vLLM expands an image into, per vision-token rule.

Shared by the simulator (its prefill cost) and the gateway (an image link's weight in the
prompt fingerprint), so both count an image the same way.
"""

from __future__ import annotations

import math

# LLaVA-OneVision (llava-onevision-qwen2-7b-ov-hf): SigLIP at 384 px with 14 px patches gives a
# 27 x 27 grid (729 tokens) per crop; "anyres_max_9" grid pinpoints are every (i, j) x 384 for
# i, j in 1..6. Reimplemented from vLLM's LlavaOnevisionProcessingInfo and transformers'
# select_best_resolution; reproduces 384^2 -> 1485, 640x480 -> 2929, 1920x1080 -> 7269.
_OV_CROP_PX = 384
_OV_GRID = 27
_OV_PINPOINTS = tuple(
    (i * _OV_CROP_PX, j * _OV_CROP_PX) for i in range(1, 7) for j in range(1, 7)
)


def _select_best_resolution(height: int, width: int) -> tuple[int, int]:
    best = _OV_PINPOINTS[0]
    max_effective, min_wasted = 0, math.inf
    for pin_h, pin_w in _OV_PINPOINTS:
        scale = min(pin_w / width, pin_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = pin_w * pin_h - effective
        if effective > max_effective or (effective == max_effective and wasted < min_wasted):
            max_effective, min_wasted, best = effective, wasted, (pin_h, pin_w)
    return best


def llava_onevision_image_tokens(width: int, height: int) -> int:
    """Vision placeholder tokens vLLM expands one LLaVA-OneVision image into."""
    pin_h, pin_w = _select_best_resolution(height, width)
    cur_h, cur_w = _OV_GRID * (pin_h // _OV_CROP_PX), _OV_GRID * (pin_w // _OV_CROP_PX)
    if width / height > cur_w / cur_h:
        new_h = int(round(height * (cur_w / width), 7))
        cur_h -= 2 * ((cur_h - new_h) // 2)
    else:
        new_w = int(round(width * (cur_h / height), 7))
        cur_w -= 2 * ((cur_w - new_w) // 2)
    unpadded, newlines = cur_h * cur_w, cur_h
    ratio = math.sqrt(cur_h * cur_w / (9 * _OV_GRID**2))
    if ratio > 1.1:  # anyres_max_9: downscale features beyond ~9 crops
        unpadded = int(cur_h // ratio) * int(cur_w // ratio)
        newlines = int(cur_h // ratio)
    return unpadded + newlines + _OV_GRID * _OV_GRID
