"""``nano``: one picture to a vertex-coloured mesh with the small model trained on procedural shapes.

Steps:

1. ``prepare``: read the picture and find the object. An alpha channel with any transparency
   is the object's mask. Without one, the background is taken to be the median colour of the
   picture's outermost pixels, and pixels far from that colour are the object (so a photo
   on a plain backdrop works; a busy background does not). The object is then cropped and
   scaled into the square picture the model reads;
2. ``encode``: the model turns the picture into its triplane;
3. ``mesh``: the signed distance is sampled on a grid, the surface extracted and coloured,
   and turned into the shared mesh frame (Y up, the picture's view along -Z). The grid is
   filled coarse to fine: a half-resolution pass, upsampled, and exact samples only in the
   band around the surface, where marching cubes reads them. The trained field is close to a
   true distance there, so the band is a few coarse cells wide; this saves most of the
   point-MLP work, which dominates the run on a CPU.

Nano is deterministic: the same picture always gives the same mesh, whatever the seed.
torch is imported only inside ``run``; importing this module registers the pipeline.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import BackendError
from ...protocol import ErrorCode
from ...texture.stage import TEXTURE, TEXTURE_PARAMS
from .. import register
from ..base import MAX_FACES, SEED, JobContext, JobRequest, Param, Pipeline, PipelineOutput, WeightsReport

if TYPE_CHECKING:
    import numpy as np

RESOLUTION = Param("resolution", int, 128, "samples per axis of the grid the surface is extracted from (higher is finer and slower)",
                   minimum=32, maximum=512, advanced=True, preview=64)
COMPONENT = "nano"
# Trained and calibrated in float32; the model is small, so half precision would save little.
PRECISION = "float32"
WEIGHTS_NAME = "nano.safetensors"
# The model's field lives Z up with the camera on +X; (y, z, x) is the Y-up mesh frame, view along -Z.
MESH_AXES = (1, 2, 0)
BACKGROUND_TOLERANCE = (0.06, 0.14)  # colour distance from the backdrop: below is background, above is object
BORDER_PIXELS = 2
MESH_STEPS = 5  # the grid, then mesh_from_grid's four
CHUNK_POINTS = 1 << 17  # points per model query: about 150 MB of activations
BAND_CELLS = 3.0  # coarse cells either side of the surface that are sampled exactly


def bundled_weights() -> Path:
    return Path(__file__).resolve().parent / "weights" / WEIGHTS_NAME


def weights_path(weights_dir: str | None) -> Path | None:
    """``nano/nano.safetensors`` or ``nano.safetensors`` in the user's folder, else the file shipped with the backend."""
    if weights_dir:
        root = Path(weights_dir).expanduser()
        for candidate in (root / "nano" / WEIGHTS_NAME, root / WEIGHTS_NAME):
            if candidate.is_file():
                return candidate
    return bundled_weights() if bundled_weights().is_file() else None


