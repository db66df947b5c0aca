"""Images asked about repeatedly: ``num_images`` distinct generated PNGs, each the subject of
``questions_per_image`` different questions, shuffled together.

Every question about an image repeats the image, so a replica that has already encoded it
(vision encoder cache, and the image's KV blocks when the image comes first) answers faster;
a router that hashes image bytes can send the repeats there. Resolutions cycle over the
comma-separated ``resolutions`` list, e.g. ``"512x512,1024x768"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from kvgate.bench.images import generate_png, parse_resolution, png_data_url
from kvgate.bench.request import BenchRequest
from kvgate.bench.text import filler, seeded_rng
from kvgate.bench.workloads.base import WorkloadOptions, chat_request


@dataclass(frozen=True, slots=True)
class MultimodalWorkload:
    name: ClassVar[str] = "multimodal"

    num_images: int = 8
    resolutions: str = "512x512"
    questions_per_image: int = 8
    question_tokens: int = 24
    output_tokens: int = 64
    #: Put the image before the question (shared prefix) or after it (no shared prefix).
    image_first: bool = True

    def __post_init__(self) -> None:
        if self.num_images < 1 or self.questions_per_image < 1:
            raise ValueError("num_images and questions_per_image must be >= 1")
        self.resolution_list()  # fail at construction on a malformed list

    def resolution_list(self) -> list[tuple[int, int]]:
        return [parse_resolution(part) for part in self.resolutions.split(",") if part.strip()]

    def image_urls(self, seed: int) -> list[str]:
        resolutions = self.resolution_list()
        return [
            png_data_url(generate_png(*resolutions[i % len(resolutions)], "multimodal", seed, i))
            for i in range(self.num_images)
        ]

    def build(self, options: WorkloadOptions) -> list[BenchRequest]:
        per_image = self.questions_per_image
        if options.num_requests is not None:
            per_image = -(-options.num_requests // self.num_images)
        pairs = [(i, q) for i in range(self.num_images) for q in range(per_image)]
        seeded_rng("multimodal.order", options.seed).shuffle(pairs)
        if options.num_requests is not None:
            pairs = pairs[: options.num_requests]
        urls = self.image_urls(options.seed)
        requests = []
        for image, question_index in pairs:
            question = filler(self.question_tokens, "multimodal.question", options.seed, image,
                              question_index)
            image_part = {"type": "image_url", "image_url": {"url": urls[image]}}
            text_part = {"type": "text", "text": question}
            parts: list[dict[str, Any]] = (
                [image_part, text_part] if self.image_first else [text_part, image_part]
            )
            requests.append(chat_request(
                options, [{"role": "user", "content": parts}], self.output_tokens,
                prompt_tokens_hint=self.question_tokens, tag=f"image{image}",
            ))
        return requests
