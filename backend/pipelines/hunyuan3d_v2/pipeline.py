"""The Hunyuan3D-2 shape pipelines: ``hunyuan3d-2``, ``hunyuan3d-2mini``, ``hunyuan3d-2mv``, each with ``-fast`` and ``-turbo``.

Steps of ``run``:

1. check the weights: the DiT folder (``config.yaml`` and its combined checkpoint), plus the
   turbo VAE folder when decoding with FlashVDM, and HunyuanDiT for a prompt;
2. ``text_to_image`` (prompt only): HunyuanDiT draws the object, as for Hunyuan3D-1;
3. ``background``: the object is cut out of each picture and framed (``preprocess``);
4. ``condition``: DINOv2 turns the picture (or the named views) into image tokens;
5. ``sampling``: the DiT turns noise into shape latents, one progress event per step;
6. ``decoding``: the ShapeVAE turns the latents into tokens and the occupancy grid is decoded
   (plain, hierarchical or FlashVDM), chunk by chunk;
7. ``mesh``: marching cubes, clean-up and decimation to our mesh, in our frame.

Conditioner, DiT and VAE are separate memory-manager components with block lists, so every
memory mode applies; cancelling takes effect between steps and between decoding chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ...errors import BackendError
from ...images import decode_image, encode_png
from ...protocol import ErrorCode
from ...texture.stage import TEXTURE, TEXTURE_PARAMS
from ...weights import HUNYUAN3D_2_MODELS, HUNYUAN_DIT, WeightFolder, check_folder, check_folders, require_folders
from .. import register
from ..base import SEED, JobContext, JobRequest, Param, Pipeline, PipelineOutput, WeightsReport
from ..hunyuan3d_v1.pipeline import BACKGROUND_METHOD, PREVIEW_STEPS, REMOVE_BACKGROUND, TEXT_IMAGE_SIZE, TEXT_STEPS
from .config import CONFIG_FILE, VIEW_NAMES, WEIGHTS_FILE, read_config

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from .config import ModelConfig

# What Hunyuan3D-2 computes in on an accelerator (upstream casts every part to float16); the
# memory manager resolves it per device (float32 on the CPU), whatever dtype the files hold.
PRECISION = "float16"
DECODERS = ("flashvdm", "hierarchical", "plain")
GUIDANCE = Param("guidance", float, 5.0, "guidance scale: how closely the shape follows the picture (5.0 upstream)",
                 minimum=0.0, maximum=20.0)
CHUNK_SIZE = Param("chunk_size", int, 8000, "grid points per decoder call; lower needs less memory (8000 upstream)",
                   minimum=1000, maximum=1_000_000, advanced=True)
MAX_FACES = Param("max_faces", int, 40000, "decimate the mesh to at most this many triangles (40000 upstream)",
                  minimum=100, maximum=5_000_000)
PREVIEW_OCTREE_RESOLUTION = 128  # a preview's grid: an eighth of the default's decoder queries or fewer
# The extra views of the multiview model; its front view is the ``image`` input.
EXTRA_VIEWS = tuple(name for name in VIEW_NAMES if name != "front")


def _steps(default: int, maximum: int) -> Param:
    return Param("steps", int, default, f"denoising steps ({default} upstream; fewer is faster, rougher)", minimum=1, maximum=maximum,
                 preview=PREVIEW_STEPS if default > PREVIEW_STEPS else None)


def _octree(default: int) -> Param:
    return Param("octree_resolution", int, default,
                 f"cells per axis of the grid the surface is extracted from ({default} upstream; 256 is quicker, coarser)",
                 minimum=16, maximum=1024, advanced=True, preview=PREVIEW_OCTREE_RESOLUTION)


def _decoder(default: str) -> Param:
    return Param("volume_decoder", str, default,
                 "how the grid is decoded: flashvdm (coarse to fine with adaptive attention; uses the turbo VAE), "
                 f"hierarchical (coarse to fine) or plain (every point) ({default} upstream for this model)",
                 choices=DECODERS, advanced=True)


class Hunyuan3D2Pipeline(Pipeline):
    """Shared by every Hunyuan3D-2 shape model (and Hunyuan3D-2.1, which overrides its folder, config reading and parts)."""

    stages = ("text_to_image", "background", "condition", "sampling", "decoding", "mesh")
    inputs = ("image", "text")
    requires_one_of = ("image", "text")
    scales_with = {"sampling": "steps", "text_to_image": "text_steps"}
    multiview: ClassVar[bool] = False

    @property
    def dit_folder(self) -> WeightFolder:
        return HUNYUAN3D_2_MODELS[self.name][0]

    @property
    def turbo_vae_folder(self) -> WeightFolder | None:
        """The VAE that FlashVDM decoding swaps in; None when the model decodes with its own."""
        return HUNYUAN3D_2_MODELS[self.name][1]

    def _folders(self, decoder: str, text: bool = False) -> list[WeightFolder]:
        turbo_vae = [self.turbo_vae_folder] if decoder == "flashvdm" and self.turbo_vae_folder else []
        return [self.dit_folder] + turbo_vae + ([HUNYUAN_DIT] if text else [])

    def read_config(self, dit_root: Path) -> ModelConfig:
        return read_config(dit_root)

    def register_parts(self, memory: Any, dit_root: Path, turbo_vae_root: Path | None, config: ModelConfig,
                       decoding: Callable[[int], int]) -> dict[str, str]:
        """Declare the conditioner, DiT and VAE with the memory manager (the VAE's stage needing
        ``decoding(itemsize)`` bytes besides its weights); returns their names."""
        return register_parts(memory, dit_root, turbo_vae_root, config, decoding)

    def _default_decoder(self) -> str:
        return next(p.default for p in self.params if p.name == "volume_decoder")

    def register_components(self, memory: Any, request: JobRequest | None = None) -> list[str]:
        from ..hunyuan3d_v1.components import register_components
        from ..hunyuan3d_v1.text_to_image import PARTS

        params = request.params if request is not None else {param.name: param.default for param in self.params}
        decoder = params["volume_decoder"]
        if request is None:  # every part whose weights are present
            checks = [check_folder(folder, self.weights_dir) for folder in self._folders(decoder, text=True)]
            roots = {check.folder: check.path for check in checks if check.ready}
        else:
            folders = self._folders(decoder, text=request.text is not None)
            roots = dict(zip(folders, require_folders(folders, self.weights_dir)))
        names: list[str] = []
        if self.dit_folder in roots:
            dit_root = roots[self.dit_folder]
            turbo_vae_root = roots.get(self.turbo_vae_folder) if decoder == "flashvdm" and self.turbo_vae_folder else None
            config = self.read_config(dit_root)
            names += self.register_parts(memory, dit_root, turbo_vae_root, config, decoding_bytes(config, params)).values()
        if HUNYUAN_DIT in roots:
            names += register_components(memory, roots[HUNYUAN_DIT], "hunyuandit", PARTS).values()
        return names

    def check_weights(self) -> WeightsReport:
        report = check_folders(self._folders(self._default_decoder()), self.weights_dir)[1]
        if report.ready:
            text_report = check_folders([HUNYUAN_DIT], self.weights_dir)[1]
            if not text_report.ready:
                report.where += "; text prompts also need HunyuanDiT: " + text_report.download
        return report

    def validate(self, request: JobRequest) -> JobRequest:
        request = super().validate(request)
        if request.text is not None and request.images:
            raise BackendError(ErrorCode.BAD_INPUT, f"{self.name} takes a prompt or pictures, not both",
                               hint="leave out the prompt to use the pictures, or the pictures to draw the prompt")
        require_folders(self._folders(request.params["volume_decoder"], text=request.text is not None), self.weights_dir)
        return request

    def run(self, request: JobRequest, ctx: JobContext) -> PipelineOutput:
        from .preprocess import order_views, prepare_picture

        memory = ctx.memory
        params = request.params

        # 1. Weights and configuration, checked before anything loads.
        from_text = request.text is not None
        roots = require_folders(self._folders(params["volume_decoder"], text=from_text), self.weights_dir)
        config = self.read_config(roots[0])
        if config.conditioner.multiview != self.multiview:
            raise BackendError(ErrorCode.WEIGHTS_CORRUPT, f"{roots[0]} is not a {'multiview' if self.multiview else 'single-picture'} model",
                               hint=f"download it again: {self.dit_folder.repo_id}, folder {self.dit_folder.folder}")
        # Every part is declared before the first stage runs (HunyuanDiT's by draw_prompt), so `--memory auto` plans on the whole job.
        turbo_vae_root = roots[1] if params["volume_decoder"] == "flashvdm" and self.turbo_vae_folder else None
        decoding = decoding_bytes(config, params)
        names = self.register_parts(memory, roots[0], turbo_vae_root, config, decoding)
        info: dict[str, Any] = {"weights": [str(root) for root in roots]}
        images: dict[str, bytes] = {}

        # 2. Text to image.
        if from_text:
            from ..hunyuan3d_v1.text_to_image import draw_prompt

            drawn = draw_prompt(roots[-1], request.text or "", ctx, seed=params["seed"], steps=params["text_steps"],
                                size=params["text_image_size"])
            images["text_image"] = encode_png(drawn)
            pictures = {"image": drawn}
        else:
            pictures = {name: decode_image(data, name) for name, data in request.images.items()}

        # 3. Background removal and framing.
        ctx.progress("background", 0, 1, "removing the background")
        if self.multiview:
            pictures["front"] = pictures.pop("image")
        view_names, view_indices = order_views(pictures) if self.multiview else (["image"], None)
        prepared, used = [], {}
        for view in view_names:
            picture, used[view] = _cut_out(pictures[view], params)
            prepared.append(prepare_picture(picture, config.image_processor))
        images |= {("input" if view in ("image", "front") else f"input_{view}"): encode_png(p) for view, p in zip(view_names, prepared)}
        info["background"] = used
        ctx.progress("background", 1, 1)

        # 4. Image tokens.
        condition = self._condition(ctx, names["conditioner"], prepared, view_indices)

        # 5. Sampling.
        latents = self._sample(ctx, names["dit"], config, condition, params)
        info["latents"] = list(latents.shape)

        # 6 and 7. Decoding and the mesh.
        mesh, decode_info = self._decode(ctx, names["vae"], latents, params, decoding)
        info.update(decode_info)
        return PipelineOutput(mesh=mesh, images=images, info=info)

    def _condition(self, ctx: JobContext, name: str, prepared: list[Image.Image], view_indices: list[int] | None) -> torch.Tensor:
        import torch

        from .preprocess import to_tensor

        memory = ctx.memory
        ctx.progress("condition", 0, 1, "encoding the picture" + ("s" if len(prepared) > 1 else ""))
        pixels = torch.cat([to_tensor(p) for p in prepared])[None] if self.multiview else to_tensor(prepared[0])

        def encode(modules: dict[str, torch.nn.Module]) -> torch.Tensor:
            with torch.inference_mode():
                return modules[name](pixels.to(memory.device, memory.compute_dtype(name)), view_indices)

        tokens = ctx.run_stage("condition", [name], encode)
        ctx.progress("condition", 1, 1)
        return tokens

    def _sample(self, ctx: JobContext, name: str, config: ModelConfig, condition: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        import torch

        from .sampler import Guidance, initial_noise, sample

        memory = ctx.memory
        steps = params["steps"]
        dtype = memory.compute_dtype(name)
        latent_shape = (1, int(config.vae.get("num_latents", 0)), config.dit.in_channels)
        noise = initial_noise(params["seed"], latent_shape, dtype, memory.device)
        guidance = Guidance(params["guidance"], embedded=config.dit.guidance_embed)
        ctx.progress("sampling", 0, steps, "sampling the shape")

        def after_step(done: int, total: int, _latents: torch.Tensor) -> None:
            memory.between_steps()
            ctx.progress("sampling", done, total)

        def run(modules: dict[str, torch.nn.Module]) -> torch.Tensor:
            with torch.inference_mode():
                return sample(modules[name], condition.to(memory.device, dtype), noise, config.scheduler, steps, guidance,
                              on_step=after_step)

        return ctx.run_stage("sampling", [name], run)

    def _decode(self, ctx: JobContext, name: str, latents: torch.Tensor, params: dict[str, Any],
                decoding: Callable[[int], int]) -> tuple[Any, dict[str, Any]]:
        import torch

        from ...memory.stats import GB
        from .volume import decode_grid_bytes, decode_volume, volume_to_mesh

        memory = ctx.memory
        method = params["volume_decoder"]
        ctx.progress("decoding", 0, 100, f"decoding the shape ({method})")

        def decode(modules: dict[str, torch.nn.Module]) -> Any:
            vae, dtype = modules[name], memory.compute_dtype(name)
            with torch.inference_mode():
                tokens = vae.latents_to_tokens(latents.to(memory.device, dtype))
            grid_device = grids_device(memory, decoding(dtype.itemsize))
            if grid_device != memory.device:
                ctx.note(f"decoding: the grids ({decode_grid_bytes(params['octree_resolution']) / GB:.1f} GB) stay in host memory, "
                         f"{memory.spare_bytes() / GB:.1f} GB is spare on {memory.info.name or memory.device}")
            return decode_volume(vae, tokens, method=method, octree_resolution=params["octree_resolution"],
                                 num_chunks=params["chunk_size"],
                                 progress=lambda fraction: ctx.progress("decoding", round(100 * fraction), 100),
                                 check_cancelled=ctx.check_cancelled, grid_device=grid_device)

        volume = ctx.run_stage("decoding", [name], decode)
        ctx.progress("mesh", 0, 4, "extracting the surface")
        mesh = volume_to_mesh(volume, max_faces=params["max_faces"], progress=lambda step, total: ctx.progress("mesh", step, total),
                              check_cancelled=ctx.check_cancelled)
        if not mesh.face_count:
            raise BackendError(ErrorCode.JOB_FAILED, "the decoded shape has no surface",
                               hint="try another seed, or a picture of one object on a plain background")
        return mesh, {"grid": volume.resolution, "decoded_points": volume.stats.points}


def _cut_out(picture: Image.Image, params: dict[str, Any]) -> tuple[Image.Image, str]:
    from ..hunyuan3d_v1.background import cut_out

    return cut_out(picture, params["background_method"] if params["remove_background"] else "none")


def grids_device(memory: Any, need_bytes: int) -> torch.device:
    """Where a decoding keeps its grids: with the decoder, where the work between its calls is quickest,
    unless the decoding's ``need_bytes`` exceed what is spare there (a large octree on a small GPU): then in host memory."""
    import torch

    if memory.device.type == "cpu" or memory.spare_bytes() >= need_bytes:
        return memory.device
    return torch.device("cpu")


