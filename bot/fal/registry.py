"""The edit models the bot can use, one data entry each; a new model on fal's queue needs an entry, not code.

`ModelSpec.problems` says what a model cannot take (checked before any paid call), `ModelSpec.payload` turns
the generic `EditRequest` into that model's body, `ModelSpec.estimate` prices it. Sources of the numbers:
  [fal-js]  fal's generated endpoint types, github.com/fal-ai/fal-js libs/client/src/types/endpoints.ts @381105e
  [llms]    the model's page, fal.ai/models/<endpoint>/llms.txt
  [bfl]     Black Forest Labs' docs, docs.bfl.ai
  [2nd]     a third-party listing (lower trust), named where used
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Literal

from .models import OPTION_NAMES, EditRequest

__all__ = (
    "DEFAULT_MODEL_ID",
    "FLUX_2_PRO_EDIT",
    "KONTEXT_MAX_MULTI",
    "KONTEXT_PRO_MULTI",
    "MODELS",
    "SEEDREAM_V4_EDIT",
    "ModelSpec",
    "Option",
    "PerImage",
    "PerMegapixel",
    "Problem",
    "find_model",
    "model_by_endpoint",
    "option_choices",
    "option_span",
)

SEEDS = (0, 2**32 - 1)  # the bot's seed range; fal's types only say "integer"
MEGAPIXEL = 1024 * 1024  # fal bills FLUX.2 per 1024x1024 px, each image rounded up, at most 4 [2nd: lumenfall.ai]
MAX_BILLED_MEGAPIXELS = 4  # larger images are resized to 4 MP first [2nd: lumenfall.ai]
# fal's `image_size` presets of exactly the Kontext aspect ratios they share, and their sizes in pixels.
SIZE_OF_RATIO = MappingProxyType(
    {"1:1": "square_hd", "4:3": "landscape_4_3", "3:4": "portrait_4_3", "16:9": "landscape_16_9",
     "9:16": "portrait_16_9"}
)  # fmt: skip
PRESET_PIXELS = MappingProxyType(
    {"square_hd": 1024 * 1024, "landscape_4_3": 1024 * 768, "portrait_4_3": 768 * 1024,
     "landscape_16_9": 1024 * 576, "portrait_16_9": 576 * 1024}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Option:
    """An option a model takes: the bot's name for it, the values it allows and how it reaches fal."""

    name: str  # an `EditRequest` field (and /kontext option)
    choices: tuple[str, ...] = ()  # the allowed values of a choice ...
    span: tuple[float, float] | None = None  # ... or the inclusive range of a number
    alias: str = ""  # fal's name for it, when it differs
    mapping: Mapping[str, Any] = field(default_factory=dict)  # an exact translation of each value into fal's
    default: Any = None  # sent when the user set nothing; None leaves fal's default

    @property
    def fal_field(self) -> str:
        return self.alias or self.name

    def allows(self, value: Any) -> bool:
        if self.span is not None:
            return bool(self.span[0] <= value <= self.span[1])
        return value in self.choices

    def wire(self, value: Any) -> Any:
        return self.mapping.get(value, value)


@dataclass(frozen=True, slots=True)
class PerImage:
    """A price per output image."""

    usd: Decimal

    def estimate(self, outputs: int, output_pixels: int | None, input_pixels: Sequence[int | None]) -> Decimal:
        return self.usd * outputs


@dataclass(frozen=True, slots=True)
class PerMegapixel:
    """A price per processed megapixel: `first_usd` for the first, `extra_usd` for each further one. Each image
    counts whole megapixels (rounded up, 1 to 4); input images count too when `counts_inputs`. An unknown size
    counts as one megapixel; an output of unknown size (`auto`) as large as the first input."""

    first_usd: Decimal
    extra_usd: Decimal
    counts_inputs: bool = True

    def estimate(self, outputs: int, output_pixels: int | None, input_pixels: Sequence[int | None]) -> Decimal:
        known = [pixels for pixels in input_pixels if pixels]
        megapixels = outputs * _megapixels(output_pixels or (known[0] if known else None))
        if self.counts_inputs:
            megapixels += sum(_megapixels(pixels) for pixels in input_pixels)
        return self.first_usd + self.extra_usd * (megapixels - 1)


def _megapixels(pixels: int | None) -> int:
    return min(max(math.ceil((pixels or 0) / MEGAPIXEL), 1), MAX_BILLED_MEGAPIXELS)


