"""Hunyuan3D-2 Paint on the CPU at full size (float32, ``stage`` mode): time and peak RSS per stage.

Writes full-size random ``hunyuan3d-delight-v2-0/`` and ``hunyuan3d-paint-v2-0-turbo/`` folders in
the released layouts (float16, tensor by tensor, so writing takes little memory; about 5.6 GB of
disk) unless ``--dir`` already holds them, then paints an icosphere in a fresh process through the
job engine, as ``python -m backend generate --model hunyuan3d-2-paint --mesh M --image
examples/mug.png --memory stage`` runs it (turbo paint: the CPU's default). It prints each stage's
process CPU seconds, wall seconds and peak RSS (the kernel's high-water mark, reset at each stage),
the time of one delighting step and one paint step (a step between two progress events: no
loading, no encoding, no decoding in it) and the float32 size of every part.

The sizes are the released ones:
- delighting: an InstructPix2Pix model (``StableDiffusionInstructPix2PixPipeline``), so Stable
  Diffusion 1.5's UNet (8 input channels: the picture's latents are stacked on the noise), its VAE
  and its CLIP ViT-L/14 text encoder, as the public ``timbrooks/instruct-pix2pix`` configs give
  them (the delighting folder's own configs were not at hand: the architecture is what its
  pipeline class fixes). Its tokenizer is a small stand-in (the prompt is empty: its size changes
  nothing that is measured);
- paint: ``hunyuan3d-paint-v2-0/unet/config.json`` of ``tencent/Hunyuan3D-2`` (Stable Diffusion
  2's UNet: 320/640/1280/1280 channels, heads 5/10/20/20, cross-attention 1024, linear
  projections), doubled and extended by ``MultiviewUNet`` as the release stores it, and Stable
  Diffusion 2's VAE (the Stable Diffusion VAE: 128/256/512/512 channels, 2 layers per block).
  The turbo folder holds its UNet as safetensors and its VAE as ``.bin`` only, as released.

Random weights paint noise; the run, its memory and its timing are real. Upstream's step counts
(50 delighting, 10 turbo paint) take too long on 2 cores, so the defaults are 2 and 2: the
per-step time is what scales.

    python benchmarks/texture_cpu.py --dir /tmp/paint     # about 12 GB of free RAM and 5.6 GB of disk
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from h2_cpu import StageClock, make_engine, print_stage_table, run_job, run_measurement  # noqa: E402
from paint_fixtures import DELIGHT_FOLDER, PAINT_TURBO_FOLDER, SCHEDULER, tiny_tokenizer  # noqa: E402

GB = 1e9
MODEL = "hunyuan3d-2-paint"
STAGES = ("load", "background", "delight", "unwrap", "views", "paint", "bake")
_DOWN = ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
_UP = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
# Stable Diffusion 1.5's UNet with InstructPix2Pix's 8 input channels.
DELIGHT_UNET = {"act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768,
                "down_block_types": _DOWN, "up_block_types": _UP, "in_channels": 8, "out_channels": 4, "layers_per_block": 2,
                "norm_num_groups": 32, "sample_size": 64}
# hunyuan3d-paint-v2-0/unet/config.json (Stable Diffusion 2).
PAINT_UNET = {"act_fn": "silu", "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
              "cross_attention_dim": 1024, "down_block_types": _DOWN, "up_block_types": _UP, "in_channels": 4, "out_channels": 4,
              "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 64, "use_linear_projection": True}
# The Stable Diffusion VAE (1.5 and 2 share it).
VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
       "norm_num_groups": 32, "sample_size": 512, "down_block_types": ["DownEncoderBlock2D"] * 4,
       "up_block_types": ["UpDecoderBlock2D"] * 4, "scaling_factor": 0.18215}
# CLIP ViT-L/14's text encoder (token ids those of the stand-in tokenizer).
TEXT_ENCODER = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                "max_position_embeddings": 77, "projection_dim": 768, "hidden_act": "quick_gelu", "bos_token_id": 0, "eos_token_id": 1,
                "pad_token_id": 1}
PARTS = {  # part -> (folder, subfolder, weights file)
    "delight UNet": (DELIGHT_FOLDER, "unet", "diffusion_pytorch_model.safetensors"),
    "delight VAE": (DELIGHT_FOLDER, "vae", "diffusion_pytorch_model.safetensors"),
    "delight text encoder": (DELIGHT_FOLDER, "text_encoder", "model.safetensors"),
    "paint UNet (both)": (PAINT_TURBO_FOLDER, "unet", "diffusion_pytorch_model.safetensors"),
    "paint VAE": (PAINT_TURBO_FOLDER, "vae", "diffusion_pytorch_model.bin"),
}


def shapes(module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(tensor.shape) for key, tensor in module.state_dict().items()}


def write_weights(root: Path, seed: int = 0) -> None:
    """The delighting and turbo paint folders under ``root``, full size, random float16 weights."""
    import torch
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from h2_random_weights import random_tensor, write_random_safetensors
    from transformers import CLIPTextConfig, CLIPTextModel

    from backend.texture.paint.unet import MultiviewUNet

    delight, paint = root / DELIGHT_FOLDER, root / PAINT_TURBO_FOLDER
    for folder in (delight / "unet", delight / "vae", delight / "text_encoder", paint / "unet", paint / "vae"):
        folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        delight_unet, vae = UNet2DConditionModel(**DELIGHT_UNET), AutoencoderKL(**VAE)
        text_config = CLIPTextConfig(**TEXT_ENCODER)
        text_encoder = CLIPTextModel(text_config)
        paint_unet = MultiviewUNet(PAINT_UNET)
    delight_unet.save_config(delight / "unet")
    vae.save_config(delight / "vae")
    vae.save_config(paint / "vae")
    text_config.save_pretrained(delight / "text_encoder")
    (paint / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **PAINT_UNET}, indent=2))
    tiny_tokenizer().save_pretrained(delight / "tokenizer")
    EulerAncestralDiscreteScheduler(**SCHEDULER, prediction_type="epsilon").save_pretrained(delight / "scheduler")
    EulerAncestralDiscreteScheduler(**SCHEDULER, prediction_type="v_prediction").save_pretrained(paint / "scheduler")
    (delight / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionInstructPix2PixPipeline", "feature_extractor": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    (paint / "model_index.json").write_text(json.dumps({
        "_class_name": "HunyuanPaintPipeline", "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
        "unet": ["modules", "UNet2p5DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    modules = {"delight UNet": delight_unet, "delight VAE": vae, "delight text encoder": text_encoder, "paint UNet (both)": paint_unet}
    for offset, (part, module) in enumerate(modules.items()):
        folder, subfolder, file = PARTS[part]
        write_random_safetensors(root / folder / subfolder / file, shapes(module), seed + offset)
    # The turbo VAE is released as a torch.save state dict only; it is small enough (167 MB) to build whole.
    generator = torch.Generator().manual_seed(seed + len(modules))
    torch.save({key: random_tensor(key, shape, generator).to(torch.float16) for key, shape in shapes(vae).items()},
               paint / "vae" / PARTS["paint VAE"][2])


def float32_bytes(root: Path) -> dict[str, int]:
    """Each part's size in float32: twice its float16 file's tensor bytes."""
    from backend.memory.loading import stored_size_and_dtype

    sizes = {}
    for part, (folder, subfolder, file) in PARTS.items():
        stored, dtype = stored_size_and_dtype([root / folder / subfolder / file])
        if dtype != "float16":
            raise SystemExit(f"{root / folder / subfolder / file} is stored in {dtype}, not float16: write the folders again")
        sizes[part] = 2 * stored
    return sizes


def measure(args: argparse.Namespace) -> None:
    import torch
    import trimesh

    from backend.mesh import Mesh

    clock = StageClock()
    sphere = trimesh.creation.icosphere(subdivisions=args.subdivisions, radius=0.5)
    mesh = Mesh(positions=sphere.vertices.astype("float32"), faces=sphere.faces.astype("int32"))
    params = {"paint_model": "turbo", "texture_steps": args.paint_steps, "delight_steps": args.delight_steps,
              "texture_size": args.texture_size, "background_method": "alpha"}
    clock.mark("load")  # runtime, weights check, registration; each part loads inside its stage
    engine = make_engine("cpu", "stage", args.dir)
    result, header, steps = run_job(engine, MODEL, args.image, params, clock, mesh)
    print(json.dumps({"stages": clock.stages, "threads": torch.get_num_threads(), "steps": steps, "faces": mesh.face_count,
                      "result_vertices": result.vertex_count, "timings": header["timings"]}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, help="weights folder (written with random full-size weights if it lacks them; "
                        "default: a temporary folder, deleted afterwards)")
    parser.add_argument("--image", type=Path, default=ROOT / "examples" / "mug.png", help="an RGBA picture (default: examples/mug.png)")
    parser.add_argument("--subdivisions", type=int, default=5, help="icosphere subdivisions: 20 x 4^n faces (default 5: 20,480 faces)")
    parser.add_argument("--texture-size", type=int, default=1024, help="texture size (default 1024; upstream's is 2048)")
    parser.add_argument("--delight-steps", type=int, default=2, help="delighting steps (default 2; upstream's is 50)")
    parser.add_argument("--paint-steps", type=int, default=2, help="turbo paint steps (default 2; upstream's is 10)")
    parser.add_argument("--run", action="store_true", help=argparse.SUPPRESS)  # the fresh process's half
    args = parser.parse_args()
    if args.delight_steps < 2 or args.paint_steps < 2:
        parser.error("--delight-steps and --paint-steps must be at least 2 (a step's time is taken between two steps)")
    if not 1 <= args.subdivisions <= 7:
        parser.error("--subdivisions must be 1 to 7 (80 to 327,680 faces)")
    if not args.image.is_file():
        parser.error(f"--image {args.image}: no such file")
    if args.run:
        measure(args)
        return 0

    with tempfile.TemporaryDirectory() as scratch:
        weights = args.dir or Path(scratch)
        if not all((weights / folder / subfolder / file).is_file() for folder, subfolder, file in PARTS.values()):
            start = time.perf_counter()
            write_weights(weights)
            print(f"wrote {weights / DELIGHT_FOLDER} and {weights / PAINT_TURBO_FOLDER} in {time.perf_counter() - start:.0f} s", flush=True)
        sizes = float32_bytes(weights)
        command = [sys.executable, __file__, "--run", "--dir", str(weights), "--image", str(args.image),
                   "--subdivisions", str(args.subdivisions), "--texture-size", str(args.texture_size),
                   "--delight-steps", str(args.delight_steps), "--paint-steps", str(args.paint_steps)]
        print("running the job ...", flush=True)
        result = run_measurement(command)
    report(args, result, sizes)
    return 0


def report(args: argparse.Namespace, result: dict, sizes: dict[str, int]) -> None:
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {result['threads']} torch threads; "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{MODEL} with turbo paint, random full-size weights, float32 on the CPU, stage mode; picture {args.image.name}; "
          f"icosphere of {result['faces']} faces; texture {args.texture_size}^2; delighting steps {args.delight_steps}, "
          f"paint steps {args.paint_steps}")
    print_stage_table(STAGES, result["stages"])
    for stage, what in (("delight", "one delighting step (one UNet call on one 64^2 latent)"),
                        ("paint", "one turbo paint step (the 2.5D UNet on six 64^2 view latents)")):
        start = result["steps"][stage][0]  # the stage's first event (step 0) opens it
        events = [event for event in result["steps"][stage] if event[0] >= 1]  # step 0 events come before loading and encoding
        print(f"{stage} until step 1 ends: {events[0][1] - start[1]:.1f} s wall, {events[0][2] - start[2]:.1f} CPU s "
              f"(loading and encoding, then step 1)")
        for (step, wall, cpu), (_, wall0, cpu0) in zip(events[1:], events):
            print(f"{stage} step {step}: {wall - wall0:.1f} s wall, {cpu - cpu0:.1f} CPU s ({what})")
        figures = result["stages"][stage]
        print(f"{stage} after the last step: {start[1] + figures['wall_s'] - events[-1][1]:.1f} s wall, "
              f"{start[2] + figures['cpu_s'] - events[-1][2]:.1f} CPU s (decoding{', colour correction' if stage == 'delight' else ''})")
    print(f"textured result: {result['result_vertices']} vertices (the sphere cut along its UV seams)")
    print("\nfloat32 sizes:")
    for part, nbytes in sizes.items():
        print(f"  {part:<22}{nbytes / GB:6.2f} GB")
    print(f"  {'all':<22}{sum(sizes.values()) / GB:6.2f} GB")


if __name__ == "__main__":
    raise SystemExit(main())