def decoding_bytes(config: ModelConfig, params: dict[str, Any]) -> Callable[[int], int]:
    """``itemsize -> bytes`` the decoding stage needs besides the VAE's weights, at the job's octree
    resolution and chunk size (the turbo VAE decodes at the same width as the DiT folder's)."""
    from .vae import ShapeVAEConfig
    from .volume import decode_memory_bytes

    return partial(decode_memory_bytes, ShapeVAEConfig.from_params(config.vae), params["octree_resolution"], params["chunk_size"])


def register_parts(memory: Any, dit_root: Path, vae_root: Path | None, config: ModelConfig,
                   decoding: Callable[[int], int]) -> dict[str, str]:
    """Declare the conditioner, the DiT and the VAE (that of ``vae_root`` when given, else the DiT
    file's; its stage needs ``decoding(itemsize)`` bytes besides its weights); returns their names.

    The three parts share one file; each is the tensors under its prefix, so the manager reads
    their sizes and storage dtypes from the file's header before anything loads.
    """
    from .loading import CONDITIONER_PREFIX, DIT_PREFIX, VAE_PREFIX, load_conditioner, load_dit

    path = dit_root / WEIGHTS_FILE
    memory.register(f"{dit_root.name}.conditioner", lambda: load_conditioner(path, config), precision=PRECISION,
                    files=[path], prefix=CONDITIONER_PREFIX, blocks=lambda module: module.blocks())
    memory.register(f"{dit_root.name}.dit", lambda: load_dit(path, config), precision=PRECISION,
                    files=[path], prefix=DIT_PREFIX, blocks=lambda module: module.blocks())
    vae_name = vae_root.name if vae_root else f"{dit_root.name}.vae"
    memory.register(vae_name, lambda: _load_vae(vae_root, dit_root, config), precision=PRECISION,
                    files=[vae_root / WEIGHTS_FILE if vae_root else path], prefix="" if vae_root else VAE_PREFIX,
                    blocks=lambda module: list(module.blocks), working_bytes=decoding)
    return {"conditioner": f"{dit_root.name}.conditioner", "dit": f"{dit_root.name}.dit", "vae": vae_name}


