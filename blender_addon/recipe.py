"""How a generated object was made, kept on it as custom properties so it travels in the .blend. No bpy.

The object's ``hunyuan3d`` property holds the model, the seed the backend used, the prompt
or the input picture's path (the path, not the picture: a .blend stays small and the
picture is read again when the object is regenerated), a multiview model's other pictures'
paths by view name (as JSON), every parameter (as JSON, so their
types survive), the finishing done in Blender (as JSON, when there was some), the backend's
version and the quality: "full", "preview" (made with the pipeline's preview values;
``full_params`` keeps the full ones, for Refine) or "refined".
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .errors import AddonError
from .finishing_options import FinishingOptions
from .session import GenerationRequest

QUALITIES = ("full", "preview", "refined")

PROPERTY = "hunyuan3d"
SEED_LIMIT = 2**31  # seeds are 0 .. 2**31 - 1 for every model the backend has


class RecipeError(AddonError):
    """An object's stored settings can't be read back."""


def to_properties(request: GenerationRequest, seed: int | None, backend_version: str) -> dict[str, Any]:
    """What to store on the object: the request as sent, with the seed the backend reports it used."""
    params = dict(request.params)
    if seed is not None:
        params["seed"] = seed
    stored: dict[str, Any] = {"model": request.pipeline, "params": json.dumps(params, sort_keys=True),
                              "backend_version": backend_version, "quality": request.quality}
    if request.full_params is not None:
        stored["full_params"] = json.dumps(request.full_params, sort_keys=True)
    if seed is not None:
        stored["seed"] = seed
    if request.image_path:
        stored["image_path"] = request.image_path
    if request.views:
        stored["views"] = json.dumps(request.views, sort_keys=True)
    if request.text is not None:
        stored["prompt"] = request.text
    if request.finishing.active:
        stored["finishing"] = request.finishing.to_json()
    return stored


def from_properties(stored: Mapping[str, Any]) -> GenerationRequest:
    """The request that makes the object again; RecipeError when the property was edited into something unusable."""
    try:
        params = json.loads(stored["params"])
        model = str(stored["model"])
        views = json.loads(stored.get("views", "{}"))
        full_params = json.loads(stored["full_params"]) if "full_params" in stored else None
        quality = str(stored.get("quality", "full"))
    except (KeyError, TypeError, ValueError) as exc:
        raise RecipeError(f"This object's Hunyuan3D settings are damaged ({exc})",
                          "generate it again from the panel's inputs") from None
    if not isinstance(params, dict):
        raise RecipeError("This object's Hunyuan3D parameters are not a JSON object", "generate it again from the panel's inputs")
    if not isinstance(views, dict) or not all(isinstance(path, str) for path in views.values()):
        raise RecipeError("This object's Hunyuan3D views are not a JSON object of picture paths",
                          "generate it again from the panel's inputs")
    if quality not in QUALITIES or (quality == "preview") != isinstance(full_params, dict):
        raise RecipeError(f"This object's Hunyuan3D quality ({quality}) does not match its stored parameters",
                          "generate it again from the panel's inputs")
    finishing = FinishingOptions.from_json(stored["finishing"]) if "finishing" in stored else FinishingOptions()
    image_path = stored.get("image_path") or None
    text = None if image_path else str(stored.get("prompt", ""))
    return GenerationRequest(model, params, text=text, image_path=image_path, views=views if image_path else {},
                             quality=quality, full_params=full_params, finishing=finishing)


def with_new_seeds(request: GenerationRequest, count: int, rng: random.Random | None = None) -> list[GenerationRequest]:
    """``count`` copies of the request, each with its own seed, none equal to the request's own."""
    rng = rng or random.Random()
    taken = {request.params.get("seed")}
    seeds: list[int] = []
    while len(seeds) < count:
        seed = rng.randrange(SEED_LIMIT)
        if seed not in taken:
            taken.add(seed)
            seeds.append(seed)
    return [replace(request, params={**request.params, "seed": seed}) for seed in seeds]


def as_preview(request: GenerationRequest, pipeline: Mapping[str, Any]) -> GenerationRequest:
    """The request with the preview value of every parameter the pipeline's description gives one (``preview``).

    RecipeError when the pipeline declares none: its preview would cost a full run.
    """
    cheap = {spec["name"]: spec["preview"] for spec in pipeline.get("params", []) if "preview" in spec}
    if not cheap:
        raise RecipeError(f"{request.pipeline} has no quicker preview settings",
                          "use Variations on a generated object instead: it runs at full quality")
    return replace(request, params={**request.params, **cheap}, quality="preview", full_params=dict(request.params))


def refined(preview: GenerationRequest) -> GenerationRequest:
    """A preview's request at full quality: its full parameters with the seed the preview was made with."""
    if preview.quality != "preview" or preview.full_params is None:
        raise RecipeError("This object is not a preview", "Refine works on objects made by Preview Variations")
    params = {**preview.full_params, "seed": preview.params["seed"]} if "seed" in preview.params else dict(preview.full_params)
    return replace(preview, params=params, quality="refined", full_params=None)
