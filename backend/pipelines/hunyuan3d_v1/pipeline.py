"""``hunyuan3d-1-lite`` and ``hunyuan3d-1-std``: Hunyuan3D-1 end to end, from a prompt or a picture.

Steps of ``run``:

1. check the weights: the multiview folder and SVRM, and HunyuanDiT when the input is text;
2. ``text_to_image`` (text only): HunyuanDiT draws the object on a white background;
3. ``background``: the object is cut out and framed on a 512x512 transparent square;
4. ``condition``, ``multiview``, ``decode``: the multiview model draws six views around it;
5. ``encode``, ``triplane``, ``mesh``: SVRM reconstructs a vertex-coloured mesh from the views.

Every model part is a memory-manager component, so every memory mode applies; ``stage`` mode is
upstream's ``--save_memory``. The picture without background, the views grid and the generated
picture (for text) come back with the mesh.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ...errors import BackendError
from ...images import decode_image, encode_png
from ...protocol import ErrorCode
from ...texture.stage import TEXTURE, TEXTURE_PARAMS
from ...weights import HUNYUAN_DIT, MVD_LITE, MVD_STD, SVRM_FOLDER, WeightFolder, check_folder, check_folders, require_folders
from .. import register
from ..base import MAX_FACES, SEED, JobContext, JobRequest, Param, Pipeline, PipelineOutput, WeightsReport
from .svrm_pipeline import MESH_FINISH, RESOLUTION

if TYPE_CHECKING:

    from .multiview import MultiviewModel

PREVIEW_STEPS = 10  # a quick look at the shape a seed gives; the denoiser's later steps add detail
STEPS = Param("steps", int, 50, "denoising steps of the multiview model (50 upstream; fewer is faster, rougher)", minimum=1, maximum=200,
              preview=PREVIEW_STEPS)
REMOVE_BACKGROUND = Param("remove_background", bool, True,
                          "cut the object out of its background first (a picture's own transparency is kept)")
BACKGROUND_METHOD = Param(
    "background_method", str, "auto",
    "how to remove the background: auto (the picture's alpha, else rembg if installed with its model, else border colour), "
    "alpha, rembg or border",
    choices=("auto", "alpha", "rembg", "border"), advanced=True,
)
TEXT_STEPS = Param("text_steps", int, 25, "denoising steps of text-to-image (25 upstream)", minimum=1, maximum=100, advanced=True)
TEXT_IMAGE_SIZE = Param("text_image_size", int, 1024, "side of the picture text-to-image draws (1024 upstream)",
                        minimum=64, maximum=2048, advanced=True)


def _view_size(default: int) -> Param:
    return Param("view_size", int, default, f"side of each generated view in pixels ({default} upstream)", minimum=16, maximum=1024,
                 advanced=True)


class Hunyuan3D1Pipeline(Pipeline):
    """Shared by lite and std; subclasses name their multiview folder and model."""

    stages = ("text_to_image", "background", "condition", "multiview", "decode", "encode", "triplane", "mesh")
    inputs = ("image", "text")
    requires_one_of = ("image", "text")
    scales_with = {"multiview": "steps", "text_to_image": "text_steps"}
    multiview_folder: ClassVar[WeightFolder]
    component_prefix: ClassVar[str]

    @property
    def multiview_class(self) -> type[MultiviewModel]:
        raise NotImplementedError

    def register_components(self, memory: Any, request: JobRequest | None = None) -> list[str]:
        from .components import register_components
        from .svrm_pipeline import register_svrm
        from .text_to_image import PARTS

        if request is None:  # every part whose weights are present
            checks = [check_folder(folder, self.weights_dir) for folder in self._folders(text=True)]
            roots = {check.folder: check.path for check in checks if check.ready}
        else:
            folders = self._folders(text="image" not in request.images)
            roots = dict(zip(folders, require_folders(folders, self.weights_dir)))
        names: list[str] = []
        if self.multiview_folder in roots:
            names += register_components(memory, roots[self.multiview_folder], self.component_prefix, self.multiview_class.parts).values()
        if SVRM_FOLDER in roots:
            names += register_svrm(memory, roots[SVRM_FOLDER] / "svrm.safetensors")
        if HUNYUAN_DIT in roots:
            names += register_components(memory, roots[HUNYUAN_DIT], "hunyuandit", PARTS).values()
        return names

    def _folders(self, text: bool) -> list[WeightFolder]:
        return [self.multiview_folder, SVRM_FOLDER] + ([HUNYUAN_DIT] if text else [])

    def check_weights(self) -> WeightsReport:
        _checks, report = check_folders(self._folders(text=False), self.weights_dir)
        if report.ready:
            _dit, dit_report = check_folders([HUNYUAN_DIT], self.weights_dir)
            if not dit_report.ready:
                report.where += "; text prompts also need HunyuanDiT: " + dit_report.download
        return report

    def validate(self, request: JobRequest) -> JobRequest:
        request = super().validate(request)
        if request.text is not None and "image" in request.images:
            raise BackendError(ErrorCode.BAD_INPUT, f"{self.name} takes a prompt or a picture, not both",
                               hint="leave out the prompt to use the picture, or the picture to draw the prompt")
        require_folders(self._folders(text="image" not in request.images), self.weights_dir)
        return request

    def run(self, request: JobRequest, ctx: JobContext) -> PipelineOutput:
        from .background import prepare_condition_image
        from .components import register_components
        from .svrm_pipeline import reconstruct
        from .text_to_image import draw_prompt

        memory = ctx.memory
        params = request.params
        from_text = "image" not in request.images

        # 1. Weights, checked before anything loads.
        roots = require_folders(self._folders(text=from_text), self.weights_dir)
        multiview_root, svrm_root = roots[0], roots[1]
        self.register_components(memory, request)  # every part of the job, so --memory auto plans on all of them
        images: dict[str, bytes] = {}
        info: dict[str, Any] = {"weights": {"multiview": str(multiview_root), "svrm": str(svrm_root)}}

        # 2. Text to image.
        if from_text:
            picture = draw_prompt(roots[2], request.text or "", ctx, seed=params["seed"], steps=params["text_steps"],
                                  size=params["text_image_size"])
            images["text_image"] = encode_png(picture)
            info["weights"]["text_to_image"] = str(roots[2])
        else:
            picture = decode_image(request.images["image"], "image")

        # 3. Background removal and framing.
        ctx.progress("background", 0, 1, "removing the background")
        method = params["background_method"] if params["remove_background"] else "none"
        condition, used = prepare_condition_image(picture, method)
        images["input"] = encode_png(condition)
        info["background"] = used
        ctx.progress("background", 1, 1, f"background: {used}")

        # 4. Six views.
        names = register_components(memory, multiview_root, self.component_prefix, self.multiview_class.parts)
        model = self.multiview_class(multiview_root, names)
        ctx.progress("condition", 0, 1, "encoding the picture for the multiview model")
        views = model.generate(ctx, condition, seed=params["seed"], steps=params["steps"], guidance=params["guidance"],
                               view_size=params["view_size"])
        images["views"] = encode_png(views.grid)

        # 5. Reconstruction.
        import torch

        torch.manual_seed(params["seed"])
        mesh, svrm_info = reconstruct(svrm_root / "svrm.safetensors", views.views, views.condition, ctx,
                                      resolution=params["resolution"], max_faces=params["max_faces"], finish=params["mesh_finish"])
        info["triplane"] = svrm_info["triplane"]
        return PipelineOutput(mesh=mesh, images=images, info=info)


@register
class Hunyuan3D1LitePipeline(Hunyuan3D1Pipeline):
    name = "hunyuan3d-1-lite"
    description = "Hunyuan3D-1 lite: a prompt or a picture to a vertex-coloured mesh through six 320-pixel views (faster, less memory)"
    params = (
        SEED, STEPS, MAX_FACES, REMOVE_BACKGROUND,
        Param("guidance", float, 1.0, "strength of the lite model's per-view guidance (1.0 = upstream's schedule)",
              minimum=0.0, maximum=5.0, advanced=True),
        BACKGROUND_METHOD, TEXT_STEPS, TEXT_IMAGE_SIZE, _view_size(320), RESOLUTION, MESH_FINISH,
        TEXTURE, *TEXTURE_PARAMS,
    )
    multiview_folder = MVD_LITE
    component_prefix = "mvd_lite"

    @property
    def multiview_class(self) -> type[MultiviewModel]:
        from .multiview import LiteMultiview

        return LiteMultiview


@register
class Hunyuan3D1StdPipeline(Hunyuan3D1Pipeline):
    name = "hunyuan3d-1-std"
    description = "Hunyuan3D-1 standard: a prompt or a picture to a vertex-coloured mesh through six 512-pixel views"
    params = (
        SEED, STEPS, MAX_FACES, REMOVE_BACKGROUND,
        Param("guidance", float, 2.0, "classifier-free guidance of the views (2.0 upstream)", minimum=1.0, maximum=20.0, advanced=True),
        BACKGROUND_METHOD, TEXT_STEPS, TEXT_IMAGE_SIZE, _view_size(512), RESOLUTION, MESH_FINISH,
        TEXTURE, *TEXTURE_PARAMS,
    )
    multiview_folder = MVD_STD
    component_prefix = "mvd_std"

    @property
    def multiview_class(self) -> type[MultiviewModel]:
        from .multiview import StdMultiview

        return StdMultiview
