"""The texture stage: a mesh and a picture of the object in, the mesh with a painted UV texture out.

The steps, as hy3dgen 2.0.2's paint pipeline takes them:

1. ``delight``: the object's picture (background removed) is re-centred with a border of 20% of
   its size on each side, and the delight model takes the lighting out of it;
2. ``unwrap``: xatlas cuts the mesh into UV charts packed for the texture size;
3. ``views``: the six official views of the mesh (fitted into the views' sphere) are rendered at
   the texture size, and their normal and position images are the paint model's conditions;
4. ``paint``: the multiview paint model paints the six views from the delit picture;
5. ``bake``: the painted views, scaled to the texture size, are blended into the texture with the
   weight ``view_weight * cos^4``, and the texels no view saw are filled.

Weights are found, checked and loaded as for every model (``backend/weights.py``); each model
is a memory-manager component, so every memory mode applies. Cancelling takes effect between
steps (xatlas runs to its end once started).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendError
from ..pipelines.base import Param
from ..protocol import ErrorCode
from .paint import DELIGHT_STEPS, PAINT_GUIDANCE, PAINT_SEED, PAINT_STEPS, TURBO_STEPS

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ..mesh import Mesh
    from ..pipelines.base import JobContext, JobRequest, PipelineOutput
    from ..weights import WeightFolder

RECENTER_BORDER = 0.2  # hy3dgen's recenter_image: the border on each side, as a share of the object's size
PAINT_MODELS = ("auto", "turbo", "standard")
STAGES = ("delight", "unwrap", "views", "paint", "bake")
VIEW_SETS = {"six": 6, "four": 4}  # how many of the official views, in their order

TEXTURE = Param("texture", bool, False, "paint a texture on the mesh with Hunyuan3D-2 Paint (needs its delight and paint weights)")
PAINT_MODEL = Param("paint_model", str, "auto",
                    "multiview paint model: turbo (distilled, faster) or standard; auto takes turbo on the CPU, standard on a GPU, "
                    "whichever is present if only one is", choices=PAINT_MODELS, advanced=True)
TEXTURE_SIZE = Param("texture_size", int, 2048, "texture width and height in pixels (2048 upstream); the views are rendered "
                     "and baked at this size too", minimum=64, maximum=4096, advanced=True)
TEXTURE_SEED = Param("texture_seed", int, PAINT_SEED, f"random seed of the paint model ({PAINT_SEED} upstream)", minimum=0,
                     maximum=2**31 - 1, advanced=True)
# The two paint models' upstream step counts differ, and auto picks the model only once the device is known.
TEXTURE_STEPS = Param("texture_steps", int, 0, f"denoising steps of the paint model; 0 is its upstream count ({PAINT_STEPS} standard, "
                      f"{TURBO_STEPS} turbo)", minimum=0, maximum=200, advanced=True)
TEXTURE_GUIDANCE = Param("texture_guidance", float, PAINT_GUIDANCE,
                         f"guidance scale of the standard paint model: how closely the views follow the picture ({PAINT_GUIDANCE} "
                         "upstream); the turbo model is guidance-distilled and takes none", minimum=0.0, maximum=20.0, advanced=True)
TEXTURE_VIEWS = Param("texture_views", str, "six", "views the paint model paints: six (front, right, back, left, top, "
                      "bottom, as upstream) or four (the sides only: faster, top and bottom filled from them)",
                      choices=tuple(VIEW_SETS), advanced=True)
DELIGHT_STEPS_PARAM = Param("delight_steps", int, DELIGHT_STEPS, f"denoising steps of the delight model ({DELIGHT_STEPS} upstream)",
                            minimum=1, maximum=200, advanced=True)
# What a job that paints takes besides its shape parameters; ``texture`` turns it on for shape models.
TEXTURE_PARAMS = (PAINT_MODEL, TEXTURE_SIZE, TEXTURE_SEED, TEXTURE_STEPS, TEXTURE_GUIDANCE, TEXTURE_VIEWS, DELIGHT_STEPS_PARAM)


@dataclass
class TexturedResult:
    mesh: Mesh
    images: dict[str, Image.Image]  # the delit picture and each painted view
    info: dict[str, Any]


def paint_folders(paint_model: str, weights_dir: str | None, accelerated: bool | None = None) -> list[WeightFolder]:
    """The delight folder and the paint folder ``paint_model`` names; ``auto`` resolves as ``PAINT_MODEL`` says.

    ``accelerated`` is None while the device is not known yet (validating a request): auto then
    takes whichever paint folder is present, turbo first.
    """
    from ..weights import HUNYUAN3D_2_DELIGHT, HUNYUAN3D_2_PAINT, HUNYUAN3D_2_PAINT_TURBO, check_folder

    if paint_model == "turbo":
        return [HUNYUAN3D_2_DELIGHT, HUNYUAN3D_2_PAINT_TURBO]
    if paint_model == "standard":
        return [HUNYUAN3D_2_DELIGHT, HUNYUAN3D_2_PAINT]
    preferred = [HUNYUAN3D_2_PAINT, HUNYUAN3D_2_PAINT_TURBO] if accelerated else [HUNYUAN3D_2_PAINT_TURBO, HUNYUAN3D_2_PAINT]
    present = next((folder for folder in preferred if check_folder(folder, weights_dir).ready), preferred[0])
    return [HUNYUAN3D_2_DELIGHT, present]


def require_paint_weights(params: dict[str, Any], weights_dir: str | None, accelerated: bool | None = None) -> tuple[Path, Path, bool]:
    """(delight root, paint root, turbo) for a job's parameters, or the usual error with the download command."""
    from ..weights import HUNYUAN3D_2_PAINT_TURBO, require_folders

    folders = paint_folders(params["paint_model"], weights_dir, accelerated)
    delight_root, paint_root = require_folders(folders, weights_dir)
    return delight_root, paint_root, folders[1] == HUNYUAN3D_2_PAINT_TURBO