@dataclass(frozen=True, slots=True)
class Problem:
    """What a model cannot take: `name` is an option (missing: `option` None; out of range: the option), or
    "images" / "images_in_and_out" with the model's `limit`."""

    model: ModelSpec
    name: str
    option: Option | None = None
    limit: int = 0


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One edit model on fal's queue."""

    id: str  # in ENABLED_MODELS, DEFAULT_MODEL and /kontext's `model` option
    name: str  # shown to users
    endpoint: str
    max_images: int  # input images
    options: tuple[Option, ...]
    pricing: PerImage | PerMegapixel
    image_field: Literal["image_urls", "image_url"] = "image_urls"  # `image_url`: one image, as a string
    fixed: Mapping[str, Any] = field(default_factory=dict)  # sent with every request
    max_images_in_and_out: int | None = None  # inputs plus outputs, where the model caps them together
    nsfw_flags: bool = False  # outputs carry `has_nsfw_concepts`
    returns_seed: bool = True

    def option(self, name: str) -> Option | None:
        return next((option for option in self.options if option.name == name), None)

    @property
    def max_outputs(self) -> int:
        option = self.option("num_images")
        return int(option.span[1]) if option is not None and option.span is not None else 1

    def problems(self, request: EditRequest) -> list[Problem]:
        """Everything in `request` this model cannot take, images first; [] when it fits."""
        found = []
        if len(request.image_urls) > self.max_images:
            found.append(Problem(self, "images", limit=self.max_images))
        for name in OPTION_NAMES:
            option = self.option(name)
            if request.is_set(name) and (option is None or not option.allows(getattr(request, name))):
                found.append(Problem(self, name, option))
        total = len(request.image_urls) + request.num_images
        if self.max_images_in_and_out is not None and total > self.max_images_in_and_out:
            found.append(Problem(self, "images_in_and_out", limit=self.max_images_in_and_out))
        return found

    def payload(self, request: EditRequest) -> dict[str, Any]:
        """This model's request body; raises `ValueError` for a request it cannot take (check `problems` first)."""
        if problems := self.problems(request):
            raise ValueError(f"{self.id} cannot take {', '.join(problem.name for problem in problems)}")
        urls = list(request.image_urls)
        body: dict[str, Any] = {"prompt": request.prompt, self.image_field: urls[0] if self.single_image else urls}
        for option in self.options:
            value = getattr(request, option.name) if request.is_set(option.name) else option.default
            if value is not None:
                body[option.fal_field] = option.wire(value)
        return {**body, **self.fixed}

    @property
    def single_image(self) -> bool:
        return self.image_field == "image_url"

    def estimate(self, request: EditRequest) -> Decimal:
        """The expected price of `request` on this model."""
        size = self.payload(request).get("image_size")
        output_pixels = PRESET_PIXELS.get(size) if isinstance(size, str) else None
        pixels = request.image_pixels or (None,) * len(request.image_urls)
        return self.pricing.estimate(request.num_images, output_pixels, pixels)


# --- the entries ----------------------------------------------------------------------------------------

KONTEXT_OPTIONS = (
    Option("guidance_scale", span=(1, 20)),  # [fal-js] FluxKontextMultiInput; fal's API reference: 1-20
    # Always sent, as the bot did before the registry (1-4: fal's API reference for kontext/multi).
    Option("num_images", span=(1, 4), default=1),
    Option("output_format", choices=("jpeg", "png"), default="jpeg"),
    Option("safety_tolerance", choices=("1", "2", "3", "4", "5", "6")),  # strings on the wire
    Option("aspect_ratio", choices=("21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21")),
    Option("seed", span=SEEDS),
)
# An aspect ratio reaches FLUX.2 and Seedream as the `image_size` preset of exactly that ratio; the others
# (21:9, 3:2, 2:3, 9:21) have none and are refused.
RATIO_AS_SIZE = Option("aspect_ratio", choices=tuple(SIZE_OF_RATIO), alias="image_size", mapping=SIZE_OF_RATIO)

