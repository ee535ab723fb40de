"""``hunyuan3d-2-paint``: paint a texture on a mesh you send (the add-on's Texture Selected, ``generate --mesh``).

Steps of ``run``: ``text_to_image`` (a prompt only: HunyuanDiT draws the object, as for the shape
models), ``background`` (the picture's background cut out), then the texture stage
(``stage.texture_mesh``: delight, unwrap, views, paint, bake). Shape models reach the same stage
with their ``texture`` option.
"""

from __future__ import annotations

from typing import Any

from ..errors import BackendError
from ..images import decode_image, encode_png
from ..pipelines import register
from ..pipelines.base import SEED, JobContext, JobRequest, Pipeline, PipelineOutput, WeightsReport
from ..pipelines.hunyuan3d_v1.pipeline import BACKGROUND_METHOD, REMOVE_BACKGROUND, TEXT_IMAGE_SIZE, TEXT_STEPS
from ..protocol import ErrorCode
from .stage import STAGES, TEXTURE_PARAMS, paint_folders, paint_picture, register_texture_parts, require_paint_weights


@register
class Hunyuan3D2PaintPipeline(Pipeline):
    name = "hunyuan3d-2-paint"
    description = "Hunyuan3D-2 Paint: a texture for a mesh you send, painted from a picture or a prompt"
    stages = ("text_to_image", "background", *STAGES)
    params = (SEED, REMOVE_BACKGROUND, BACKGROUND_METHOD, TEXT_STEPS, TEXT_IMAGE_SIZE, *TEXTURE_PARAMS)
    inputs = ("mesh", "image", "text")
    requires_one_of = ("image", "text")

    def check_weights(self) -> WeightsReport:
        from ..weights import check_folders

        return check_folders(paint_folders("auto", self.weights_dir), self.weights_dir)[1]

    def register_components(self, memory: Any, request: JobRequest | None = None) -> list[str]:
        from ..weights import check_folder

        params = {"paint_model": "auto"} if request is None else request.params
        folders = paint_folders(params["paint_model"], self.weights_dir, accelerated=memory.device.type != "cpu")
        if request is None and not all(check_folder(folder, self.weights_dir).ready for folder in folders):
            return []
        return [name for names in register_texture_parts(memory, params, self.weights_dir).names.values() for name in names]

    def validate(self, request: JobRequest) -> JobRequest:
        from ..weights import HUNYUAN_DIT, require_folders

        request = super().validate(request)
        if request.mesh is None:
            raise BackendError(ErrorCode.BAD_INPUT, f"{self.name} paints a mesh you send, and got none",
                               hint="send the mesh as the mesh.positions and mesh.faces buffers (generate --mesh FILE)")
        if request.text is not None and request.images:
            raise BackendError(ErrorCode.BAD_INPUT, f"{self.name} takes a prompt or a picture, not both",
                               hint="leave out the prompt to paint from the picture, or the picture to draw the prompt")
        require_paint_weights(request.params, self.weights_dir)
        if request.text is not None:
            require_folders([HUNYUAN_DIT], self.weights_dir)
        return request

    def run(self, request: JobRequest, ctx: JobContext) -> PipelineOutput:
        params = request.params
        images: dict[str, bytes] = {}
        register_texture_parts(ctx.memory, params, self.weights_dir)  # first, so `--memory auto` plans on the whole job
        if request.text is not None:
            from ..pipelines.hunyuan3d_v1.text_to_image import draw_prompt
            from ..weights import HUNYUAN_DIT, require_folders

            (root,) = require_folders([HUNYUAN_DIT], self.weights_dir)
            picture = draw_prompt(root, request.text, ctx, seed=params["seed"], steps=params["text_steps"], size=params["text_image_size"])
            images["text_image"] = encode_png(picture)
        else:
            picture = decode_image(request.images["image"], "image")
        painted = paint_picture(ctx, request.mesh, picture, params, self.weights_dir)
        return PipelineOutput(painted.mesh, images | painted.images, painted.info)