def picture_to_rgba(data: bytes) -> np.ndarray:
    """(H, W, 4) float32 RGBA in [0, 1] with the object's mask in alpha (see the module docstring)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        picture = Image.open(io.BytesIO(data))
        picture.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise BackendError(ErrorCode.BAD_INPUT, f"the image input is not a readable picture: {exc}", hint="send a PNG or JPEG") from None
    has_alpha = picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info
    rgba = np.asarray(picture.convert("RGBA"), dtype=np.float32) / 255.0
    if has_alpha and rgba[..., 3].min() < 1.0:
        return rgba
    rgb = rgba[..., :3]
    border = np.concatenate([rgb[:BORDER_PIXELS].reshape(-1, 3), rgb[-BORDER_PIXELS:].reshape(-1, 3),
                             rgb[:, :BORDER_PIXELS].reshape(-1, 3), rgb[:, -BORDER_PIXELS:].reshape(-1, 3)])
    backdrop = np.median(border, axis=0)
    distance = np.linalg.norm(rgb - backdrop, axis=-1)
    low, high = BACKGROUND_TOLERANCE
    alpha = np.clip((distance - low) / (high - low), 0.0, 1.0)
    return np.concatenate([rgb, alpha[..., None]], axis=-1)


def sample_sdf_coarse_to_fine(sdf_fn, resolution: int, bound: float, device, check_cancelled=None) -> np.ndarray:
    """(resolution,)^3 float32 samples over [-bound, bound]^3, exact within ``BAND_CELLS`` coarse cells of the surface."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ...mesh import sample_grid
    from ...mesh.grid import grid_axis, query_points

    coarse_resolution = max(2, (resolution + 1) // 2)
    coarse = sample_grid(sdf_fn, coarse_resolution, bound, chunk_points=CHUNK_POINTS, device=device, check_cancelled=check_cancelled)
    grid = F.interpolate(torch.from_numpy(coarse)[None, None], size=(resolution,) * 3, mode="trilinear", align_corners=True)[0, 0]
    margin = BAND_CELLS * 2.0 * bound / (coarse_resolution - 1)
    band = (grid.abs() < margin).nonzero()
    if check_cancelled is not None:
        check_cancelled()
    if len(band):
        axis = torch.from_numpy(grid_axis(resolution, bound))
        exact = query_points(sdf_fn, axis[band].numpy(), chunk_points=CHUNK_POINTS, device=device)
        grid[band[:, 0], band[:, 1], band[:, 2]] = torch.from_numpy(exact.reshape(-1))
    return grid.numpy().astype(np.float32)


@register
class NanoPipeline(Pipeline):
    name = "nano"
    description = "Nano: a small picture-to-3D model trained on simple procedural shapes; a few seconds on any CPU, offline"
    stages = ("prepare", "encode", "mesh")
    scales_with = {"mesh": ("resolution", 2.5)}  # coarse to fine: between the band's square and the grid's cube
    params = (SEED, MAX_FACES, RESOLUTION, TEXTURE, *TEXTURE_PARAMS)
    inputs = ("image",)
    requires_one_of = ("image",)

    def check_weights(self) -> WeightsReport:
        from ...weights import unreadable_reason

        path = weights_path(self.weights_dir)
        if path is None:
            return WeightsReport(ready=False, where="searched the weights folder and the backend's own files",
                                 missing=[f"nano/{WEIGHTS_NAME}"],
                                 download="python -m backend.pipelines.nano.train (Nano is trained locally, see the README)")
        problem = unreadable_reason(path)
        if problem is not None:
            return WeightsReport(ready=False, where=str(path), missing=[f"{WEIGHTS_NAME} ({problem})"],
                                 download="python -m backend.pipelines.nano.train")
        return WeightsReport(ready=True, where=str(path))

    def _require_weights(self) -> Path:
        report = self.check_weights()
        if not report.ready:
            raise BackendError(ErrorCode.WEIGHTS_MISSING, f"missing {', '.join(report.missing)} ({report.where})", hint=report.download)
        return Path(report.where)

    def register_components(self, memory, request: JobRequest | None = None) -> list[str]:
        from .checkpoint import load_model

        path = weights_path(self.weights_dir) if request is None else self._require_weights()
        if path is None:
            return []
        memory.register(COMPONENT, lambda: load_model(path), precision=PRECISION, files=[path])
        return [COMPONENT]

    def run(self, request: JobRequest, ctx: JobContext) -> PipelineOutput:
        import torch

        from ...mesh import mesh_from_grid
        from .checkpoint import read_config
        from .render import frame_object

        params = request.params
        path = self._require_weights()
        config = read_config(path)
        memory = ctx.memory
        self.register_components(memory, request)

        ctx.progress("prepare", 0, 1, "finding the object in the picture")
        rgba = torch.from_numpy(picture_to_rgba(request.images["image"]))
        if not (rgba[..., 3] > 0.5).any():
            raise BackendError(ErrorCode.BAD_INPUT, "found no object in the picture",
                               hint="use a picture with a transparent background, or the object on a plain backdrop")
        framed = frame_object(rgba, config.image_size).permute(2, 0, 1)[None]
        ctx.progress("prepare", 1, 1)

        device, dtype = memory.device, memory.compute_dtype(COMPONENT)

        ctx.progress("encode", 0, 1, "reading the picture")

        def encode(modules):
            with torch.inference_mode():
                return modules[COMPONENT].encode(framed.to(device, dtype))

        planes = ctx.run_stage("encode", [COMPONENT], encode)
        ctx.progress("encode", 1, 1)

        def extract(modules):
            model = modules[COMPONENT]

            def sdf(points: torch.Tensor) -> torch.Tensor:
                with torch.inference_mode():
                    return model.query(planes, points[None].to(dtype))[0][0].float()

            def color(points: torch.Tensor) -> torch.Tensor:
                with torch.inference_mode():
                    return model.query(planes, points[None].to(dtype))[1][0].float()

            ctx.progress("mesh", 0, MESH_STEPS, "sampling the field")
            grid = sample_sdf_coarse_to_fine(sdf, params["resolution"], config.bound, device, ctx.check_cancelled)
            return mesh_from_grid(
                grid, config.bound, color_fn=color, max_faces=params["max_faces"], chunk_points=CHUNK_POINTS, device=device, axes=MESH_AXES,
                progress=lambda step, total: ctx.progress("mesh", step, total), progress_offset=1, progress_total=MESH_STEPS,
                check_cancelled=ctx.check_cancelled,
            )

        mesh = ctx.run_stage("mesh", [COMPONENT], extract)
        if not mesh.face_count:
            raise BackendError(ErrorCode.JOB_FAILED, "the model found no surface in this picture",
                               hint="Nano knows simple shapes seen from the side or a little above; try another picture")
        preview = io.BytesIO()
        from PIL import Image

        Image.fromarray((framed[0].permute(1, 2, 0).numpy() * 255.0 + 0.5).astype("uint8"), "RGBA").save(preview, format="PNG")
        return PipelineOutput(mesh=mesh, images={"input": preview.getvalue()},
                              info={"weights": str(path), "device": str(memory.device), "seed": params["seed"]})