KONTEXT_MAX_MULTI = ModelSpec(
    id="kontext-max-multi",
    name="FLUX.1 Kontext [max] multi",
    endpoint="fal-ai/flux-pro/kontext/max/multi",
    # fal publishes no maximum (only >= 1); integrations use 2-4 (a ComfyUI node, resellers): 4 is the safe side.
    max_images=4,
    options=KONTEXT_OPTIONS,
    pricing=PerImage(Decimal("0.08")),  # per output image [2nd: lumenfall.ai, resellers mirroring fal]
    nsfw_flags=True,  # [fal-js] FluxProV11Output: images, seed, has_nsfw_concepts, prompt, timings
)
KONTEXT_PRO_MULTI = ModelSpec(
    id="kontext-pro-multi",
    name="FLUX.1 Kontext [pro] multi",
    endpoint="fal-ai/flux-pro/kontext/multi",  # [fal-js] the same input and output types as [max] multi
    max_images=4,
    options=KONTEXT_OPTIONS,
    pricing=PerImage(Decimal("0.04")),  # [llms] fal-ai/flux-pro/kontext/multi
    nsfw_flags=True,
)
FLUX_2_PRO_EDIT = ModelSpec(
    id="flux-2-pro-edit",
    name="FLUX.2 [pro] edit",
    endpoint="fal-ai/flux-2-pro/edit",  # [fal-js] Flux2ProEditInput: no num_images, guidance or aspect_ratio
    # [bfl] "Reference images per model": FLUX.2 [pro] up to 8 through the API (third parties say 9).
    max_images=8,
    options=(
        Option("output_format", choices=("jpeg", "png")),
        Option("safety_tolerance", choices=("1", "2", "3", "4", "5")),  # [fal-js] "1"-"5" here, not "6"
        RATIO_AS_SIZE,
        Option("seed", span=SEEDS),
    ),
    # No `has_nsfw_concepts` comes back, so the bot cannot withhold flagged images: fal's checker stays on.
    fixed=MappingProxyType({"enable_safety_checker": True}),
    # $0.03 the first processed MP, $0.015 each further one, input images counted: [2nd: landscape §1.2,
    # lumenfall.ai]; [bfl] pricing "FLUX.2 [pro] image editing from $0.045" (one 1 MP input + 1 MP out) agrees,
    # as does [llms] fal-ai/flux-2-max/edit ("Input images counted as processed megapixel").
    pricing=PerMegapixel(Decimal("0.03"), Decimal("0.015")),
)
SEEDREAM_V4_EDIT = ModelSpec(
    id="seedream-v4-edit",
    name="Seedream 4.0 edit",
    endpoint="fal-ai/bytedance/seedream/v4/edit",  # [fal-js] SeedDream4EditInput: no output_format or safety level
    max_images=10,  # [llms] "up to 10 image inputs"
    options=(
        Option("num_images", span=(1, 6)),  # [llms] 1 to 6 generations (`max_images` stays 1: one image each)
        RATIO_AS_SIZE,
        Option("seed", span=SEEDS),
    ),
    fixed=MappingProxyType({"enable_safety_checker": True}),  # as for FLUX.2: no flags in the output
    max_images_in_and_out=15,  # [llms] "image inputs + image outputs must not exceed 15"
    pricing=PerImage(Decimal("0.03")),  # [llms] "$0.03 per images"
)

MODELS: tuple[ModelSpec, ...] = (KONTEXT_MAX_MULTI, KONTEXT_PRO_MULTI, FLUX_2_PRO_EDIT, SEEDREAM_V4_EDIT)
DEFAULT_MODEL_ID = KONTEXT_MAX_MULTI.id
_BY_ID = {model.id: model for model in MODELS}
_BY_ENDPOINT = {model.endpoint: model for model in MODELS}


def find_model(name: str) -> ModelSpec | None:
    """A registered model by its id or its endpoint id."""
    return _BY_ID.get(name) or _BY_ENDPOINT.get(name.strip("/"))


def model_by_endpoint(endpoint: str) -> ModelSpec:
    """The model a job was submitted to; raises `LookupError` for an endpoint no entry has."""
    try:
        return _BY_ENDPOINT[endpoint]
    except KeyError:
        raise LookupError(f"no registered model has the endpoint {endpoint}") from None


def option_choices(name: str, models: Sequence[ModelSpec] = MODELS) -> tuple[str, ...]:
    """Every value some model allows for a choice option, in first-seen order."""
    values = (value for model in models if (option := model.option(name)) for value in option.choices)
    return tuple(dict.fromkeys(values))


def option_span(name: str, models: Sequence[ModelSpec] = MODELS) -> tuple[float, float]:
    """The widest range some model allows for a numeric option."""
    spans = [option.span for model in models if (option := model.option(name)) and option.span is not None]
    return min(low for low, _ in spans), max(high for _, high in spans)
