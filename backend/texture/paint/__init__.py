"""Hunyuan3D-2 Paint's models: delighting (``hunyuan3d-delight-v2-0``) and multiview paint (``hunyuan3d-paint-v2-0``, ``-turbo``).

Our own implementation, loading the released folders strictly: diffusers classes where the
released configs map to them (UNets, VAEs, CLIP text encoder, the Euler ancestral sampler), our
2.5D additions to the paint UNet (``unet.py``). Every part goes through the memory manager.

    names = register_paint_parts(memory, delight_root, paint_root, turbo=False)
    picture = delight(ctx, names["delight"], picture, seed=DELIGHT_SEED, steps=DELIGHT_STEPS,
                      guidance=DELIGHT_GUIDANCE, image_guidance=DELIGHT_IMAGE_GUIDANCE)
    views = paint_views(ctx, names["paint"], picture, normal_images, position_images,
                        seed=PAINT_SEED, steps=PAINT_STEPS, guidance=PAINT_GUIDANCE, turbo=False)

docs/texture.md describes the models, their folders, parameters and how they are checked
against the official code.
"""

from .loading import register_paint_parts
from .sampling import DELIGHT_SIZE, PAINT_SIZE, TURBO_STEPS, delight, paint_views

# Upstream's defaults (hy3dgen 2.0.2: Light_Shadow_Remover, Multiview_Diffusion_Net, HunyuanPaintPipeline).
DELIGHT_STEPS = 50
DELIGHT_GUIDANCE = 1.0
DELIGHT_IMAGE_GUIDANCE = 1.5
DELIGHT_SEED = 42
PAINT_STEPS = 30
PAINT_GUIDANCE = 2.0
PAINT_SEED = 0  # turbo paint too; its steps are TURBO_STEPS and it takes no guidance

__all__ = [
    "DELIGHT_GUIDANCE", "DELIGHT_IMAGE_GUIDANCE", "DELIGHT_SEED", "DELIGHT_SIZE", "DELIGHT_STEPS", "PAINT_GUIDANCE",
    "PAINT_SEED", "PAINT_SIZE", "PAINT_STEPS", "TURBO_STEPS", "delight", "paint_views", "register_paint_parts",
]