def _load_vae(vae_root: Path | None, dit_root: Path, config: ModelConfig) -> torch.nn.Module:
    """The VAE-only folder's ShapeVAE when given (FlashVDM's turbo VAE), else the ``vae.*`` part of the DiT folder's file."""
    from .vae import ShapeVAEConfig, load_shape_vae

    if vae_root is not None:
        vae_config = ShapeVAEConfig.from_params(read_vae_params(vae_root), vae_root / CONFIG_FILE)
        return load_shape_vae(vae_root / WEIGHTS_FILE, vae_config, combined=False)
    return load_shape_vae(dit_root / WEIGHTS_FILE, ShapeVAEConfig.from_params(config.vae, dit_root / CONFIG_FILE), combined=True)


def read_vae_params(folder: Path) -> dict[str, Any]:
    """The ``params`` of a VAE-only folder's ``config.yaml`` (``target`` and ``params`` at the top level)."""
    import yaml

    from ...memory.loading import WeightsError

    path = folder / CONFIG_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise WeightsError(path, f"cannot be read ({exc})", hint="download the VAE folder again") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("params"), dict):
        raise WeightsError(path, "has no params mapping", hint="download the VAE folder again")
    return raw["params"]


def _define(name: str, description: str, *, turbo: bool, multiview: bool) -> type[Hunyuan3D2Pipeline]:
    params = (
        SEED,
        _steps(5, 50) if turbo else _steps(50, 200),
        GUIDANCE,
        MAX_FACES,
        REMOVE_BACKGROUND,
        BACKGROUND_METHOD,
        TEXT_STEPS,
        TEXT_IMAGE_SIZE,
        _octree(380 if turbo else 384),
        _decoder("flashvdm" if turbo else "plain"),
        CHUNK_SIZE,
        TEXTURE,
        *TEXTURE_PARAMS,
    )
    attributes = {"name": name, "description": description, "params": params, "multiview": multiview}
    if multiview:
        attributes["inputs"] = ("image", *EXTRA_VIEWS, "text")
    cls = type(name.replace("-", "_").title().replace("_", "") + "Pipeline", (Hunyuan3D2Pipeline,), attributes)
    return register(cls)


_FAMILIES = {
    "hunyuan3d-2": "Hunyuan3D-2: a picture to a shape (1.1 B DiT)",
    "hunyuan3d-2mini": "Hunyuan3D-2mini: a picture to a shape (0.6 B DiT, faster, less memory)",
    "hunyuan3d-2mv": "Hunyuan3D-2mv: front, left, back and right pictures (any of them with the front) to one shape",
}
_VARIANTS = {
    "": "",
    "-fast": "; guidance-distilled, one model pass per step",
    "-turbo": "; step-distilled, 5 steps, FlashVDM decoding",
}
PIPELINES = {family + variant: _define(family + variant, description + detail, turbo=variant == "-turbo", multiview=family.endswith("mv"))
             for family, description in _FAMILIES.items() for variant, detail in _VARIANTS.items()}
