"""``hunyuan3d-1-svrm``: Hunyuan3D-1's reconstruction stage on its own.

Takes the 3x2 grid of six views a Hunyuan3D-1 multiview model produces and the condition
image they were generated from, and returns a vertex-coloured mesh. Steps:

1. find ``svrm/svrm.safetensors`` and read the model's sizes from it;
2. split the grid, order the views by azimuth, resize and normalise, attach the cameras;
3. ``encode``: the camera-modulated DINOv2 encoder turns the seven images into tokens;
4. ``triplane``: the transformer turns the tokens into the 3-plane feature volume;
5. ``mesh``: the synthesizer's SDF is sampled on a grid, the surface extracted and coloured.

Each model part is a memory-manager component, so ``stage`` and ``stream`` modes apply to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import BackendError
from ...images import decode_image
from ...protocol import ErrorCode
from ...weights import SVRM_WEIGHTS, locate, require
from .. import register
from ..base import MAX_FACES, JobContext, JobRequest, Param, Pipeline, PipelineOutput, WeightsReport
from . import PRECISION

if TYPE_CHECKING:
    from PIL import Image

    from ...mesh import Mesh

RESOLUTION = Param(
    "resolution", int, 384, "samples per axis of the grid the surface is extracted from (384 upstream; lower is faster, coarser)",
    minimum=32, maximum=1024, advanced=True, preview=128,
)
MESH_FINISH = Param(
    "mesh_finish", str, "clean",
    "how the surface is finished: clean (floaters removed, decimated to max_faces) or upstream (Hunyuan3D-1's: "
    "vertices clustered on a 0.007 grid and smoothed twice, floaters kept, decimated only above max_faces)",
    choices=("clean", "upstream"), advanced=True,
)
# Hunyuan3D-1 clusters the marching-cubes vertices on a grid of this size (SVRM's units) before smoothing.
UPSTREAM_CLUSTER_SIZE = 0.007
VIEW_LAYOUT = Param(
    "view_layout", str, "std", "which multiview model drew the views grid: std (1024x1536) or lite (640x960); they order views differently",
    choices=("std", "lite"), advanced=True,
)
# Half the side of the cube the triplane spans; SVRM's points live in [-0.6, 0.6]^3.
BOUND = 0.6
# SVRM's world is Z up with the front view's camera on +X; (y, z, x) is the Y-up, front-on-+Z mesh frame.
MESH_AXES = (1, 2, 0)
# Working memory of one SDF query point: three planes' features in float32, their copies and the MLP.
BYTES_PER_QUERY_POINT = 4096
QUERY_BUDGET_BYTES = 1 << 30
# Memory-manager component name of each SVRM part.
COMPONENTS = {"encoder": "svrm.encoder", "triplane": "svrm.triplane", "synthesizer": "svrm.synthesizer"}


def register_svrm(memory: Any, path: Path) -> list[str]:
    """Tell the memory manager how to load each SVRM part from ``path``; returns their names."""
    from .svrm.loading import load_component, read_config
    from .svrm.model import COMPONENT_PREFIXES

    config = read_config(path)
    block_lists = {
        "encoder": lambda module: list(module.model.blocks),
        "triplane": lambda module: list(module.img_to_triplane_decoder.transformer_blocks),
        "synthesizer": None,
    }
    for part, name in COMPONENTS.items():
        memory.register(name, lambda part=part: load_component(path, part, config), precision=PRECISION, files=[path],
                        prefix=COMPONENT_PREFIXES[part], blocks=block_lists[part])
    return list(COMPONENTS.values())


@register
class SVRMPipeline(Pipeline):
    name = "hunyuan3d-1-svrm"
    description = "Hunyuan3D-1 reconstruction only: a 3x2 grid of six views plus the condition image to a vertex-coloured mesh"
    stages = ("encode", "triplane", "mesh")
    params = (MAX_FACES, RESOLUTION, MESH_FINISH, VIEW_LAYOUT)
    inputs = ("views", "image")
    requires_one_of = ("views",)

    def check_weights(self) -> WeightsReport:
        return locate(SVRM_WEIGHTS, self.weights_dir)[1]

    def validate(self, request: JobRequest) -> JobRequest:
        request = super().validate(request)
        if "image" not in request.images:
            raise BackendError(
                ErrorCode.BAD_INPUT,
                f"{self.name} needs the condition image as well as the views",
                hint="pass the picture the views were generated from as the image input (--image)",
            )
        return request

    def register_components(self, memory: Any, request: JobRequest | None = None) -> list[str]:
        path = locate(SVRM_WEIGHTS, self.weights_dir)[0] if request is None else require(SVRM_WEIGHTS, self.weights_dir)
        return [] if path is None else register_svrm(memory, path)

    def run(self, request: JobRequest, ctx: JobContext) -> PipelineOutput:
        from .svrm.preprocess import LITE_VIEW_ORDER, STD_VIEW_ORDER, split_view_grid

        params = request.params
        path = require(SVRM_WEIGHTS, self.weights_dir)
        register_svrm(ctx.memory, path)
        order = STD_VIEW_ORDER if params["view_layout"] == "std" else LITE_VIEW_ORDER
        views = split_view_grid(decode_image(request.images["views"], "views"), order)
        mesh, info = reconstruct(path, views, decode_image(request.images["image"], "image"), ctx,
                                 resolution=params["resolution"], max_faces=params["max_faces"], finish=params["mesh_finish"])
        return PipelineOutput(mesh=mesh, info=info)


def reconstruct(path: Path, views: list[Image.Image], condition: Image.Image, ctx: JobContext, *,
                resolution: int, max_faces: int, finish: str = "clean") -> tuple[Mesh, dict[str, Any]]:
    """SVRM's three stages: six views (azimuth 0..300) and the condition image to a coloured mesh."""
    import torch

    from ...mesh import extract_mesh
    from .svrm.loading import read_config
    from .svrm.preprocess import prepare_inputs

    memory = ctx.memory
    config = read_config(path)
    images, cameras = prepare_inputs(views, condition, config.image_size)
    register_svrm(memory, path)
    device = memory.device

    ctx.progress("encode", 0, 1, "encoding the views")

    def encode(modules: dict[str, torch.nn.Module]) -> torch.Tensor:
        dtype = memory.compute_dtype(COMPONENTS["encoder"])
        with torch.inference_mode():
            return modules[COMPONENTS["encoder"]](images.to(device, dtype), cameras.to(device, dtype))

    context = ctx.run_stage("encode", [COMPONENTS["encoder"]], encode)
    ctx.progress("encode", 1, 1)
    ctx.progress("triplane", 0, 1, "building the triplane")

    def build_triplane(modules: dict[str, torch.nn.Module]) -> torch.Tensor:
        dtype = memory.compute_dtype(COMPONENTS["triplane"])
        with torch.inference_mode():
            return modules[COMPONENTS["triplane"]](context.to(dtype))

    triplane = ctx.run_stage("triplane", [COMPONENTS["triplane"]], build_triplane)
    ctx.progress("triplane", 1, 1)

    def extract(modules: dict[str, torch.nn.Module]) -> Mesh:
        synthesizer = modules[COMPONENTS["synthesizer"]]

        def sdf(points: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return synthesizer(triplane, points[None])[0][0]

        def color(points: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return synthesizer(triplane, points[None])[1][0]

        return extract_mesh(
            sdf,
            color,
            resolution=resolution,
            bound=BOUND,
            max_faces=max_faces,
            cluster_size=UPSTREAM_CLUSTER_SIZE if finish == "upstream" else 0.0,
            memory_budget=QUERY_BUDGET_BYTES,
            bytes_per_point=BYTES_PER_QUERY_POINT,
            device=device,
            axes=MESH_AXES,
            progress=lambda step, total: ctx.progress("mesh", step, total),
            check_cancelled=ctx.check_cancelled,
        )

    mesh = ctx.run_stage("mesh", [COMPONENTS["synthesizer"]], extract, activation_bytes=QUERY_BUDGET_BYTES)
    if not mesh.face_count:
        raise BackendError(
            ErrorCode.JOB_FAILED,
            "the reconstruction found no surface in the views",
            hint="check that the views grid and the condition image show the same object on a white background",
        )
    return mesh, {"weights": str(path), "triplane": list(triplane.shape)}