@dataclass(frozen=True)
class PaintParts:
    names: dict[str, list[str]]  # memory-manager components: {"delight": [...], "paint": [...]}
    turbo: bool
    roots: tuple[Path, Path]  # the delight and paint folders


def register_texture_parts(memory: Any, params: dict[str, Any], weights_dir: str | None) -> PaintParts:
    """Declare the delight and paint models a job's parameters choose (registering again is free)."""
    from .paint import register_paint_parts

    delight_root, paint_root, turbo = require_paint_weights(params, weights_dir, accelerated=memory.device.type != "cpu")
    return PaintParts(register_paint_parts(memory, delight_root, paint_root, turbo=turbo), turbo, (delight_root, paint_root))


def recenter(picture: Image.Image) -> Image.Image:
    """The object cropped to its alpha box and centred on a transparent square with a border (hy3dgen's recenter_image)."""
    from PIL import Image

    rgba = picture.convert("RGBA")
    rows, cols = np.nonzero(np.asarray(rgba)[..., 3])
    if rows.size == 0:
        raise BackendError(ErrorCode.BAD_INPUT, "the picture is fully transparent: there is no object to take colours from",
                           hint="use a picture of the object on a plain background, or with a transparent background")
    crop = rgba.crop((int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1))
    width, height = crop.size
    border_x, border_y = int(width * RECENTER_BORDER), int(height * RECENTER_BORDER)
    side = max(width + 2 * border_x, height + 2 * border_y)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 0))
    square.paste(crop, ((side - width - 2 * border_x) // 2 + border_x, (side - height - 2 * border_y) // 2 + border_y))
    return square


def _to_image(pixels: torch.Tensor) -> Image.Image:
    import torch
    from PIL import Image

    return Image.fromarray((pixels.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy(), "RGB")


def texture_mesh(ctx: JobContext, mesh: Mesh, picture: Image.Image, params: dict[str, Any], weights_dir: str | None) -> TexturedResult:
    """Paint ``mesh`` (our frame: Y up, front towards +Z) from ``picture`` (RGBA, background transparent).

    ``params`` holds ``TEXTURE_PARAMS``' values. Returns the mesh split along its UV seams, with
    UVs, its normals carried over, no vertex colours, and the base colour texture.
    """
    import torch

    from ..mesh import Material, Mesh
    from .bake import bake_views, fill_texture
    from .paint import DELIGHT_GUIDANCE, DELIGHT_IMAGE_GUIDANCE, DELIGHT_SEED, PAINT_SIZE, delight, paint_views
    from .uv import check_mesh, rasterize_uv, unwrap
    from .views import fit_to_views, official_views, render_view, vertex_normals

    memory = ctx.memory
    try:
        positions, faces = check_mesh(mesh.positions, mesh.faces)
    except ValueError as exc:
        raise BackendError(ErrorCode.BAD_INPUT, f"the mesh cannot be textured: {exc}", hint="send a triangulated mesh with finite positions") from None
    parts = register_texture_parts(memory, params, weights_dir)
    names, turbo = parts.names, parts.turbo
    size = params["texture_size"]
    images: dict[str, Image.Image] = {}

    # 1. The picture, re-centred and delit.
    ctx.progress("delight", 0, 1, "taking the lighting out of the picture")
    delit = delight(ctx, names["delight"], recenter(picture), seed=DELIGHT_SEED, steps=params["delight_steps"],
                    guidance=DELIGHT_GUIDANCE, image_guidance=DELIGHT_IMAGE_GUIDANCE)
    images["delit"] = delit

    # 2. UV charts.
    ctx.progress("unwrap", 0, 1, f"cutting {len(faces)} faces into UV charts")
    try:
        uv_mesh = unwrap(positions, faces, texture_size=size, check_cancelled=ctx.check_cancelled)
    except ValueError as exc:
        raise BackendError(ErrorCode.BAD_INPUT, f"the mesh cannot be unwrapped: {exc}", hint="clean the mesh up and try again") from None
    except RuntimeError as exc:
        raise BackendError(ErrorCode.JOB_FAILED, str(exc), hint="try again; if it keeps failing, try the mesh with fewer faces") from None
    ctx.progress("unwrap", 1, 1)

    # 3. The views' conditions, rendered at the texture size as upstream renders them, scaled to the paint model's size.
    device = memory.device
    fitted = fit_to_views(torch.from_numpy(positions).to(device))
    face_index = torch.from_numpy(faces).to(device)
    normals = vertex_normals(fitted, face_index)
    views = official_views()[:VIEW_SETS[params["texture_views"]]]
    normal_images, position_images = [], []
    for i, view in enumerate(views):
        ctx.progress("views", i, len(views), "rendering the views' normals and positions")
        maps = render_view(fitted, face_index, view, size, normals=normals)
        normal_images.append(_to_image(maps.normal_image()).resize((PAINT_SIZE, PAINT_SIZE)))
        position_images.append(_to_image(maps.position_image()).resize((PAINT_SIZE, PAINT_SIZE)))
    ctx.progress("views", len(views), len(views))

    # 4. The painted views.
    painted = paint_views(ctx, names["paint"], delit, normal_images, position_images, seed=params["texture_seed"],
                          steps=params["texture_steps"] or (TURBO_STEPS if turbo else PAINT_STEPS), guidance=params["texture_guidance"],
                          turbo=turbo, views=views)
    images |= {f"view_{i}": view for i, view in enumerate(painted)}

    # 5. Bake and fill.
    ctx.progress("bake", 0, 2, "baking the views into the texture")
    source = torch.from_numpy(uv_mesh.source_vertex).to(device)
    texels = rasterize_uv(fitted[source], torch.from_numpy(uv_mesh.faces).to(device), torch.from_numpy(uv_mesh.uvs).to(device),
                          normals[source], size)
    view_pixels = [torch.from_numpy(np.asarray(view.convert("RGB").resize((size, size)), dtype=np.float32) / 255).to(device)
                   for view in painted]
    bake = bake_views(texels, fitted, face_index, views, view_pixels)
    ctx.progress("bake", 1, 2, "filling the texels no view saw")
    texture = fill_texture(bake, texels, uv_mesh)
    ctx.progress("bake", 2, 2)
    base_color = (texture.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    seen = float(bake.seen[texels.mask].float().mean()) if bool(texels.mask.any()) else 0.0
    result = Mesh(uv_mesh.positions, uv_mesh.faces, normals=None if mesh.normals is None else mesh.normals[uv_mesh.source_vertex],
                  uvs=uv_mesh.uvs, material=Material(base_color=base_color))
    info = {"paint_model": "turbo" if turbo else "standard", "texture_size": size, "texels_seen": round(seen, 4),
            "weights": [str(root) for root in parts.roots]}
    return TexturedResult(result, images, info)


def paint_picture(ctx: JobContext, mesh: Mesh, picture: Image.Image, params: dict[str, Any], weights_dir: str | None) -> PipelineOutput:
    """``texture_mesh`` after the picture's background is cut out as the job's parameters say; pictures PNG-encoded."""
    from ..images import encode_png
    from ..pipelines.base import PipelineOutput
    from ..pipelines.hunyuan3d_v1.background import cut_out

    ctx.progress("background", 0, 1, "removing the background of the picture to paint from")
    method = params.get("background_method", "auto") if params.get("remove_background", True) else "none"
    picture, used = cut_out(picture, method)
    ctx.progress("background", 1, 1)
    textured = texture_mesh(ctx, mesh, picture, params, weights_dir)
    images = {f"texture_{name}": encode_png(image) for name, image in textured.images.items()}
    return PipelineOutput(textured.mesh, images, {**textured.info, "background": used})


def texture_output(ctx: JobContext, output: PipelineOutput, request: JobRequest, weights_dir: str | None) -> PipelineOutput:
    """A shape job's output with its mesh painted from the job's picture, or from the picture drawn from its prompt."""
    from ..images import decode_image
    from ..pipelines.base import PipelineOutput

    if "image" in request.images:
        picture = decode_image(request.images["image"], "image")
    elif "text_image" in output.images:
        picture = decode_image(output.images["text_image"], "text_image")
    else:
        raise BackendError(ErrorCode.BAD_INPUT, f"{request.pipeline} has no picture of the object to paint the texture from",
                           hint="give a picture (or, for models that draw one, a prompt)")
    painted = paint_picture(ctx, output.mesh, picture, request.params, weights_dir)
    return PipelineOutput(painted.mesh, output.images | painted.images, {**output.info, "texture": painted.info})
